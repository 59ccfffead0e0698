"""The training-file shapes (localaug/jobs/exports.py): every row of every format, the dpo row and
the ``dataset_info.json`` entries LLaMA-Factory reads them by, pinned as exact values and exact
bytes typed here from the formats' documentation (LLaMA-Factory's data/README, TRL's
conversational preference format) — never copied from the code's output.

They guard exports.py in tools/mutation.py: pure functions and one tiny file each, no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localaug.core.errors import UsageError
from localaug.jobs import dataio
from localaug.jobs import exports as X
from localaug.jobs.exports import Example, Preference


def dumped(value: object) -> str:
    """The JSON text of a value, keys in their order: what pins a row's key order."""
    return json.dumps(value, ensure_ascii=False)


# --- one example ------------------------------------------------------------------------------------


def test_the_user_turn_joins_instruction_and_context_with_a_newline():
    assert Example("Summarize.", "ok", "West Lake is in Hangzhou.").user == "Summarize.\nWest Lake is in Hangzhou."
    assert Example("Summarize.", "ok").user == "Summarize."  # no context: the instruction alone, no newline
    assert Example("Q").response == "" and Example("Q").input == "" and Example("Q").system is None


def test_the_prompt_is_the_system_turn_if_any_then_the_user_turn():
    assert Example("Q", "A", "ctx", "Be brief.").prompt() == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q\nctx"}]
    assert Example("Q", "A").prompt() == [{"role": "user", "content": "Q"}]
    assert Example("Q", "A", system="").prompt() == [{"role": "user", "content": "Q"}]  # an empty system prompt is none


# --- the SFT shapes ---------------------------------------------------------------------------------

FULL = Example("Name a lake.", "West Lake.", "in Hangzhou", "Be brief.")
BARE = Example("Name a lake.", "West Lake.")

ROWS = {  # fmt -> (row of FULL, row of BARE), as JSON text: the key order is part of the shape
    "alpaca": ('{"instruction": "Name a lake.", "input": "in Hangzhou", "output": "West Lake.", "system": "Be brief."}',
               '{"instruction": "Name a lake.", "input": "", "output": "West Lake."}'),
    "sharegpt": ('{"conversations": [{"from": "system", "value": "Be brief."}, '
                 '{"from": "human", "value": "Name a lake.\\nin Hangzhou"}, {"from": "gpt", "value": "West Lake."}]}',
                 '{"conversations": [{"from": "human", "value": "Name a lake."}, {"from": "gpt", "value": "West Lake."}]}'),
    "messages": ('{"messages": [{"role": "system", "content": "Be brief."}, '
                 '{"role": "user", "content": "Name a lake.\\nin Hangzhou"}, {"role": "assistant", "content": "West Lake."}]}',
                 '{"messages": [{"role": "user", "content": "Name a lake."}, {"role": "assistant", "content": "West Lake."}]}'),
    "prompts": ('{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a lake.\\nin Hangzhou"}]}',
                '{"prompt": [{"role": "user", "content": "Name a lake."}]}'),
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_each_format_carries_system_context_and_answer(fmt):
    full, bare = ROWS[fmt]
    assert dumped(X.shape(fmt, FULL)) == full
    assert dumped(X.shape(fmt, BARE)) == bare
    assert X.shape(fmt, Example("Name a lake.", "West Lake.", system="")) == json.loads(bare)  # "" is no system prompt


def test_an_instruction_alone_makes_a_prompts_row_only():
    assert X.shape("prompts", Example("Q", system="S")) == {"prompt": [{"role": "system", "content": "S"},
                                                                       {"role": "user", "content": "Q"}]}
    for fmt in ("alpaca", "sharegpt", "messages"):
        with pytest.raises(UsageError) as e:
            X.shape(fmt, Example("Q", "", "ctx", "S"))
        assert e.value.template == ("this output holds instructions without responses: answer them with --respond-with "
                                    "MODEL (or localaug run respond), or write them with --format prompts")


def test_no_responses_names_what_holds_them():
    assert str(X.no_responses("train.json")).startswith("train.json holds instructions without responses: ")
    assert isinstance(X.no_responses("x"), UsageError)


def test_dpo_is_not_an_sft_shape_and_an_unknown_format_is_named():
    with pytest.raises(UsageError) as e:
        X.shape("dpo", BARE)
    assert e.value.template == "dpo is a preference format: it is written from judged answers (a judge's grades or verdicts)"
    with pytest.raises(UsageError) as e:
        X.shape("orpo", BARE)
    assert e.value.template == "unknown output format 'orpo': use jsonl, alpaca, sharegpt, messages, prompts, dpo"


def test_the_format_lists():
    assert X.SFT_FORMATS == ("alpaca", "sharegpt", "messages", "prompts") and X.PREFERENCE_FORMATS == ("dpo",)


# --- the dpo row --------------------------------------------------------------------------------------

DPO_ROW = ('{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a lake.\\nin Hangzhou"}], '
           '"chosen": [{"role": "assistant", "content": "West Lake."}], "rejected": [{"role": "assistant", "content": "湖。"}], '
           '"chosen_message": {"role": "assistant", "content": "West Lake."}, '
           '"rejected_message": {"role": "assistant", "content": "湖。"}}')


def test_a_dpo_row_is_trl_conversational_with_single_messages_for_llamafactory():
    assert dumped(X.preference_shape(Preference(FULL, "West Lake.", "湖。"))) == DPO_ROW
    assert X.preference_shape(Preference(Example("Q"), "good", "bad")) == {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}],
        "chosen_message": {"role": "assistant", "content": "good"}, "rejected_message": {"role": "assistant", "content": "bad"}}


