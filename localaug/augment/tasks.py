"""refine / expand / pairs / respond: one input -> its exact prompt -> samples -> judged results.

``Draw`` is the one sampling loop every front end drives: the terminal commands and the Python API
(one sample at a time, ``run_sequential``), batch jobs and Ray (``jobs.worker``: the samples of many
inputs decoded together) and the server (``serve.handlers``: the samples of one request decoded
together). Its rules are the same whoever drives it:

- sample k of an input uses seed + k (``runtime.engine.sample_seed``), so results do not depend on
  how samples were batched;
- samples are judged in sample order, each by the quality rules (length, refusal) and the
  duplicate filters (an echo of the input or, in teacher mode, of an in-context example; a
  duplicate of an earlier accepted sample; optionally of any text accepted across a job);
- expand and pairs draw until ``n`` are accepted or ``cap`` samples were drawn (``default_cap``);
  refine draws one sample, judged against its input (an echo of it is not a refinement); respond
  draws exactly ``n`` answers (one by default), each judged alone by the response rules (empty,
  refusal, max_chars) and kept with its reason in ``answers``;
- a reply cut at max_tokens is rejected as ``truncated``; in pairs, only its last pair (the one the
  cut ends), the complete pairs before it are judged as usual;
- every rejection is counted by reason (``filters.REASONS``).

A driver asks ``want`` (how many samples to decode next, at most), decodes them with
``sampling_for_next()``, and hands them back in sample order with ``take`` (or ``fail``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from localaug.augment.filters import DEFAULT_ECHO, DEFAULT_ROUGE_L, DedupFilter, QualityRules, normalize, rouge_l
from localaug.core.errors import ReplyParseError, UsageError, opt
from localaug.family import prompts
from localaug.family.prompts import Pair
from localaug.family.styles import PromptStyle, build_prompt, examples_for, parse_reply, user_turn
from localaug.runtime.engine import Engine
from localaug.runtime.sampling import SamplingParams, sample_seed
from localaug.runtime.stream import Generation


SINGLE_SAMPLE = ("refine", "respond")  # one sample per input, judged alone


def default_cap(n: int) -> int:
    """Samples drawn at most to find n that pass the filters."""
    return max(3 * n, n + 4)


@dataclass
class ExpandResult:
    items: list[Any]
    requested: int
    samples: int
    rejected: dict[str, int] = field(default_factory=dict)
    generations: list[Generation] = field(default_factory=list)

    @property
    def shortfall(self) -> int:
        return max(0, self.requested - len(self.items))


class Seen(Protocol):
    """A job-wide memory of accepted texts (``filters.ExactIndex`` or ``filters.MinHashIndex``)."""

    def check(self, text: str, add: bool = True) -> str | None: ...


def check_text(text: str, dedup: DedupFilter, rules: QualityRules, seen: Seen | None = None) -> str | None:
    """Why one candidate instruction is rejected (None: accepted, and remembered)."""
    return rules.check(text) or dedup.check(text) or (seen.check(text) if seen is not None else None)


def _accept_instructions(style: PromptStyle, gen: Generation, dedup: DedupFilter, rules: QualityRules,
                         seen: Seen | None, room: int) -> tuple[list[Any], list[str]]:
    if gen.finish_reason == "length":
        return [], ["truncated"]
    candidate = str(parse_reply(style, "expand", gen.text))
    reason = check_text(candidate, dedup, rules, seen)
    return ([], [reason]) if reason else ([candidate], [])


def _accept_pairs(style: PromptStyle, gen: Generation, dedup: DedupFilter, rules: QualityRules,
                  seen: Seen | None, room: int) -> tuple[list[Any], list[str]]:
    cut = gen.finish_reason == "length"
    try:
        found = parse_reply(style, "pairs", gen.text)
    except ReplyParseError:
        return [], ["truncated" if cut else "unparseable"]
    # a reply cut at max_tokens inside its last response: that pair is cut, the ones before it are whole
    last_cut = len(found) - 1 if cut and gen.text.rstrip().endswith(found[-1].response) else -1
    accepted: list[Pair] = []
    reasons: list[str] = []
    for i, pair in enumerate(found):
        if len(accepted) >= room:
            break
        reason = "truncated" if i == last_cut else (
            rules.check(pair.instruction) or rules.check_response(pair.response)
            or dedup.check(pair.instruction) or (seen.check(pair.instruction) if seen is not None else None))
        (reasons.append(reason) if reason else accepted.append(pair))  # type: ignore[func-returns-value]
    return accepted, reasons


def new_dedup(style: PromptStyle, task: str, payload: str | list[Pair], threshold: float) -> DedupFilter:
    """The duplicate filter for one input: its seed text(s) and, in teacher mode, the in-context
    examples its prompt shows (a reply that copies one is an echo, not new data)."""
    dedup = DedupFilter(threshold)
    dedup.add_reference([payload] if isinstance(payload, str) else [p.instruction for p in payload])
    dedup.add_reference(example_texts(style, task, payload))
    return dedup


def example_texts(style: PromptStyle, task: str, payload: str | list[Pair]) -> list[str]:
    """The instructions of the in-context examples the prompt for ``payload`` shows."""
    texts = [t for ex in examples_for(style, task, user_turn(task, payload)) for t in ex]
    if task != "pairs":
        return texts
    found = []
    for text in texts:
        try:
            found += [p.instruction for p in prompts.parse_pairs(text)]
        except ReplyParseError:
            found.append(text)
    return found


def accept(style: PromptStyle, task: str, gen: Generation, dedup: DedupFilter, rules: QualityRules | None = None,
           seen: Seen | None = None, room: int = 1 << 30) -> tuple[list[Any], list[str]]:
    """(at most ``room`` accepted items, rejection reasons) of one expand/pairs sample."""
    fn = _accept_pairs if task == "pairs" else _accept_instructions
    return fn(style, gen, dedup, rules or QualityRules(), seen, room)


def refine_reason(output: str, source: str, rules: QualityRules, echo: float = DEFAULT_ECHO,
                  examples: Iterable[str] = ()) -> str | None:
    """Why a refined instruction is not kept: a quality rule, or an echo of its input (or of an
    in-context example the prompt showed)."""
    reason = rules.check(output)
    if reason is None and any(normalize(output) == normalize(ref) or rouge_l(output, ref) >= echo
                              for ref in (source, *examples)):
        reason = "echo"
    return reason


def single_reason(style: PromptStyle, task: str, source: str, reply: str, gen: Generation,
                  rules: QualityRules | None = None, echo: float = DEFAULT_ECHO) -> str | None:
    """Why the one reply of refine or respond is not kept (None: kept): cut at max_tokens, a quality
    rule, or (refine) an echo of the input or of an in-context example."""
    rules = rules or QualityRules()
    if gen.finish_reason == "length":
        return "truncated"
    if task == "respond":
        return response_reason(reply, rules)
    return refine_reason(reply, source, rules, echo, example_texts(style, task, source))


def response_reason(text: str, rules: QualityRules) -> str | None:
    """Why a response is not kept: empty, a refusal, or over max_chars (a short answer is fine)."""
    reason = rules.check_response(text)
    if reason is None and rules.max_chars is not None and len(text.strip()) > rules.max_chars:
        reason = "too-long"
    return reason


# --- the sampling loop ----------------------------------------------------------------------------


class Draw:
    """The samples of one input, from the first request to the result (see the module doc)."""

    def __init__(self, style: PromptStyle, task: str, payload: str | list[Pair], n: int, sampling: SamplingParams, *,
                 rules: QualityRules | None = None, threshold: float = DEFAULT_ROUGE_L, echo: float = DEFAULT_ECHO,
                 max_samples: int | None = None, seen: Seen | None = None) -> None:
        if n < 1:
            raise UsageError(f"{opt('n')} must be at least 1")
        self.style, self.task, self.payload, self.sampling = style, task, payload, sampling
        self.prompt = build_prompt(style, task, payload)
        self.rules = rules or QualityRules()
        self.echo, self.seen = echo, seen
        single = task in SINGLE_SAMPLE
        self.n = n if task == "respond" else 1 if single else n
        self.cap = self.n if single else (max_samples or default_cap(n))
        self.dedup = None if single else new_dedup(style, task, payload, threshold)
        self.result = ExpandResult([], self.n, 0)
        self.errors: list[str] = []
        self.refined: str | None = None  # refine and respond: the parsed reply, kept or not
        self.answers: list[tuple[str, str | None]] = []  # respond: (answer, why it is not kept or None), by sample
        self.completion_tokens = 0

    @property
    def want(self) -> int:
        """How many samples to decode next (0: finished)."""
        if self.errors or len(self.result.items) >= self.n or self.result.samples >= self.cap:
            return 0
        return min(self.n - len(self.result.items), self.cap - self.result.samples)

    def sampling_for_next(self) -> SamplingParams:
        """The sampling of the next sample; a batch of k samples uses seed, seed + 1, ... from here."""
        return replace(self.sampling, seed=sample_seed(self.sampling.seed, self.result.samples))

    def take(self, gen: Generation) -> list[Any]:
        """Judge the next sample (in sample order); the items it adds."""
        result = self.result
        result.samples += 1
        result.generations.append(gen)
        self.completion_tokens += gen.completion_tokens
        if self.task in SINGLE_SAMPLE:
            return self._take_refined(gen)
        assert self.dedup is not None
        accepted, reasons = accept(self.style, self.task, gen, self.dedup, self.rules, self.seen,
                                   room=self.n - len(result.items))
        for reason in reasons:
            result.rejected[reason] = result.rejected.get(reason, 0) + 1
        result.items.extend(accepted)
        return accepted

    def _take_refined(self, gen: Generation) -> list[Any]:
        """refine and respond: one sample, kept or rejected for one reason."""
        self.refined = str(parse_reply(self.style, self.task, gen.text))
        reason = single_reason(self.style, self.task, str(self.payload), self.refined, gen, self.rules, self.echo)
        self.answers.append((self.refined, reason))
        if reason is not None:
            self.result.rejected[reason] = self.result.rejected.get(reason, 0) + 1
            return []
        self.result.items.append(self.refined)
        return [self.refined]

    def fail(self, error: str) -> None:
        """A sample could not be generated: the draw ends with this error."""
        self.result.samples += 1
        self.errors.append(error)

    def take_all(self, outcomes: Iterable[Generation | str]) -> None:
        """A round's samples in sample order: each a Generation, or the error that stopped it."""
        for outcome in outcomes:
            if isinstance(outcome, Generation):
                self.take(outcome)
            else:
                self.fail(outcome)
                return

    @property
    def last(self) -> Generation | None:
        return self.result.generations[-1] if self.result.generations else None


