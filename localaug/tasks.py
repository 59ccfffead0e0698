"""refine / expand / pairs: input -> exact prompt -> generation(s) -> parsed result.

A model is either a *family* model (prompted exactly as trained, see prompts.py) or any other
instruct model in *teacher* mode. The style is decided once per model from the registry and the
GGUF's own metadata, never guessed per call.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from localaug import prompts, registry
from localaug.engine import Engine, Generation, SamplingParams
from localaug.errors import UsageError
from localaug.filters import DEFAULT_ECHO, DedupFilter, QualityRules, normalize, rouge_l
from localaug.prompts import Pair
from localaug.registry import ModelSpec

TEACHER = "teacher"


@dataclass(frozen=True)
class PromptStyle:
    """How to prompt one model: a family format id, or teacher mode with the model's template."""

    prompt_format: str  # a prompts.FAMILY_FORMATS id, or "teacher"
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = prompts.QWEN2_STOP
    family_name: str | None = None

    @property
    def is_family(self) -> bool:
        return self.prompt_format != TEACHER


def family_spec_from_metadata(meta: dict[str, Any]) -> ModelSpec | None:
    """The family model a GGUF was converted from, judged by its provenance and name keys."""
    candidates = [
        str(meta.get("localaug.source.repo", "")),
        str(meta.get("general.source.repo_url", "")).removeprefix("https://huggingface.co/"),
        str(meta.get("general.name", "")),
        "-".join(str(meta[k]) for k in ("general.basename", "general.size_label", "general.finetune") if meta.get(k)),
    ]
    for spec in registry.family():
        tail = spec.repo.split("/")[-1].lower()
        if any(c and (c.lower() == spec.repo.lower() or c.lower().replace(" ", "-") == tail) for c in candidates):
            return spec
    return None


