"""What one training example is, and how each training format a trainer reads writes it.

An example is what the user turn held when the answer was written — the instruction and its
context (Alpaca's ``input``), joined as ``prompts.user_text`` joins them — the responder's system
prompt, and the answer; a preference example has a chosen and a rejected answer instead. The
shapes (rows of the training file) and the ``dataset_info.json`` entries LLaMA-Factory reads them
by are tables here, so that every format carries every part of an example:

| format | system prompt | instruction + context | answer(s) |
|---|---|---|---|
| alpaca | ``system`` (a column only when some example has one) | ``instruction``, ``input`` | ``output`` |
| sharegpt | a first ``system`` turn | the ``human`` turn | the ``gpt`` turn |
| messages | a first ``system`` message | the ``user`` message | the ``assistant`` message |
| prompts | a first ``system`` message | the ``user`` message | — |
| dpo | a first ``system`` message of ``prompt`` | the ``user`` message of ``prompt`` | ``chosen``, ``rejected`` |

``dpo`` is TRL's conversational preference format (``prompt``, ``chosen`` and ``rejected`` lists of
messages). LLaMA-Factory's ranking datasets want the two answers as single messages (its sharegpt
converter checks ``isinstance(example[chosen], dict)``) while TRL wants lists, so each dpo row also
carries ``chosen_message`` and ``rejected_message``: its ``dataset_info.json`` entry reads
``prompt`` as the conversation and those two as the answers (``"ranking": true``). TRL drops the
columns it does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localaug.core.errors import UsageError
from localaug.family.prompts import user_text

SFT_FORMATS = ("alpaca", "sharegpt", "messages", "prompts")
PREFERENCE_FORMATS = ("dpo",)


@dataclass(frozen=True)
class Example:
    """One training example (``response`` is "" for an instruction alone)."""

    instruction: str
    response: str = ""
    input: str = ""  # the context given with the instruction (Alpaca's input)
    system: str | None = None  # the system prompt the answer was written under

    @property
    def user(self) -> str:
        return user_text(self.instruction, self.input)

    def prompt(self) -> list[dict[str, str]]:
        """The conversation up to the answer, as messages."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.user}]


@dataclass(frozen=True)
class Preference:
    """One preference example: a prompt (an Example's instruction, context and system prompt) and
    two answers to it, the chosen one judged better."""

    prompt: Example
    chosen: str
    rejected: str


def no_responses(what: str) -> UsageError:
    return UsageError(f"{what} holds instructions without responses: answer them with --respond-with MODEL (or "
                      "localaug run respond), or write them with --format prompts")


def shape(fmt: str, ex: Example) -> dict[str, Any]:
    """One row of an SFT training file."""
    if fmt == "prompts":
        return {"prompt": ex.prompt()}
    if not ex.response:
        raise no_responses("this output")
    if fmt == "alpaca":
        row = {"instruction": ex.instruction, "input": ex.input, "output": ex.response}
        return {**row, "system": ex.system} if ex.system else row
    if fmt == "sharegpt":
        system = [{"from": "system", "value": ex.system}] if ex.system else []
        return {"conversations": [*system, {"from": "human", "value": ex.user}, {"from": "gpt", "value": ex.response}]}
    if fmt == "messages":
        return {"messages": [*ex.prompt(), {"role": "assistant", "content": ex.response}]}
    if fmt in PREFERENCE_FORMATS:
        raise UsageError(f"{fmt} is a preference format: it is written from judged answers (a judge's grades or verdicts)")
    raise UsageError(f"unknown output format {fmt!r}: use jsonl, {', '.join((*SFT_FORMATS, *PREFERENCE_FORMATS))}")


def preference_shape(p: Preference) -> dict[str, Any]:
    """One row of a dpo file (see the module doc)."""
    chosen, rejected = {"role": "assistant", "content": p.chosen}, {"role": "assistant", "content": p.rejected}
    return {"prompt": p.prompt.prompt(), "chosen": [chosen], "rejected": [rejected],
            "chosen_message": chosen, "rejected_message": rejected}


# How LLaMA-Factory reads each export (its data/dataset_info.json schema, checked against its parser).
_CHAT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
              "system_tag": "system"}
DATASET_INFO: dict[str, dict[str, Any]] = {
    "alpaca": {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "system_tag": "system"}},  # tags given without it would leave it unset: a system turn breaks the row
    "messages": {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": _CHAT_TAGS},
    "dpo": {"formatting": "sharegpt", "ranking": True,
            "columns": {"messages": "prompt", "chosen": "chosen_message", "rejected": "rejected_message"},
            "tags": _CHAT_TAGS},
}


def dataset_info_entry(fmt: str, system_column: bool = False) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of an export (without its file name). An alpaca file whose
    examples carry a system prompt names its ``system`` column (LLaMA-Factory then reads the column
    in every row, so it is named only when the file has one)."""
    entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DATASET_INFO[fmt].items()}
    if fmt == "alpaca" and system_column:
        entry["columns"]["system"] = "system"
    return entry
