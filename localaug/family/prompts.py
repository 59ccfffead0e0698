"""Exact prompt formats per task and model kind, stop strings, and reply parsing.

Family models are prompted byte for byte as they were trained: the raw instruction (or the seed
pairs, for Response-Exp) is the user turn of the Qwen2 chat template with its default system
turn. Any other instruct GGUF runs in *teacher mode*: a curated task prompt with in-context
examples chosen per input from a hand-written pool (``teacher_pool``), rendered with the model's
own chat template from its GGUF metadata in a sandboxed Jinja environment (templates are data from
a file, never trusted code). ``respond`` answers an instruction with the model's own template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localaug.core.errors import LocalaugError, ReplyParseError, UsageError
from localaug.family import teacher_pool, templates
from localaug.family.teacher_pool import TEACHER_SHOTS, Example
from localaug.family.text import rouge_l, tokens

DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN2_STOP = ("<|im_end|>", "<|endoftext|>")

Message = dict[str, str]


@dataclass(frozen=True)
class Chat:
    """A conversation sent as messages to a model on an OpenAI-compatible server, which applies its
    own chat template (a local model gets the rendered text instead)."""

    messages: tuple[Message, ...]


@dataclass(frozen=True)
class Pair:
    instruction: str
    response: str


def user_text(instruction: str, context: str = "") -> str:
    """An instruction and its context (Alpaca's ``input``) as one user turn, joined as
    LLaMA-Factory's alpaca converter joins ``instruction`` and ``input`` ("\\n", the context left out
    when empty): what a model is prompted with is then exactly what a trainer shows it."""
    return f"{instruction}\n{context}" if context else instruction


# --- the family: Qwen2 ChatML ------------------------------------------------------------------

def qwen2_chatml(messages: list[Message], add_generation_prompt: bool = True) -> str:
    """What the Qwen2-Instruct chat template renders, without a template engine."""
    parts = []
    if not messages or messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# A header's own line ends at its first newline: an empty response must not swallow the next block.
PAIR_RE = re.compile(
    r"###\s*Instruction[^\S\n]*:?[^\S\n]*\n(?P<instruction>.*?)\n\s*###\s*Response[^\S\n]*:?[^\S\n]*\n"
    r"(?P<response>.*?)(?=\n\s*###|\Z)",
    re.DOTALL,
)


def render_pairs(pairs: list[Pair]) -> str:
    """Seed pairs as Response-Exp reads them: ``### Instruction`` / ``### Response`` blocks."""
    return "\n\n".join(f"### Instruction\n{p.instruction.strip()}\n\n### Response\n{p.response.strip()}" for p in pairs)


def parse_pairs(reply: str) -> list[Pair]:
    """Pairs in a reply; a reply with none is an error that quotes its start."""
    pairs = [
        Pair(m.group("instruction").strip(), m.group("response").strip())
        for m in PAIR_RE.finditer(_strip_fences(reply.strip()))
    ]
    pairs = [p for p in pairs if p.instruction and p.response]
    if not pairs:
        head = reply.strip().replace("\n", " ")[:80]
        raise ReplyParseError(f"reply has no '### Instruction' / '### Response' pair: {head!r}")
    return pairs


def json_records(body: str) -> list[object]:
    """A JSON array, or JSON Lines (blank lines skipped); json.JSONDecodeError names the line of
    ``body``. Lines end at "\\n" only: U+2028 and the like are text inside a JSON string."""
    import json

    if body.startswith("["):
        return json.loads(body)
    records: list[object] = []
    offset = 0
    for line in body.split("\n"):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise json.JSONDecodeError(e.msg, body, offset + e.pos) from None
        offset += len(line) + 1
    return records


def read_seed_pairs(text: str) -> list[Pair]:
    """Seed pairs from a JSON array, JSON Lines, or ``### Instruction`` / ``### Response`` text.

    JSON records take ``instruction`` + ``response``, or Alpaca's ``instruction`` (+ ``input``) + ``output``.
    """
    import json

    body = text.strip()
    if not body:
        raise ReplyParseError("no seed pairs given: pass a JSON/JSONL file of {instruction, response} or ### blocks")
    records: list[object]
    if body.startswith("###"):
        return parse_pairs(body)
    try:
        records = json_records(body)
    except json.JSONDecodeError as e:
        raise ReplyParseError(f"seed pairs are not valid JSON/JSONL (line {e.lineno}): fix the file or use ### blocks") from e
    pairs = []
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict) or not r.get("instruction") or not (r.get("response") or r.get("output")):
            raise ReplyParseError(f"seed record {i} needs 'instruction' and 'response' (or Alpaca 'output')")
        instruction = str(r["instruction"]) + (f"\n\n{r['input']}" if r.get("input") else "")
        pairs.append(Pair(instruction.strip(), str(r.get("response") or r.get("output")).strip()))
    return pairs


def family_prompt(prompt_format: str, user_turn: str) -> str:
    if prompt_format not in FAMILY_FORMATS:
        raise LocalaugError(f"unknown prompt format {prompt_format!r}; known: {', '.join(FAMILY_FORMATS)}")
    return qwen2_chatml([{"role": "user", "content": user_turn}])


