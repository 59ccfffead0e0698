"""How to prompt one model: a family prompt format, or teacher mode with the model's own template.

A model is either a *family* model (prompted exactly as trained, see ``prompts``) or any other
instruct model in *teacher* mode. The style is decided once per model from the registry and the
GGUF's own metadata, never guessed per call. Text only: no llama.cpp here.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from gguf import Keys

from localaug.convert.keys import LocalaugKeys
from localaug.core.errors import UsageError
from localaug.family import prompts, registry
from localaug.family.prompts import Pair
from localaug.family.registry import ModelSpec

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
    system: str | None = None  # your own system prompt (teacher mode and respond)
    examples: tuple[prompts.Example, ...] | None = None  # your own in-context examples (teacher mode)
    remote: bool = False  # on an OpenAI-compatible server: prompts are messages, its template renders them

    @property
    def is_family(self) -> bool:
        return self.prompt_format != TEACHER


def family_spec_from_metadata(meta: dict[str, Any]) -> ModelSpec | None:
    """The family model a GGUF was converted from, judged by its provenance and name keys."""
    candidates = [
        str(meta.get(LocalaugKeys.SOURCE_REPO, "")),
        str(meta.get(Keys.General.SOURCE_REPO_URL, "")).removeprefix("https://huggingface.co/"),
        str(meta.get(Keys.General.NAME, "")),
        "-".join(str(meta[k]) for k in (Keys.General.BASENAME, Keys.General.SIZE_LABEL, Keys.General.FINETUNE) if meta.get(k)),
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
    if spec is not None and prompt_format is None and spec.task != "respond":  # a responder is a general instruct model
        return PromptStyle(spec.prompt_format, stop=spec.stop, family_name=spec.name)
    template = meta.get(Keys.Tokenizer.CHAT_TEMPLATE)
    if not template:
        raise UsageError("this GGUF has no chat template and is not a family model: use an instruct model")
    tokens = meta.get(Keys.Tokenizer.LIST) or []

    def tok(key: str) -> str:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    return PromptStyle(TEACHER, template, tok(Keys.Tokenizer.BOS_ID), tok(Keys.Tokenizer.EOS_ID), stop=())


def check_overrides(style: PromptStyle, task: str | None) -> None:
    """Your own system prompt or examples must be something this model and task (None: any) use."""
    if style.examples is not None and (style.is_family or task == "respond"):
        what = "family models are prompted as they were trained" if style.is_family else "respond shows no examples"
        raise UsageError(f"in-context examples are for teacher mode ({what}): drop --examples")
    if style.system is not None and style.is_family and task != "respond":
        raise UsageError("family models are prompted as they were trained, with their own system turn: drop --system "
                         "(or use --prompt-format teacher)")


def user_turn(task: str, payload: str | list[Pair]) -> str:
    """The user turn, NFC-normalised as the Qwen2 tokenizer normalises (llama.cpp's does not)."""
    if task == "pairs":
        if isinstance(payload, str) or not payload:
            raise UsageError("pairs needs at least one seed (instruction, response) pair")
        return unicodedata.normalize("NFC", prompts.render_pairs(payload))
    if not isinstance(payload, str) or not payload.strip():
        raise UsageError(f"{task} needs a non-empty instruction")
    return unicodedata.normalize("NFC", payload)


def examples_for(style: PromptStyle, task: str, turn: str) -> list[prompts.Example]:
    """The in-context examples a teacher prompt shows for this input (none for family models and
    respond): chosen per input from your examples or the built-in pool (``prompts.choose_examples``)."""
    if style.is_family or task == "respond":
        return []
    return prompts.choose_examples(task, turn, style.examples)


def render_messages(style: PromptStyle, messages: list[prompts.Message]) -> str | prompts.Chat:
    """A conversation as this model reads it: Qwen2 ChatML for family models (their default system
    turn when none is given), else the GGUF's own chat template (sandboxed); a remote model gets the
    messages themselves (its server renders them)."""
    if style.remote:
        return prompts.Chat(tuple(dict(m) for m in messages))
    if style.is_family:
        return prompts.qwen2_chatml(messages)
    assert style.chat_template is not None
    return prompts.render_chat_template(style.chat_template, messages, bos_token=style.bos_token, eos_token=style.eos_token)


def build_prompt(style: PromptStyle, task: str, payload: str | list[Pair]) -> str | prompts.Chat:
    """The prompt of one input: text for a local model, messages (``prompts.Chat``) for a remote one.
    A family model on a server gets the bare user turn, which its ChatML template wraps in the
    default system turn exactly as ``family_prompt`` does here."""
    turn = user_turn(task, payload)
    if style.is_family and task != "respond" and not style.system and not style.remote:
        return prompts.family_prompt(style.prompt_format, turn)
    if style.is_family:
        system = [{"role": "system", "content": style.system}] if style.system else []
        return render_messages(style, [*system, {"role": "user", "content": turn}])
    return render_messages(style, prompts.teacher_messages(task, turn, examples_for(style, task, turn), style.system))


def parse_reply(style: PromptStyle, task: str, reply: str) -> str | list[Pair]:
    if task == "pairs":
        return prompts.parse_pairs(reply)
    if task == "respond":
        return reply.strip()
    return reply.strip() if style.is_family else prompts.clean_instruction(reply)
