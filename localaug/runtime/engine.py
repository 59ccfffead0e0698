"""One loaded GGUF model and one llama.cpp context, through llama-cpp-python's low-level API.

We drive ``llama_decode`` and llama.cpp's own sampler chain directly (not the high-level ``Llama``
class) so that sampling is exactly llama.cpp's (``sampling.pick`` gives its chain's token from one
pass over the logits), so that one context can decode many sequences at once (``runtime.batch``),
and so that little is done per token in Python.
A lock makes one Engine safe to share between threads (llama.cpp contexts are not).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import llama_cpp as L

from localaug.core.errors import EngineError, PromptTooLongError, UsageError, opt
from localaug.core.install import gpu_hint
from localaug.core.progress import current
from localaug.family.registry import context_size
from localaug.runtime.llama import Closing, TokenBatch, gpu_offload_supported, quiet_llama
from localaug.runtime.sampling import SamplingParams, grammar_sampler, make_sampler, pick, shortcut
from localaug.runtime.stream import Generation, TextStream

Device = Literal["auto", "cpu", "cuda", "metal"]
DECODE_CHUNK = 512  # prompt tokens per llama_decode of one sequence


@dataclass(frozen=True)
class EngineOptions:
    device: Device = "auto"
    gpu_layers: int | Literal["all"] | None = None  # None: all on a GPU device, 0 on CPU
    threads: int | None = None
    n_ctx: int | None = None  # None: family.registry.context_size; grown on demand up to the trained one
    kv_f32: bool = False  # an F32 KV cache (reference checks); the default F16 halves memory
    verbose: bool = False


def _resolve_layers(opts: EngineOptions) -> int:
    if opts.device in ("cuda", "metal") and not gpu_offload_supported():
        raise UsageError(
            f"{opt('device')} {opts.device}: this llama.cpp build has no GPU backend; reinstall with {gpu_hint(opts.device)}"
        )
    if opts.device == "cpu":
        return 0
    if opts.gpu_layers == "all" or (opts.gpu_layers is None and gpu_offload_supported()):
        return 999  # llama.cpp clamps to the model's layer count
    return int(opts.gpu_layers or 0)


def _load(path: Path, mparams: object) -> object:
    """llama_model_load_from_file, reporting a "loading" phase (bytes of the file, from
    llama.cpp's own progress callback) to the display a command installed."""
    progress = current()
    size = path.stat().st_size if path.is_file() else None
    seen = [0]

    def on_progress(fraction: float, _user: object) -> bool:
        now = min(size or 0, int(fraction * (size or 0)))
        if now > seen[0]:
            progress.advance(now - seen[0])
            seen[0] = now
        return True  # go on loading

    callback = L.llama_progress_callback(on_progress)  # kept alive until the load returns
    mparams.progress_callback = callback  # type: ignore[attr-defined]
    progress.stage(f"loading model {path}", size, "bytes")
    model = L.llama_model_load_from_file(str(path).encode(), mparams)
    mparams.progress_callback = L.llama_progress_callback()  # type: ignore[attr-defined]  # NULL: no call into a freed closure
    if model:
        progress.finish()
    return model


class Engine(Closing):
    """One loaded GGUF model and one llama.cpp context.

    The context keeps the KV of what it decoded last: a prompt that starts with the same tokens (a
    system turn, teacher-mode examples, the previous prompt) decodes only the rest, as
    llama-cpp-python and llama-server do."""

    def __init__(self, path: str | os.PathLike[str], opts: EngineOptions | None = None, *, context: bool = True) -> None:
        """``context=False`` loads only the model (a BatchEngine brings its own context); a
        context is then made on the first generation."""
        self.path = Path(path)
        self.opts = opts or EngineOptions()
        self.lock = threading.Lock()
        quiet_llama(self.opts.verbose)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = _resolve_layers(self.opts)
        self.gpu_layers = mparams.n_gpu_layers
        started = time.monotonic()
        model = _load(self.path, mparams)
        if not model:
            raise EngineError(f"llama.cpp could not load {self.path}: check it is a complete GGUF (`localaug inspect`)")
        self._model = model
        self._vocab = L.llama_model_get_vocab(model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = L.llama_model_n_ctx_train(model)
        self.threads = self.opts.threads or max(1, os.cpu_count() or 1)
        self._ctx = None
        self.n_ctx = 0
        self._kv: list[int] = []  # the tokens whose KV the context holds, in order (sequence 0)
        # the last prompt and the logits of its last token, so that the same prompt again (a
        # retry, n samples, a seeded rerun) samples from exactly the logits a cold decode gives
        self._last_prompt: list[int] = []
        self._last_logits = (ctypes.c_float * 0)()
        self._batch = TokenBatch(DECODE_CHUNK)
        if context:
            self.ensure_context()
        self.load_seconds = time.monotonic() - started

    # -- lifecycle ------------------------------------------------------------------------------

    def _make_context(self, n_ctx: int) -> None:
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        self._kv, self._last_prompt = [], []
        self._ctx = self.new_context(n_ctx)
        self.n_ctx = L.llama_n_ctx(self._ctx)

    def forget(self) -> None:
        """Drop the cached KV, so the next prompt is decoded from its first token (benchmarks)."""
        if self._ctx:
            L.llama_memory_clear(L.llama_get_memory(self._ctx), True)
        self._kv, self._last_prompt = [], []

    def _reuse(self, tokens: Sequence[int]) -> int:
        """Keep the KV of the longest prefix ``tokens`` shares with what the context holds; drop
        the rest; the tokens kept.

        The whole prompt is kept only when it is the last prompt again: its last token's logits
        are then written back from the copy kept at the time, so the sample is the one a cold
        decode gives. Otherwise the last token is decoded anew for its logits."""
        n = len(tokens)
        if self._last_prompt == list(tokens) and self._kv[:n] == self._last_prompt:
            L.llama_memory_seq_rm(L.llama_get_memory(self._ctx), 0, n, -1)
            del self._kv[n:]
            ctypes.memmove(L.llama_get_logits_ith(self._ctx, -1), self._last_logits, ctypes.sizeof(self._last_logits))
            return n
        keep, limit = 0, min(len(self._kv), n - 1)
        while keep < limit and self._kv[keep] == tokens[keep]:
            keep += 1
        if keep:
            L.llama_memory_seq_rm(L.llama_get_memory(self._ctx), 0, keep, -1)
        else:
            L.llama_memory_clear(L.llama_get_memory(self._ctx), True)
        del self._kv[keep:]
        return keep

    def new_context(self, n_ctx: int, n_seq_max: int = 1, kv_unified: bool = False, n_batch: int = 512,
                    embeddings: bool = False):
        """A new llama.cpp context on this model (the caller frees it with ``llama_free``);
        ``embeddings``: pooled (mean) embeddings per sequence instead of logits."""
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = min(n_ctx, n_batch)
        cparams.n_ubatch = min(n_ctx, n_batch)
        if embeddings:
            cparams.embeddings = True
            cparams.pooling_type = L.LLAMA_POOLING_TYPE_MEAN
        cparams.n_threads = self.threads
        cparams.n_threads_batch = self.threads
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = kv_unified
        if self.opts.kv_f32:
            cparams.type_k = L.GGML_TYPE_F32
            cparams.type_v = L.GGML_TYPE_F32
            # Reference mode: no flash attention. llama.cpp's CPU flash-attention kernel rounds
            # differently for a lone decode token than inside a multi-token batch (~1e-3 on logits),
            # so results would depend on how tokens happen to be batched.
            cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = L.llama_init_from_model(self._model, cparams)
        if not ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens: lower {opt('n_ctx')} or free memory")
        return ctx

    def close(self) -> None:
        if getattr(self, "_batch", None):
            self._batch.close()
            self._batch = None
        if getattr(self, "_ctx", None):
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    # -- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UsageError(f"the text holds an unpaired surrogate at character {e.start} (not valid Unicode): fix it") from None
        cap = len(data) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    @property
    def n_embd(self) -> int:
        """The width of the model's hidden states (an embedding's length)."""
        return L.llama_model_n_embd(self._model)

    @functools.cached_property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token of one sequence takes (every layer's K and V)."""
        m = self._model
        head_dim = L.llama_model_n_embd(m) // max(L.llama_model_n_head(m), 1)
        return L.llama_model_n_layer(m) * 2 * head_dim * L.llama_model_n_head_kv(m) * (4 if self.opts.kv_f32 else 2)

    def ensure_context(self) -> None:
        """Make the default context if this engine was loaded without one."""
        if not self._ctx:
            self._make_context(context_size(self.opts.n_ctx, self.n_ctx_train))

    @functools.cached_property
    def max_piece_bytes(self) -> int:
        """The most bytes one token stands for (the bound used to refuse a huge text untokenized)."""
        return max(len(self.piece(t, special=True)) for t in range(self.n_vocab))

    def surely_too_long(self, text: str, n_tokens: int) -> bool:
        """Whether ``text`` cannot fit in ``n_tokens`` tokens, told without tokenizing it: a 50 MB
        row is refused at once, instead of costing gigabytes of token buffers first."""
        if len(text) <= 4 * max(n_tokens, 0):
            return False  # the common case costs nothing
        return len(text.encode("utf-8", "surrogatepass")) > max(n_tokens, 0) * self.max_piece_bytes

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", "replace")

    @property
    def vocab(self) -> object:
        """The llama.cpp vocabulary handle (for samplers that need it)."""
        return self._vocab

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self._vocab, token))

    def control_stop_ids(self, stop: Sequence[str]) -> dict[int, str]:
        """Stop strings that are a single control token (e.g. ``<|im_end|>``), by token id.

        Those decode to no text, so they can only be matched as ids; every other stop string is
        matched in the text."""
        ids: dict[int, str] = {}
        for s in stop:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: no token can produce it
                continue
            toks = self.tokenize(s, special=True)
            if len(toks) == 1 and self.piece(toks[0]) != s.encode("utf-8"):
                ids[toks[0]] = s
        return ids

    # -- sampling -------------------------------------------------------------------------------

    def _sampler(self, p: SamplingParams):
        return make_sampler(p, self.n_vocab, self._vocab)

    def check_grammar(self, grammar: str) -> None:
        """Raise a UsageError when llama.cpp cannot parse ``grammar`` (nothing is kept)."""
        L.llama_sampler_free(grammar_sampler(self._vocab, grammar))

    # -- generation -----------------------------------------------------------------------------

    def fit(self, n_prompt: int, max_tokens: int) -> None:
        """Make the context hold prompt + max_tokens, growing it up to the trained length."""
        need = n_prompt + max_tokens
        if need <= self.n_ctx:
            return
        if need > self.n_ctx_train:
            raise PromptTooLongError(
                f"prompt of {n_prompt} tokens + max_tokens {max_tokens} exceeds the model's context of "
                f"{self.n_ctx_train} tokens: shorten the input or lower {opt('max_tokens')}"
            )
        size = min(self.n_ctx_train, max(need, 2 * self.n_ctx))
        self._make_context(-(-size // 256) * 256 if size < self.n_ctx_train else size)

    def _decode(self, tokens: Sequence[int]) -> None:
        """Decode ``tokens`` after what the context holds (sequence 0); logits of the last one."""
        for i in range(0, len(tokens), DECODE_CHUNK):
            chunk = list(tokens[i : i + DECODE_CHUNK])
            self._batch.clear()
            self._batch.add(chunk, len(self._kv), 0, "last")
            rc = self._batch.decode(self._ctx)
            if rc != 0:
                self.forget()
                raise EngineError(f"llama_decode failed (code {rc}): the context may be full; lower {opt('max_tokens')}")
            self._kv += chunk

    def _keep_logits(self, prompt: list[int]) -> None:
        if len(self._last_logits) != self.n_vocab:
            self._last_logits = (ctypes.c_float * self.n_vocab)()
        ctypes.memmove(self._last_logits, L.llama_get_logits_ith(self._ctx, -1), ctypes.sizeof(self._last_logits))
        self._last_prompt = prompt

    def stream(
        self, prompt: str | Sequence[int], sampling: SamplingParams, stop: Sequence[str] = (), ignore_eog: bool = False
    ) -> Iterator[str | Generation]:
        """Yield text pieces as they are decoded, then the finished Generation as the last item.

        ``ignore_eog`` decodes exactly max_tokens (benchmarks)."""
        with self.lock:
            yield from self._stream_locked(prompt, sampling, stop, ignore_eog)

    def _stream_locked(
        self, prompt: str | Sequence[int], p: SamplingParams, stop: Sequence[str], ignore_eog: bool
    ) -> Iterator[str | Generation]:
        started = time.monotonic()
        if isinstance(prompt, str) and self.surely_too_long(prompt, self.n_ctx_train - p.max_tokens):
            raise PromptTooLongError(f"the prompt ({len(prompt)} characters) + {opt('max_tokens')} {p.max_tokens} cannot "
                                     f"fit the model's context of {self.n_ctx_train} tokens: shorten the input")
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise UsageError("empty prompt: give some text")
        self.fit(len(tokens), p.max_tokens)
        sampler, how = self._sampler(p), shortcut(p)
        out = TextStream(self, stop, ignore_eog)
        first = 0.0
        try:
            # an identical prefix (a system turn, teacher examples, the last prompt) is decoded once
            cached = self._reuse(tokens)
            if cached < len(tokens):
                self._decode(tokens[cached:])
                self._keep_logits(tokens)
            prefill = time.monotonic()
            for _ in range(p.max_tokens):
                tok = pick(sampler, how, self._ctx, -1, self.n_vocab)
                if not first:
                    first = time.monotonic() - started
                if out.push(tok):
                    break
                piece = out.safe_piece()
                if piece:
                    yield piece
                self._decode([tok])
            else:
                out.end_of_length()
            piece = out.rest()
            if piece:
                yield piece
        except BaseException:
            self.forget()  # stopped midway (Ctrl-C, a closed stream): the cache may not match
            raise
        finally:
            L.llama_sampler_free(sampler)
        yield out.generation(len(tokens), started, first, prefill - started, cached)

    def generate(
        self, prompt: str | Sequence[int], sampling: SamplingParams, stop: Sequence[str] = (), ignore_eog: bool = False
    ) -> Generation:
        result = None
        for item in self.stream(prompt, sampling, stop, ignore_eog):
            if isinstance(item, Generation):
                result = item
        assert result is not None
        return result

    def raw_decode_rate(self, prompt: Sequence[int], n_tokens: int) -> float:
        """Tokens/s of a bare llama_decode loop, one token at a time, no sampling (llama-bench's tg).

        The ceiling our generation loop is measured against, in the same process and context.
        """
        with self.lock:
            self.fit(len(prompt), n_tokens)
            self.forget()
            self._decode(prompt)
            started = time.monotonic()
            try:
                for step in range(n_tokens):
                    self._batch.clear()
                    self._batch.add(prompt[-1:], len(prompt) + step, 0, "last")
                    if self._batch.decode(self._ctx) != 0:
                        raise EngineError("llama_decode failed during the benchmark: lower the token count")
            finally:
                self.forget()
            return n_tokens / (time.monotonic() - started)
