"""Continuous batching: many sequences decoded together in ONE llama.cpp context.

Every ``llama_decode`` call carries one token for each sequence that is generating plus, in the
room left (``n_batch``), chunks of the prompts of newly admitted sequences. Each sequence has its
own slot (llama.cpp sequence id), its own native sampler chain (``sampling.pick`` reads each
sequence's logits once: greedy is an argmax, a top-k chain sees only the candidates that can
make its top k) and its own stop/detokenisation
state (``stream.TextStream``, the very code ``Engine`` runs). A slot is refilled from the request
iterator as soon as its sequence finishes, so requests are pulled lazily and a job of a million
rows streams through a fixed amount of memory.

A request with ``n > 1`` samples is prefilled once; its samples are forked from that sequence with
``llama_memory_seq_cp`` (a KV copy, no second prefill). Sample k uses seed + k, like
``tasks._sample``. When fewer slots are free than samples, the rest start later by copying the
prompt's KV from a sibling still running (or by rewinding the slot of a sibling that finished),
re-decoding only the prompt's last token for its logits.

The KV cache is unified (one pool of ``(parallel + 1) x n_ctx`` cells shared by all slots), so
prompt chunks and decode tokens of any mix of slots go into one micro-batch.

Shared prefixes are decoded once (``runtime.prefix``): one more sequence id (``parallel``) holds
the KV of a cached prompt beginning that new prompts copy instead of decoding it again.

The run's state lives in ``Slots`` (fill / step / cancel / clear), handed out by
``BatchEngine.session()``, so the same machinery serves a pulled iterator here and a long-running
queue in ``localaug.serve.scheduler``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import llama_cpp as L

from localaug.core.errors import EngineError, opt
from localaug.family.registry import context_size
from localaug.runtime.backend import DEFAULT_PARALLEL, Request, Result
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.llama import Closing, TokenBatch, drop_sequence
from localaug.runtime.prefix import PrefixCache
from localaug.runtime.sampling import make_sampler, pick, sample_seed, shortcut
from localaug.runtime.stream import Piece, TextStream

@dataclass
class _Group:
    """One admitted request: its prompt tokens and which sample indexes are still to start."""

    request: Request
    tokens: list[int]
    next_index: int = 0
    live: set[int] = field(default_factory=set)  # slots running a sample of this request
    prefilled: bool = False  # a sibling's KV holds the whole prompt (forks may copy it)
    finished: set[int] = field(default_factory=set)  # sample indexes whose Result was given
    shared: int = 0  # prompt tokens taken from the cached prefix

    @property
    def pending(self) -> int:
        return self.request.n - self.next_index


@dataclass
class _Seq:
    group: _Group
    index: int
    sampler: object
    out: TextStream
    feed: list[int]  # tokens still to decode (prompt chunk(s), or the last sampled token)
    pos: int  # position of feed[0]
    started: float
    how: int  # how its tokens are picked (sampling.shortcut)
    prefill_done: float = 0.0
    first: float = 0.0


class BatchEngine(Closing):
    """``parallel`` sequences at a time on one model.

    ``model`` is a GGUF path (the model is loaded here and freed by ``close``) or a loaded Engine
    (its model is shared, not copied; keep that Engine open while this one is in use, unless
    ``owns_engine`` hands it over: then ``close`` frees it too).
    ``n_ctx`` is the context of ONE sequence (prompt + max_tokens must fit it); None means the
    options' n_ctx, sized by ``family.registry.context_size``. The context holds
    ``(parallel + 1) x n_ctx`` cells: one sequence more than ``parallel`` holds the cached shared
    prefix (``prefix``; ``share_prefix`` False: none).

    ``run(requests)`` drives a whole iterator of requests; ``session()`` hands out the run state
    (``Slots``) for a caller that feeds requests over time (the server's scheduler).
    """

    def __init__(self, model: str | os.PathLike[str] | Engine, opts: EngineOptions | None = None,
                 parallel: int = DEFAULT_PARALLEL, n_ctx: int | None = None, share_prefix: bool = True,
                 owns_engine: bool = False) -> None:
        # what close() frees, first: a constructor that fails part-way still closes cleanly
        self.ctx = self.token_batch = None
        self._owns_engine = False
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        if isinstance(model, Engine):
            self.engine, self._owns_engine = model, owns_engine
        else:
            self.engine, self._owns_engine = Engine(model, opts or EngineOptions(), context=False), True
        self.opts = self.engine.opts
        self.parallel = parallel
        self.n_ctx_seq = context_size(n_ctx or self.opts.n_ctx, self.engine.n_ctx_train)
        self.lock = threading.Lock()
        self.ctx = self.engine.new_context(self.n_ctx_seq * (parallel + 1), n_seq_max=parallel + 1, kv_unified=True)
        self.memory = L.llama_get_memory(self.ctx)
        self.n_batch = L.llama_n_batch(self.ctx)
        self.token_batch = TokenBatch(self.n_batch)
        self.prefix = PrefixCache(self.ctx, self.memory, self.token_batch, holder=parallel, enabled=share_prefix)

    def close(self) -> None:
        if self.token_batch is not None:
            self.token_batch.close()
            self.token_batch = None
        if self.ctx is not None:
            L.llama_free(self.ctx)
            self.ctx = None
        if self._owns_engine and self.engine is not None:
            self.engine.close()
            self.engine = None  # type: ignore[assignment]

    @contextlib.contextmanager
    def session(self, stream: bool = False) -> Iterator[Slots]:
        """The run state of this engine, held exclusively until the block ends: every slot empty,
        the cached prefix kept."""
        with self.lock:
            self._clear_slots()
            state = Slots(self, stream)
            try:
                yield state
            finally:
                state.close()
                self._clear_slots()

    def _clear_slots(self) -> None:
        for slot in range(self.parallel):
            drop_sequence(self.memory, slot)

    def run(self, requests: Iterable[Request]) -> Iterator[Result]:
        """Yield one Result per sample of each request as it finishes (any order).

        Requests are pulled from ``requests`` only when a slot is free."""
        pending = iter(requests)
        done = False

        def pull() -> Request | None:
            nonlocal done
            if not done:
                request = next(pending, None)
                if request is not None:
                    return request
                done = True
            return None

        with self.session() as state:
            while True:
                # 1. fill free slots: pending samples of admitted requests first, then new requests
                yield from state.fill(pull)  # type: ignore[misc]
                if not state.active:
                    if done:
                        return
                    continue
                # 2. one llama_decode for every active slot; 3. sample where logits came out
                yield from state.step()  # type: ignore[misc]


class Slots:
    """The state of one continuous-batching run on a BatchEngine: which sequence holds which slot,
    which admitted requests still have samples to start, and the step that advances them all.

    ``BatchEngine.run`` drives it from an iterator; ``serve.scheduler.Scheduler`` drives it from a
    queue fed by other threads, streaming ``Piece``s and cancelling requests between steps. Get one
    from ``BatchEngine.session()``, which holds the engine for the run."""

    def __init__(self, batch: BatchEngine, stream: bool) -> None:
        self.batch = batch
        self.stream = stream
        self.slots: list[_Seq | None] = [None] * batch.parallel
        self.groups: list[_Group] = []  # admitted requests with samples not yet started
        self.last_batch_tokens = 0

    @property
    def active(self) -> int:
        return sum(s is not None for s in self.slots)

    def fill(self, pull: Callable[[], Request | None]) -> Iterator[Result]:
        """Fill free slots: pending samples of admitted requests first, then requests from ``pull``
        (None: nothing more for now). Yields the error Results of requests that cannot run; a
        request that fails to start (whatever the exception) fails alone, its slots freed."""
        slots, groups = self.slots, self.groups
        for slot in range(self.batch.parallel):
            while slots[slot] is None:
                group = next((g for g in groups if g.prefilled and g.live), None)
                if group is None:
                    break
                try:
                    self._fork(group, next(iter(group.live)), slot, whole=False)
                except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                    yield from self._abort(group, f"could not start a sample: {exc}")
                    continue
                if not group.pending and group in groups:
                    groups.remove(group)
        free = [slot for slot in range(self.batch.parallel) if slots[slot] is None]
        admitted: list[_Group] = []
        while len(admitted) < len(free):
            request = pull()
            if request is None:
                break
            group, errors = self._admit(request)
            yield from errors
            if group is not None:
                admitted.append(group)
        if len(admitted) > 1:
            try:
                self.batch.prefix.cache_common([g.tokens for g in admitted])
            except Exception:  # noqa: BLE001 - a bug of ours must not fail the requests: nothing is cached then
                self.batch.prefix.forget()
        for group, slot in zip(admitted, free):
            yield from self._begin(group, slot)

    def _begin(self, group: _Group, slot: int) -> Iterator[Result]:
        """Start an admitted request in the free ``slot``; a prompt that starts with the cached
        prefix takes that prefix's KV and prefills only the rest."""
        prefix = self.batch.prefix
        try:
            shared = group.shared = prefix.take(slot, group.tokens)
            self.slots[slot] = self._start(group, slot, group.tokens[shared:], shared)
        except Exception as exc:  # noqa: BLE001 - e.g. sampling a binding refuses: fail this request only
            drop_sequence(self.batch.memory, slot)
            yield from self._abort(group, f"could not start: {exc}")
            return
        prefix.stats.reused += shared
        prefix.stats.decoded += len(group.tokens) - shared
        if group.pending:
            self.groups.append(group)

    def _abort(self, group: _Group, message: str) -> list[Result]:
        """Stop a request: free its running samples, forget its pending ones; an error Result for
        every sample not finished yet."""
        self.cancel(group.request.id)
        return [Result(group.request.id, k, None, message) for k in range(group.request.n) if k not in group.finished]

    def step(self) -> Iterator[Result | Piece]:
        """One llama_decode over every active slot, then sampling where logits came out; yields
        finished Results (and, when streaming, the text Pieces before them)."""
        slots, groups = self.slots, self.groups
        active = [(i, s) for i, s in enumerate(slots) if s is not None]
        if not active:
            return
        outputs = self._decode(active)
        for slot, seq, idx in outputs:
            targets = [slot]
            group = seq.group
            if not group.prefilled:
                # the prompt is in: fork the request's other samples into free slots (KV copy)
                group.prefilled = True
                self.batch.prefix.remember(slot, group.tokens)
                try:
                    for free in range(self.batch.parallel):
                        if group.pending and slots[free] is None:
                            self._fork(group, slot, free, whole=True)
                            targets.append(free)
                except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                    yield from self._abort(group, f"could not start a sample: {exc}")
                    continue
                if not group.pending and group in groups:
                    groups.remove(group)
            for s in targets:
                current = slots[s]
                assert current is not None
                result = self._sample(current, idx)
                if result is None:
                    if self.stream:
                        text = current.out.safe_piece()
                        if text:
                            yield Piece(current.group.request.id, current.index, text)
                    continue
                if self.stream:
                    text = current.out.rest()
                    if text:
                        yield Piece(current.group.request.id, current.index, text)
                current.group.finished.add(current.index)
                yield result
                try:
                    self._finish(s)
                except Exception as exc:  # noqa: BLE001 - a later sample of this request could not start
                    yield from self._abort(current.group, f"could not start a sample: {exc}")

    def cancel(self, request_id: str) -> int:
        """Stop every sample of a request (running or still to start); the number of slots freed. The
        request's group is dropped with its slots: nothing refers to it afterwards."""
        freed = 0
        for slot, seq in enumerate(self.slots):
            if seq is not None and seq.group.request.id == request_id:
                L.llama_sampler_free(seq.sampler)
                drop_sequence(self.batch.memory, slot)
                self.slots[slot] = None
                freed += 1
        self.groups[:] = [g for g in self.groups if g.request.id != request_id]
        return freed

    def clear(self) -> list[str]:
        """Drop every sequence (after a failed step); the ids of the requests that were running."""
        # a request with samples still to start always has one running (see _finish)
        ids = list(dict.fromkeys(s.group.request.id for s in self.slots if s is not None))
        self.close()
        self.groups.clear()
        L.llama_memory_clear(self.batch.memory, True)
        self.batch.prefix.forget()  # its KV went with the rest
        return ids

    def close(self) -> None:
        """Free the sampler of every running sample; every slot is empty afterwards."""
        for seq in self.slots:
            if seq is not None:
                L.llama_sampler_free(seq.sampler)
        self.slots = [None] * self.batch.parallel

    # -- the steps ---------------------------------------------------------------------------------

    def _admit(self, request: Request) -> tuple[_Group | None, list[Result]]:
        p = request.sampling
        n_ctx, model = self.batch.n_ctx_seq, self.batch.engine
        if isinstance(request.prompt, str) and model.surely_too_long(request.prompt, n_ctx - p.max_tokens):
            return None, _errors(request, (
                f"the prompt ({len(request.prompt)} characters) + max_tokens {p.max_tokens} cannot fit the "
                f"per-sequence context of {n_ctx} tokens: shorten the input, lower max_tokens or raise the context size"))
        try:
            tokens = model.tokenize(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
        except Exception as exc:  # noqa: BLE001 - a bad row must not stop the batch
            return None, _errors(request, f"could not tokenize the prompt: {exc}")
        if request.n < 1:
            return None, _errors(request, "n must be at least 1")
        if not tokens:
            return None, _errors(request, "empty prompt: give some text")
        if len(tokens) + p.max_tokens > n_ctx:
            return None, _errors(request, (
                f"prompt of {len(tokens)} tokens + max_tokens {p.max_tokens} exceeds the per-sequence context of "
                f"{n_ctx} tokens: shorten the input, lower max_tokens or raise the context size"))
        return _Group(request, tokens), []

    def _start(self, group: _Group, slot: int, feed: list[int], pos: int) -> _Seq:
        """The group's next sample in ``slot`` (nothing of the group changes if this raises)."""
        k = group.next_index
        sampling = replace(group.request.sampling, seed=sample_seed(group.request.sampling.seed, k))
        model = self.batch.engine
        out = TextStream(model, group.request.stop, group.request.ignore_eog)
        sampler = make_sampler(sampling, model.n_vocab, model.vocab)
        group.next_index += 1
        group.live.add(slot)
        return _Seq(group, k, sampler, out, list(feed), pos, time.monotonic(), shortcut(sampling))

    def _fork(self, group: _Group, source: int, slot: int, whole: bool) -> None:
        """Start the group's next sample in ``slot`` from the prompt KV of ``source``.

        ``whole``: the source has just decoded the prompt and its logits are fresh (the new sample
        samples from them); otherwise copy all but the prompt's last token and decode that again.
        A free slot holds no KV (whatever frees a slot removes its cells)."""
        n, memory = len(group.tokens), self.batch.memory
        try:
            if whole:
                L.llama_memory_seq_cp(memory, source, slot, -1, -1)
                seq = self._start(group, slot, [], n)
            else:
                L.llama_memory_seq_cp(memory, source, slot, 0, n - 1)
                seq = self._start(group, slot, group.tokens[-1:], n - 1)
        except BaseException:
            drop_sequence(memory, slot)  # the slot stays free and empty
            raise
        self.slots[slot] = seq

    def _decode(self, active: list[tuple[int, _Seq]]) -> list[tuple[int, _Seq, int]]:
        """One llama_decode: a token for each generating slot, then prompt chunks in the room left;
        (slot, sequence, logits index) of every sequence whose logits came out."""
        b = self.batch.token_batch
        b.clear()
        outputs: list[tuple[int, _Seq, int]] = []
        # generating slots (one token each) first, so they are never starved by a long prompt
        order = sorted((a for a in active if a[1].feed), key=lambda a: len(a[1].feed) > 1)
        for slot, seq in order:
            room = b.capacity - b.size
            if room <= 0:
                break
            chunk, seq.feed = seq.feed[:room], seq.feed[room:]
            last = b.add(chunk, seq.pos, slot, "none" if seq.feed else "last")
            seq.pos += len(chunk)
            if not seq.feed:
                outputs.append((slot, seq, last))
        n = self.last_batch_tokens = b.size
        rc = b.decode(self.batch.ctx)
        if rc != 0:
            raise EngineError(f"llama_decode failed (code {rc}) on a batch of {n} tokens: lower {opt('parallel')} or "
                              f"{opt('n_ctx')}")
        return outputs

    def _sample(self, seq: _Seq, idx: int) -> Result | None:
        """Sample the next token of ``seq`` from logits ``idx``; a Result when it is finished."""
        p = seq.group.request.sampling
        now = time.monotonic()
        if not seq.prefill_done:
            seq.prefill_done = now
        if len(seq.out.tokens) >= p.max_tokens:  # max_tokens 0
            seq.out.end_of_length()
            return _result(seq)
        tok = pick(seq.sampler, seq.how, self.batch.ctx, idx, self.batch.engine.n_vocab)
        if not seq.first:
            seq.first = time.monotonic() - seq.started
        if seq.out.push(tok):
            return _result(seq)
        if len(seq.out.tokens) >= p.max_tokens:
            seq.out.end_of_length()
            return _result(seq)
        seq.feed = [tok]
        return None

    def _finish(self, slot: int) -> None:
        seq = self.slots[slot]
        assert seq is not None
        L.llama_sampler_free(seq.sampler)
        group = seq.group
        group.live.discard(slot)
        self.slots[slot] = None
        if group.pending and not group.live:
            # last sibling of a request with samples to go: rewind its KV to the prompt and reuse the slot
            n = len(group.tokens)
            L.llama_memory_seq_rm(self.batch.memory, slot, n - 1, -1)
            try:
                self.slots[slot] = self._start(group, slot, group.tokens[-1:], n - 1)
            except BaseException:
                drop_sequence(self.batch.memory, slot)  # the slot stays free and empty
                raise
            if not group.pending and group in self.groups:
                self.groups.remove(group)
            return
        drop_sequence(self.batch.memory, slot)


def _errors(request: Request, message: str) -> list[Result]:
    return [Result(request.id, k, None, message) for k in range(max(request.n, 1))]


def _result(seq: _Seq) -> Result:
    gen = seq.out.generation(len(seq.group.tokens), seq.started, seq.first, seq.prefill_done - seq.started,
                             seq.group.shared)
    return Result(seq.group.request.id, seq.index, gen)
