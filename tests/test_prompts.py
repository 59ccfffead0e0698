"""Prompt formats: byte-exact against transformers' chat template, token-exact through llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from localaug.core.errors import ReplyParseError, TemplateRenderError, UsageError
from localaug.family import prompts
from localaug.family.prompts import Pair
from localaug.store.gguf_info import read_metadata

CONVERSATIONS = [
    [{"role": "user", "content": "Create a travel guide for Hangzhou."}],
    [{"role": "user", "content": "写一首关于秋天的诗。\n要求：押韵 🍂"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  leading and trailing spaces  "}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "def f(x):\n    return x**2"},
    ],
]


@pytest.fixture(scope="module")
def hf_tokenizer(qwen2_tied: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen2_tied)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chatml_equals_the_qwen2_instruct_template(hf_tokenizer, messages) -> None:
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompts.qwen2_chatml(messages) == expected


def test_family_prompt_has_the_default_system_turn() -> None:
    p = prompts.family_prompt("qwen2-chatml", "Create a travel guide for Hangzhou.")
    assert p == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nCreate a travel guide for Hangzhou.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_family_prompt_tokenizes_like_transformers(hf_tokenizer, converted) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(converted("tied", "Q8_0")), vocab_only=True, verbose=False)
    for messages in CONVERSATIONS:
        text = prompts.qwen2_chatml(messages)
        expected = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(expected, dict) or hasattr(expected, "keys"):
            expected = expected["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == list(expected)


def test_gguf_chat_template_renders_in_the_sandbox_like_chatml(converted) -> None:
    meta, _ = read_metadata(converted("tied", "Q8_0"))
    for messages in CONVERSATIONS:
        assert prompts.render_chat_template(meta["tokenizer.chat_template"], messages) == prompts.qwen2_chatml(messages)


def test_sandbox_refuses_template_code_execution() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateRenderError):
        prompts.render_chat_template(evil, [{"role": "user", "content": "x"}])
    with pytest.raises(TemplateRenderError):
        prompts.render_chat_template("{{ raise_exception('no system role') }}", [])


def test_teacher_messages_carry_examples_in_the_inputs_language() -> None:
    for task, en, zh in (("refine", "Describe the water cycle.", "描述水循环。"),
                         ("expand", "Describe the water cycle.", "描述水循环。"),
                         ("pairs", "### Instruction\nWhat is 2+2?\n\n### Response\n4", "### Instruction\n2加2等于几？\n\n### Response\n4")):
        for text, cjk in ((en, False), (zh, True)):
            msgs = prompts.teacher_messages(task, text)
            assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": text}
            shots = msgs[1:-1]
            assert [m["role"] for m in shots] == ["user", "assistant"] * 2  # two examples
            assert all(any("\u4e00" <= ch <= "\u9fff" for ch in m["content"]) == cjk for m in shots), (task, text)


@pytest.mark.parametrize("task", ["refine", "expand", "pairs"])
def test_an_example_is_never_shown_for_its_own_input_or_a_near_copy(task) -> None:
    from localaug.family import teacher_pool
    from localaug.family.text import rouge_l

    latin, cjk = teacher_pool.POOL[task]
    default = prompts.choose_examples(task, "Tell me something about the ocean tides.")
    for shown_input, shown_output in default + prompts.choose_examples(task, "告诉我一些关于潮汐的知识。"):
        for seed in (shown_input, shown_output, shown_input.upper() + " please", shown_input[: len(shown_input) * 3 // 4]):
            chosen = prompts.choose_examples(task, seed)
            assert len(chosen) == 2
            for ex in chosen:
                assert rouge_l(ex[0], seed) < prompts.RESEMBLES and rouge_l(ex[1], seed) < prompts.RESEMBLES, (seed, ex)
    # unrelated inputs of one language share the same examples (and so the same prompt prefix)
    assert prompts.choose_examples(task, "Explain how tides work.") == prompts.choose_examples(task, "Name a river.")


def test_your_own_system_prompt_and_examples(tmp_path) -> None:
    mine = (("Say hello.", "Say hello in three languages."), ("Sort a list.", "Sort a list of names by length."))
    msgs = prompts.teacher_messages("refine", "Sort a list of numbers.", prompts.choose_examples("refine", "Sort a list of numbers.", mine),
                                    system="Be terse.")
    assert msgs[0] == {"role": "system", "content": "Be terse."}
    assert [m["content"] for m in msgs[1:-1]] == ["Say hello.", "Say hello in three languages."]  # "Sort a list." resembles it
    f = tmp_path / "ex.jsonl"
    f.write_text('{"input": "a", "output": "b"}\n{"instruction": "c", "response": "d"}\n')
    assert prompts.read_examples(f.read_text()) == (("a", "b"), ("c", "d"))
    for bad in ('{"input": "a"}', "not json", "[]"):
        with pytest.raises(UsageError):
            prompts.read_examples(bad)


def test_pairs_round_trip_and_unparseable_reply_is_reported() -> None:
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue."), Pair("2+2?", "4\n\nIt is four.")]
    assert prompts.parse_pairs(prompts.render_pairs(seeds)) == seeds
    assert prompts.parse_pairs("```\n### Instruction:\nQ\n### Response:\nA\n```") == [Pair("Q", "A")]
    with pytest.raises(ReplyParseError, match="no '### Instruction'"):
        prompts.parse_pairs("Sure! Here is a new pair: what is love?")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Refined: Write a poem.", "Write a poem."),
        ('**Refined prompt:** "Write a poem about autumn."', "Write a poem about autumn."),
        ("```\nList three uses of Python.\n```", "List three uses of Python."),
        ("“写一首诗”", "写一首诗"),
        ("New instruction: Plan a trip to Kyoto.", "Plan a trip to Kyoto."),
        ("Explain: why is the sky blue?", "Explain: why is the sky blue?"),
        ('Write "hello" in capitals.', 'Write "hello" in capitals.'),
    ],
)
def test_clean_instruction(reply: str, expected: str) -> None:
    assert prompts.clean_instruction(reply) == expected