def test_exact_bytes_of_a_small_dpo_file_and_its_ranking_entry(tmp_path: Path):
    out = tmp_path / "pref.jsonl"
    rows = [X.preference_shape(Preference(FULL, "West Lake.", "湖。")),
            X.preference_shape(Preference(Example("Q"), "good", "bad"))]
    assert dataio.write_rows(iter(rows), out) == 2
    second = ('{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}], '
              '"rejected": [{"role": "assistant", "content": "bad"}], "chosen_message": {"role": "assistant", "content": "good"}, '
              '"rejected_message": {"role": "assistant", "content": "bad"}}')
    assert out.read_bytes() == (DPO_ROW + "\n" + second + "\n").encode("utf-8")
    assert dataio.write_dataset_info(out, "dpo") == tmp_path / "dataset_info.json"
    assert (tmp_path / "dataset_info.json").read_bytes() == (
        '{\n  "pref": {\n    "file_name": "pref.jsonl",\n    "formatting": "sharegpt",\n    "ranking": true,\n'
        '    "columns": {\n      "messages": "prompt",\n      "chosen": "chosen_message",\n      "rejected": "rejected_message"\n'
        '    },\n    "tags": {\n      "role_tag": "role",\n      "content_tag": "content",\n      "user_tag": "user",\n'
        '      "assistant_tag": "assistant",\n      "system_tag": "system"\n    }\n  }\n}\n').encode()


# --- dataset_info.json entries ------------------------------------------------------------------------

CHAT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
             "system_tag": "system"}
ENTRIES = {
    "alpaca": {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "system_tag": "system"}},
    "messages": {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": CHAT_TAGS},
    "dpo": {"formatting": "sharegpt", "ranking": True,
            "columns": {"messages": "prompt", "chosen": "chosen_message", "rejected": "rejected_message"}, "tags": CHAT_TAGS},
}


@pytest.mark.parametrize("fmt", sorted(ENTRIES))
def test_the_dataset_info_entry_of_each_format(fmt):
    assert dumped(X.dataset_info_entry(fmt)) == dumped(ENTRIES[fmt])
    if fmt != "alpaca":  # only alpaca has a system column to name; the others carry a system turn
        assert dumped(X.dataset_info_entry(fmt, system_column=True)) == dumped(ENTRIES[fmt])
    with pytest.raises(KeyError):
        X.dataset_info_entry("prompts")  # TRL's format: LLaMA-Factory has no entry for it


def test_an_alpaca_file_with_a_system_prompt_names_its_column_and_only_that_file():
    assert X.dataset_info_entry("alpaca", system_column=True) == {
        "formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}}
    assert X.dataset_info_entry("alpaca") == ENTRIES["alpaca"]  # the table itself was not changed
    assert X.DATASET_INFO["alpaca"]["columns"] == ENTRIES["alpaca"]["columns"]
    entry = X.dataset_info_entry("messages")
    entry["columns"]["messages"] = "changed"
    entry["tags"]["role_tag"] = "changed"
    assert X.dataset_info_entry("messages") == ENTRIES["messages"]  # each entry is a copy
