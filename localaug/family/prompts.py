"""Exact prompt formats per task and model kind, stop strings, and reply parsing.

Family models are prompted byte for byte as they were trained: the raw instruction (or the seed
pairs, for Response-Exp) is the user turn of the Qwen2 chat template with its default system
turn. Any other instruct GGUF runs in *teacher mode*: a curated task prompt with hand-written
in-context examples, rendered with the model's own chat template from its GGUF metadata in a
sandboxed Jinja environment (templates are data from a file, never trusted code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localaug.core.errors import LocalaugError, ReplyParseError
from localaug.family import templates

DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN2_STOP = ("<|im_end|>", "<|endoftext|>")

Message = dict[str, str]


@dataclass(frozen=True)
class Pair:
    instruction: str
    response: str


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


PAIR_RE = re.compile(
    r"###\s*Instruction\s*:?\s*\n(?P<instruction>.*?)\n\s*###\s*Response\s*:?\s*\n(?P<response>.*?)(?=\n\s*###|\Z)",
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
        records = json.loads(body) if body.startswith("[") else [json.loads(line) for line in body.splitlines() if line.strip()]
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

# Hand-written in-context examples (English and Chinese) per task: (user turn, assistant turn).
TEACHER_EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "refine": (
        (
            "Create a travel guide for Hangzhou.",
            "Create a comprehensive Hangzhou travel guide. Include: 1. the major attractions with a "
            "recommended itinerary; 2. local foods and restaurants worth trying; 3. accommodation "
            "options for different budgets; 4. transport from the airport to the city centre and "
            "between attractions; 5. practical tips such as the best season to visit and local "
            "etiquette. Present it as a complete, well-organised guide.",
        ),
        (
            "写一首关于秋天的诗。",
            "请创作一首以秋天为主题的现代诗，要求：1. 描绘秋天的典型景物，如落叶、丰收的田野和凉爽的风；"
            "2. 通过景物表达对时光流逝的感悟；3. 全诗不少于四节，每节四行，语言优美并有节奏感。",
        ),
    ),
    "expand": (
        (
            "Plan an in-depth tour itinerary of France that includes Paris, Lyon, and Provence.",
            "Describe a classic road-trip itinerary along the California coastline in the United States.",
        ),
        (
            "解释一下光合作用的过程。",
            "请解释人体消化系统是如何分解和吸收食物中的营养的。",
        ),
    ),
    "pairs": (
        (
            "### Instruction\nName three primary colors.\n\n### Response\nRed, yellow and blue.",
            "### Instruction\nName the three states of matter.\n\n### Response\nSolid, liquid and gas.",
        ),
        (
            "### Instruction\n中国的首都是哪里？\n\n### Response\n中国的首都是北京。",
            "### Instruction\n日本的首都是哪里？\n\n### Response\n日本的首都是东京。",
        ),
    ),
}


def teacher_messages(task: str, user_turn: str) -> list[Message]:
    """System prompt, the in-context examples as earlier turns, then the real input."""
    if task not in TEACHER_SYSTEM:
        raise LocalaugError(f"unknown task {task!r}; use refine, expand or pairs")
    messages: list[Message] = [{"role": "system", "content": TEACHER_SYSTEM[task]}]
    # Small models lean on the last example: put the ones in the input's language last.
    examples = sorted(TEACHER_EXAMPLES[task], key=lambda ex: has_cjk(ex[0]) == has_cjk(user_turn))
    for user, assistant in examples:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": user_turn})
    return messages


def has_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in text)


def example_outputs(task: str) -> list[str]:
    """The in-context answers: a teacher reply that repeats one of them is an echo, not new data."""
    return [assistant for _, assistant in TEACHER_EXAMPLES[task]]


def render_chat_template(
    template: str, messages: list[Message], *, bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True
) -> str:
    """Render a chat template from GGUF metadata, sandboxed and bounded (``family.templates``)."""
    return templates.render(template, messages=messages, bos_token=bos_token, eos_token=eos_token,
                            add_generation_prompt=add_generation_prompt)


# --- reply parsing ----------------------------------------------------------------------------

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
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
    text = _LABEL.sub("", _strip_fences(reply.strip()), count=1).strip()
    for left, right in _QUOTES:
        inner = text[len(left):-len(right)]
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and left not in inner and right not in inner:
            return inner.strip()
    return text