def run_sequential(engine: Engine, draw: Draw) -> Iterator[Any]:
    """Drive ``draw`` one sample at a time on ``engine``: yield each accepted item as it comes."""
    while draw.want:
        gen = engine.generate(draw.prompt, draw.sampling_for_next(), draw.style.stop)
        yield from draw.take(gen)


# --- the terminal and the Python API ----------------------------------------------------------------


def stream_text(engine: Engine, style: PromptStyle, task: str, payload: str | list[Pair], sampling: SamplingParams) -> Iterator[str | Generation]:
    """Raw text pieces as decoded, then the Generation."""
    return engine.stream(build_prompt(style, task, payload), sampling, style.stop)


def refine(engine: Engine, style: PromptStyle, text: str, sampling: SamplingParams,
           on_piece: Callable[[str], None] | None = None) -> tuple[str, Generation]:
    gen: Generation | None = None
    for item in stream_text(engine, style, "refine", text, sampling):
        if isinstance(item, Generation):
            gen = item
        elif on_piece:
            on_piece(item)
    assert gen is not None
    result = parse_reply(style, "refine", gen.text)
    assert isinstance(result, str)
    return result, gen


def _sample(engine: Engine, style: PromptStyle, task: str, payload: str | list[Pair], n: int,
            sampling: SamplingParams, max_samples: int | None, threshold: float) -> Iterator[Any]:
    """Each accepted item as it comes, then the ExpandResult."""
    draw = Draw(style, task, payload, n, sampling, threshold=threshold, max_samples=max_samples)
    yield from run_sequential(engine, draw)
    yield draw.result


def expand_iter(engine: Engine, style: PromptStyle, text: str, n: int, sampling: SamplingParams,
                max_samples: int | None = None, threshold: float = DEFAULT_ROUGE_L) -> Iterator[str | ExpandResult]:
    """n distinct new instructions, one per sample; exact and near duplicates (of the seed too) dropped."""
    return _sample(engine, style, "expand", text, n, sampling, max_samples, threshold)


def pairs_iter(engine: Engine, style: PromptStyle, seeds: list[Pair], n: int, sampling: SamplingParams,
               max_samples: int | None = None, threshold: float = DEFAULT_ROUGE_L) -> Iterator[Pair | ExpandResult]:
    """n new instruction-response pairs; unparseable replies are counted, not hidden."""
    return _sample(engine, style, "pairs", seeds, n, sampling, max_samples, threshold)


def final(events: Iterator[Any]) -> ExpandResult:
    """Run an expand/pairs iterator to its end and return its ExpandResult."""
    result = None
    for event in events:
        result = event
    assert isinstance(result, ExpandResult)
    return result