def style_for(meta: dict[str, Any], spec: ModelSpec | None = None, prompt_format: str | None = None) -> PromptStyle:
    if prompt_format is not None and prompt_format not in (*prompts.FAMILY_FORMATS, TEACHER):
        raise UsageError(f"unknown prompt format {prompt_format!r}; use {', '.join((*prompts.FAMILY_FORMATS, TEACHER))}")
    if prompt_format in prompts.FAMILY_FORMATS:
        return PromptStyle(prompt_format, family_name=spec.name if spec else None)
    spec = spec or family_spec_from_metadata(meta)
    if spec is not None and prompt_format is None:
        return PromptStyle(spec.prompt_format, stop=spec.stop, family_name=spec.name)
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise UsageError("this GGUF has no chat template and is not a family model: use an instruct model")
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def tok(key: str) -> str:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    return PromptStyle(TEACHER, template, tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id"), stop=())


def user_turn(task: str, payload: str | list[Pair]) -> str:
    """The user turn, NFC-normalised as the Qwen2 tokenizer normalises (llama.cpp's does not)."""
    if task == "pairs":
        if isinstance(payload, str) or not payload:
            raise UsageError("pairs needs at least one seed (instruction, response) pair")
        return unicodedata.normalize("NFC", prompts.render_pairs(payload))
    if not isinstance(payload, str) or not payload.strip():
        raise UsageError(f"{task} needs a non-empty instruction")
    return unicodedata.normalize("NFC", payload)


def build_prompt(style: PromptStyle, task: str, payload: str | list[Pair]) -> str:
    turn = user_turn(task, payload)
    if style.is_family:
        return prompts.family_prompt(style.prompt_format, turn)
    assert style.chat_template is not None
    return prompts.render_chat_template(
        style.chat_template, prompts.teacher_messages(task, turn), bos_token=style.bos_token, eos_token=style.eos_token
    )


def parse_reply(style: PromptStyle, task: str, reply: str) -> str | list[Pair]:
    if task == "pairs":
        return prompts.parse_pairs(reply)
    return reply.strip() if style.is_family else prompts.clean_instruction(reply)


# --- running ----------------------------------------------------------------------------------


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


def sample_seed(base: int | None, k: int) -> int | None:
    """Sample k of an input uses seed+k (None stays random)."""
    return None if base is None else base + k


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
    try:
        found = parse_reply(style, "pairs", gen.text)
    except prompts.ReplyParseError:
        return [], ["unparseable"]
    accepted: list[Pair] = []
    reasons: list[str] = []
    for pair in found:
        if len(accepted) >= room:
            break
        reason = (rules.check(pair.instruction) or rules.check_response(pair.response)
                  or dedup.check(pair.instruction) or (seen.check(pair.instruction) if seen is not None else None))
        (reasons.append(reason) if reason else accepted.append(pair))  # type: ignore[func-returns-value]
    return accepted, reasons


def new_dedup(style: PromptStyle, task: str, payload: str | list[Pair], threshold: float) -> DedupFilter:
    """The duplicate filter for one input: its seed text(s) and, in teacher mode, the in-context answers."""
    dedup = DedupFilter(threshold)
    dedup.add_reference([payload] if isinstance(payload, str) else [p.instruction for p in payload])
    if not style.is_family:
        dedup.add_reference(prompts.example_outputs(task) if task != "pairs" else
                            [p.instruction for ex in prompts.example_outputs(task) for p in prompts.parse_pairs(ex)])
    return dedup


def accept(style: PromptStyle, task: str, gen: Generation, dedup: DedupFilter, rules: QualityRules | None = None,
           seen: Seen | None = None, room: int = 1 << 30) -> tuple[list[Any], list[str]]:
    """(at most ``room`` accepted items, rejection reasons) of one expand/pairs sample."""
    fn = _accept_pairs if task == "pairs" else _accept_instructions
    return fn(style, gen, dedup, rules or QualityRules(), seen, room)


def refine_reason(output: str, source: str, rules: QualityRules, echo: float = DEFAULT_ECHO) -> str | None:
    """Why a refined instruction is not kept: a quality rule, or an echo of its input."""
    reason = rules.check(output)
    if reason is None and (normalize(output) == normalize(source) or rouge_l(output, source) >= echo):
        reason = "echo"
    return reason


def _sample(engine: Engine, style: PromptStyle, task: str, payload: str | list[Pair], n: int,
            sampling: SamplingParams, max_samples: int | None, threshold: float) -> Iterator[Any]:
    """Draw samples (seed, seed+1, ...) until n are accepted or the cap is hit; yield each accepted
    item as it comes, then the ExpandResult."""
    if n < 1:
        raise UsageError("-n must be at least 1")
    cap = max_samples or max(3 * n, n + 4)
    dedup = new_dedup(style, task, payload, threshold)
    result = ExpandResult([], n, 0)
    prompt = build_prompt(style, task, payload)
    while len(result.items) < n and result.samples < cap:
        gen = engine.generate(prompt, replace(sampling, seed=sample_seed(sampling.seed, result.samples)), style.stop)
        result.samples += 1
        result.generations.append(gen)
        accepted, reasons = accept(style, task, gen, dedup, room=n - len(result.items))
        for reason in reasons:
            result.rejected[reason] = result.rejected.get(reason, 0) + 1
        for item in accepted:
            result.items.append(item)
            yield item
    yield result


def expand_iter(engine: Engine, style: PromptStyle, text: str, n: int, sampling: SamplingParams,
                max_samples: int | None = None, threshold: float = 0.7) -> Iterator[str | ExpandResult]:
    """n distinct new instructions, one per sample; exact and near duplicates (of the seed too) dropped."""
    return _sample(engine, style, "expand", text, n, sampling, max_samples, threshold)


def pairs_iter(engine: Engine, style: PromptStyle, seeds: list[Pair], n: int, sampling: SamplingParams,
               max_samples: int | None = None, threshold: float = 0.7) -> Iterator[Pair | ExpandResult]:
    """n new instruction-response pairs; unparseable replies are counted, not hidden."""
    return _sample(engine, style, "pairs", seeds, n, sampling, max_samples, threshold)


def final(events: Iterator[Any]) -> ExpandResult:
    """Run an expand/pairs iterator to its end and return its ExpandResult."""
    result = None
    for event in events:
        result = event
    assert isinstance(result, ExpandResult)
    return result
