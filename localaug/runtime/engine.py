"""llama.cpp through llama-cpp-python's low-level API: load, offload, native sampler chains, streaming.

We drive ``llama_decode`` and llama.cpp's own sampler chain directly (not the high-level ``Llama``
class) so that sampling is exactly llama.cpp's, so that one context can later decode many
sequences at once, and so that nothing is done per token in Python that llama.cpp can do.
A lock makes one Engine safe to share between threads (llama.cpp contexts are not).
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import llama_cpp as L

from localaug.core.errors import EngineError, PromptTooLongError, UsageError, opt
from localaug.core.install import gpu_hint
from localaug.family.registry import DEFAULT_CTX
from localaug.runtime.grammar import json_grammar  # noqa: F401 - bounded JSON Schema grammars live there

Device = Literal["auto", "cpu", "cuda", "metal"]


@dataclass(frozen=True)
class EngineOptions:
    device: Device = "auto"
    gpu_layers: int | Literal["all"] | None = None  # None: all on a GPU device, 0 on CPU
    threads: int | None = None
    n_ctx: int | None = None  # None: min(4096, trained context); grown on demand up to the trained one
    kv_f32: bool = False  # an F32 KV cache (reference checks); the default F16 halves memory
    verbose: bool = False


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.5
    top_p: float = 0.95
    top_k: int = 50
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None  # None: a random seed
    grammar: str | None = None  # a GBNF grammar (root rule "root") the reply must follow, e.g. JSON


def sample_seed(base: int | None, k: int) -> int | None:
    """Sample k of an input uses seed + k (None stays random): the same samples whether they are
    drawn one by one or forked from one prefill."""
    return None if base is None else base + k


@dataclass
class Generation:
    text: str
    tokens: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    seconds: float
    first_token_seconds: float
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


def llama_cpp_version() -> str:
    return str(L.__version__)


def gpu_offload_supported() -> bool:
    return bool(L.llama_supports_gpu_offload())


def system_info() -> str:
    return L.llama_print_system_info().decode("utf-8", "replace").strip()


_LOG_CB = None


def _quiet_llama(verbose: bool) -> None:
    # llama-cpp-python forwards llama.cpp's log through this logger; silence it unless asked.
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


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


REPEAT_LAST_N = 64  # tokens a repeat penalty looks back over (llama.cpp's default)


def grammar_sampler(vocab: object, grammar: str):
    """llama.cpp's grammar sampler for a GBNF text; a UsageError when llama.cpp cannot parse it."""
    try:
        sampler = L.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    except UnicodeEncodeError:
        sampler = None
    if not sampler:
        raise UsageError("the grammar (response_format) could not be parsed by llama.cpp: simplify the JSON schema")
    return sampler