FAMILY_FORMATS = ("qwen2-chatml", "qwen2-response-pairs")


# --- teacher mode: any instruct model with a chat template -------------------------------------

TEACHER_SYSTEM: dict[str, str] = {
    "refine": (
        "You rewrite instructions so that an AI assistant answers them in more detail and more "
        "truthfully. Keep the user's intent, language and all given facts; make the request "
        "specific: name the aspects to cover, the structure, and the level of detail. Reply with "
        "the rewritten instruction only, in the same language as the original, with no preamble."
    ),
    "expand": (
        "You write new instructions for training AI assistants. Given one instruction, write ONE "
        "new instruction of the same task type but about different content. Write it in the same "
        "language as the given instruction. Reply with the new instruction only, with no preamble."
    ),
    "pairs": (
        "You write training data for AI assistants. Given example instruction-response pairs, write "
        "ONE new pair of the same task type about different content, in exactly this shape:\n"
        "### Instruction\n<the instruction>\n\n### Response\n<the response>"
    ),
}

RESEMBLES = 0.4  # ROUGE-L at or above which an in-context example is too close to the input to show


def choose_examples(task: str, user_turn: str, pool: tuple[Example, ...] | None = None,
                    shots: int = TEACHER_SHOTS) -> list[Example]:
    """The in-context examples for one input: the first ``shots`` of ``pool`` (default: the
    built-in pool, the input's language first) that are unlike the input, never the input itself or a
    near duplicate of it; the ones in the input's language last (small models lean on the last)."""
    if pool is None:
        if task not in teacher_pool.POOL:
            raise LocalaugError(f"unknown task {task!r}; use refine, expand or pairs")
        latin, cjk = teacher_pool.POOL[task]
        pool = cjk + latin if has_cjk(user_turn) else latin + cjk
    turn = tokens(user_turn)
    chosen = [ex for ex in pool if max(rouge_l(tokens(ex[0]), turn), rouge_l(tokens(ex[1]), turn)) < RESEMBLES][:shots]
    return sorted(chosen, key=lambda ex: has_cjk(ex[0]) == has_cjk(user_turn))


def teacher_messages(task: str, user_turn: str, examples: list[Example] | None = None,
                     system: str | None = None) -> list[Message]:
    """System prompt, the in-context examples as earlier turns, then the real input. ``respond``
    is the plain instruction (after ``system``, if given)."""
    if task == "respond":
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_turn}]
    if task not in TEACHER_SYSTEM:
        raise LocalaugError(f"unknown task {task!r}; use refine, expand, pairs or respond")
    messages: list[Message] = [{"role": "system", "content": system or TEACHER_SYSTEM[task]}]
    for user, assistant in choose_examples(task, user_turn) if examples is None else examples:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": user_turn})
    return messages


def has_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in text)


def read_examples(text: str, source: str = "examples") -> tuple[Example, ...]:
    """Your own in-context examples: a JSON array or JSON Lines of {"input", "output"} objects
    (``instruction``/``response`` are accepted too)."""
    import json

    try:
        records = json_records(text.strip())
    except json.JSONDecodeError as e:
        raise UsageError(f"{source} is not valid JSON/JSONL (line {e.lineno}): give {{\"input\", \"output\"}} objects") from None
    examples = []
    for i, r in enumerate(records, 1):
        pair = (r.get("input", r.get("instruction")), r.get("output", r.get("response"))) if isinstance(r, dict) else (None, None)
        if not all(isinstance(x, str) and x.strip() for x in pair):
            raise UsageError(f"{source}: example {i} needs non-empty \"input\" and \"output\" strings")
        examples.append((pair[0].strip(), pair[1].strip()))  # type: ignore[union-attr]
    if not examples:
        raise UsageError(f"{source} holds no examples: give {{\"input\", \"output\"}} objects")
    return tuple(examples)


def render_chat_template(
    template: str, messages: list[Message], *, bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True
) -> str:
    """Render a chat template from GGUF metadata, sandboxed and bounded (``family.templates``)."""
    return templates.render(template, messages=messages, bos_token=bos_token, eos_token=eos_token,
                            add_generation_prompt=add_generation_prompt)


# --- reply parsing ----------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:[\w-]*[^\S\n]*\n)?(.*?)\n?```\s*$", re.DOTALL)  # a language tag only on its own line
_LABEL = re.compile(
    r"^\s*\**\s*(?:(?:refined|rewritten|improved|new|expanded)(?:\s+(?:instruction|prompt|version))?|instruction|prompt)"
    r"\s*\**\s*[:：]\s*\**\s*",
    re.IGNORECASE,
)
_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("「", "」"), ("«", "»"))


def _strip_fences(text: str) -> str:
    m = _FENCE.match(text.strip())
    return m.group(1).strip() if m else text


def clean_instruction(reply: str) -> str:
    """One instruction from a teacher reply: no code fences, 'Refined:' labels or wrapping quotes."""
    text = _LABEL.sub("", _strip_fences(reply.strip())).strip()  # _LABEL is anchored: one label at most
    for left, right in _QUOTES:
        inner = text[len(left):-len(right)]
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and left not in inner and right not in inner:
            return inner.strip()
    return text