def make_sampler(p: SamplingParams, n_vocab: int, vocab: object = None):
    """llama.cpp's native sampler chain for ``p`` (the caller frees it with ``llama_sampler_free``);
    ``vocab`` is needed when ``p.grammar`` is set."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    add = lambda s: L.llama_sampler_chain_add(chain, s)  # noqa: E731
    if p.grammar:
        try:
            add(grammar_sampler(vocab, p.grammar))  # first: every later sampler sees only allowed tokens
        except BaseException:
            L.llama_sampler_free(chain)
            raise
    if p.repeat_penalty and p.repeat_penalty != 1.0:
        add(L.llama_sampler_init_penalties(n_vocab, REPEAT_LAST_N, p.repeat_penalty, 0.0, 0.0))
    if p.temperature <= 0:
        add(L.llama_sampler_init_greedy())
        return chain
    if p.top_k > 0:
        add(L.llama_sampler_init_top_k(p.top_k))
    if 0 < p.top_p < 1:
        add(L.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0:
        add(L.llama_sampler_init_min_p(p.min_p, 1))
    add(L.llama_sampler_init_temp(p.temperature))
    seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(4), "little")
    add(L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


class TextStream:
    """One generation's tokens -> text: end-of-generation and stop handling, UTF-8-safe incremental
    detokenisation, and holding back text that could still turn into a stop string.

    Stop strings are matched in the decoded text, across token boundaries: ``"\\n"`` stops at the
    newline inside a merged token such as ``"],\\n\\n"``, and the text is cut just before the
    stop string (OpenAI's ``stop``). A stop string that is one control token (``<|im_end|>``) is
    matched by its id instead, because control tokens decode to no text.

    Shared by Engine and BatchEngine so both finish and cut text identically."""

    def __init__(self, engine: Engine, stop: Sequence[str], ignore_eog: bool = False) -> None:
        self._engine = engine
        self._ignore_eog = ignore_eog
        self._stop_ids = engine.control_stop_ids(stop)
        self._text_stops = tuple(s for s in stop if s and s not in self._stop_ids.values())
        self._hold = max((len(s) - 1 for s in self._text_stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokens: list[int] = []
        self.text = ""
        self.finish: Literal["stop", "length"] = "length"
        self._emitted = 0

    def push(self, tok: int) -> bool:
        """Take one sampled token; True when it ends the generation (an end-of-generation or
        control stop token is then not kept; a text stop keeps its token and cuts the text)."""
        if not self._ignore_eog and (self._engine.is_eog(tok) or tok in self._stop_ids):
            self.finish = "stop"
            return True
        self.tokens.append(tok)
        # only text that the new piece could complete a stop string in needs searching
        start = max(0, len(self.text) - self._hold)
        self.text += self._decoder.decode(self._engine.piece(tok))
        cut = self._find_stop(start)
        if cut >= 0:
            self.text, self.finish = self.text[:cut], "stop"
            return True
        return False

    def _find_stop(self, start: int) -> int:
        found = [i for i in (self.text.find(s, start) for s in self._text_stops) if i >= 0]
        return min(found, default=-1)

    def safe_piece(self) -> str:
        """New text that no stop string can still cut ("" if none)."""
        safe = len(self.text) - self._hold
        if safe <= self._emitted:
            return ""
        piece, self._emitted = self.text[self._emitted : safe], safe
        return piece

    def end_of_length(self) -> None:
        """max_tokens reached: flush a trailing incomplete UTF-8 sequence."""
        self.text += self._decoder.decode(b"", final=True)

    def rest(self) -> str:
        piece, self._emitted = self.text[self._emitted :], len(self.text)
        return piece

    def generation(self, prompt_tokens: int, started: float, first: float, prefill_seconds: float,
                   cached: int = 0) -> Generation:
        """The finished generation; ``cached`` prompt tokens came from a cached prefix (not decoded)."""
        done = time.monotonic()
        n_gen = len(self.tokens)
        return Generation(
            text=self.text,
            tokens=self.tokens,
            finish_reason=self.finish,
            prompt_tokens=prompt_tokens,
            seconds=done - started,
            first_token_seconds=first,
            stats={
                "prefill_tokens_per_s": (prompt_tokens - cached) / max(prefill_seconds, 1e-9),
                "started": started,  # time.monotonic() at the start (for throughput over many generations)
                "cached_prompt_tokens": float(cached),
                "decode_tokens_per_s": max(n_gen - 1, 0) / max(done - started - first, 1e-9) if n_gen > 1 else 0.0,
            },
        )


class Closing:
    """Context-manager support for objects that own llama.cpp resources released by ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: "_C") -> "_C":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass


_C = TypeVar("_C", bound=Closing)


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
        _quiet_llama(self.opts.verbose)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = _resolve_layers(self.opts)
        self.gpu_layers = mparams.n_gpu_layers
        started = time.monotonic()
        model = L.llama_model_load_from_file(str(self.path).encode(), mparams)
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
        if context:
            self._make_context(self.opts.n_ctx or min(DEFAULT_CTX, self.n_ctx_train))
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
            self._make_context(self.opts.n_ctx or min(DEFAULT_CTX, self.n_ctx_train))

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
        step = 512
        for i in range(0, len(tokens), step):
            chunk = list(tokens[i : i + step])
            arr = (L.llama_token * len(chunk))(*chunk)
            rc = L.llama_decode(self._ctx, L.llama_batch_get_one(arr, len(chunk)))
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
        sampler = self._sampler(p)
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
                tok = L.llama_sampler_sample(sampler, self._ctx, -1)
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
            one = (L.llama_token * 1)(prompt[-1])
            started = time.monotonic()
            try:
                for _ in range(n_tokens):
                    if L.llama_decode(self._ctx, L.llama_batch_get_one(one, 1)) != 0:
                        raise EngineError("llama_decode failed during the benchmark: lower the token count")
            finally:
                self.forget()
            return n_tokens / (time.monotonic() - started)
