"""Prompt strings typed out byte for byte from the formats the family was trained on (MISSION.md:
Qwen2 ChatML with its default system turn, Response-Exp ``### Instruction`` / ``### Response``
blocks), teacher prompts, reply parsing, and the pairwise judge's prompt and verdicts.

Fast and pure: these guard ``localaug/family/prompts.py`` and ``localaug/family/judging.py`` in
tools/mutation.py (the transformers and llama.cpp cross-checks are in tests/test_prompts.py).
"""

from __future__ import annotations

import pytest

from localaug.core.errors import LocalaugError, ReplyParseError, UsageError
from localaug.family import judging, prompts, teacher_pool
from localaug.family.prompts import Pair

SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


# --- Qwen2 ChatML ---------------------------------------------------------------------------------


def test_chatml_with_the_default_system_turn():
    assert prompts.qwen2_chatml([{"role": "user", "content": "Create a travel guide for Hangzhou."}]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nCreate a travel guide for Hangzhou.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert prompts.qwen2_chatml([{"role": "user", "content": "写一首关于秋天的诗。\n要求：押韵"}]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n写一首关于秋天的诗。\n要求：押韵<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_chatml_with_a_system_turn_and_history_and_without_generation_prompt():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}]
    assert prompts.qwen2_chatml(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>assistant\n")
    assert prompts.qwen2_chatml(msgs, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n")
    assert prompts.qwen2_chatml([]) == SYS + "<|im_start|>assistant\n"
    assert prompts.qwen2_chatml([], add_generation_prompt=False) == SYS
    # a system turn later in the conversation is not the first one: the default still leads
    assert prompts.qwen2_chatml([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], False) == (
        SYS + "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n")


@pytest.mark.parametrize("fmt", ["qwen2-chatml", "qwen2-response-pairs"])
def test_family_prompt(fmt):
    assert prompts.family_prompt(fmt, "描述水循环。") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n描述水循环。<|im_end|>\n<|im_start|>assistant\n")


def test_family_prompt_unknown_format():
    with pytest.raises(LocalaugError) as e:
        prompts.family_prompt("alpaca", "x")
    assert str(e.value) == "unknown prompt format 'alpaca'; known: qwen2-chatml, qwen2-response-pairs"


# --- Response-Exp pairs ----------------------------------------------------------------------------


def test_render_pairs_byte_for_byte():
    pairs = [Pair("  Name three primary colors.\n", " Red, yellow and blue. "), Pair("2加2等于几？", "4")]
    assert prompts.render_pairs(pairs) == (
        "### Instruction\nName three primary colors.\n\n### Response\nRed, yellow and blue.\n\n"
        "### Instruction\n2加2等于几？\n\n### Response\n4")
    assert prompts.render_pairs([Pair("Q", "A")]) == "### Instruction\nQ\n\n### Response\nA"
    assert prompts.render_pairs([]) == ""


@pytest.mark.parametrize(("reply", "pairs"), [
    ("### Instruction\nQ1\n\n### Response\nA1\n\n### Instruction\nQ2\n\n### Response\nA2\nmore",
     [Pair("Q1", "A1"), Pair("Q2", "A2\nmore")]),
    ("### Instruction:\nName a color.\n### Response:\nRed.", [Pair("Name a color.", "Red.")]),
    ("```markdown\n### Instruction\n问题\n\n### Response\n回答\n```", [Pair("问题", "回答")]),
    ("  ###Instruction \n  Q \n ###  Response :\n  A  ", [Pair("Q", "A")]),
    ("Here you go:\n### Instruction\nQ\n### Response\nA\n### Note\nignored", [Pair("Q", "A")]),
    ("### Instruction\nQ1\n### Response\n \n### Instruction\nQ2\n### Response\nA2", [Pair("Q2", "A2")]),
])
def test_parse_pairs(reply, pairs):
    assert prompts.parse_pairs(reply) == pairs


def test_parse_pairs_error_quotes_the_reply_start():
    reply = "  Sure!\nHere is a new pair:\n" + "x" * 100
    with pytest.raises(ReplyParseError) as e:
        prompts.parse_pairs(reply)
    head = ("Sure! Here is a new pair: " + "x" * 100)[:80]
    assert str(e.value) == f"reply has no '### Instruction' / '### Response' pair: {head!r}"
    with pytest.raises(ReplyParseError, match=r"^reply has no '### Instruction' / '### Response' pair: ''$"):
        prompts.parse_pairs("")


def test_json_records():
    assert prompts.json_records('[{"a": 1}, 2]') == [{"a": 1}, 2]
    assert prompts.json_records('{"a": 1}\n\n  \n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
    assert prompts.json_records('{"a": 1}\r\n{"b": 2}\r\n') == [{"a": 1}, {"b": 2}]
    # U+2028 / U+2029 / U+0085 are text inside a JSON string, not line ends
    assert prompts.json_records('{"a": "x\u2028y\u2029z\x85w"}\n') == [{"a": "x\u2028y\u2029z\x85w"}]


@pytest.mark.parametrize(("body", "line", "column"), [
    ('{"a": 1}\n{"b": }\n', 2, 7),
    ('{"a": 1}\n\n\n  {oops\n{"c": 3}', 4, 4),
    ('{oops', 1, 2),
    ('[1, 2,\n oops]', 2, 2),
])
def test_json_records_errors_name_the_line_of_the_file(body, line, column):
    import json

    with pytest.raises(json.JSONDecodeError) as e:
        prompts.json_records(body)
    assert (e.value.lineno, e.value.colno) == (line, column)
    assert str(e.value).startswith(("Expecting value: line ", "Expecting property name enclosed in double quotes: line "))
    assert str(e.value).endswith(f": line {line} column {column} (char {e.value.pos})")


def test_read_seed_pairs_formats():
    assert prompts.read_seed_pairs('[{"instruction": " Q ", "response": " A "}]') == [Pair("Q", "A")]
    jsonl = ('{"instruction": "Q1", "output": "A1"}\n'
             '{"instruction": "Sum these", "input": "1 2", "output": "3"}\n'
             '{"instruction": "Q3", "input": "", "response": "A3", "output": "ignored"}\n'
             '{"instruction": "Q4", "response": "", "output": "A4"}\n'
             '{"instruction": 42, "response": 7}\n')
    assert prompts.read_seed_pairs(jsonl) == [Pair("Q1", "A1"), Pair("Sum these\n\n1 2", "3"), Pair("Q3", "A3"),
                                              Pair("Q4", "A4"), Pair("42", "7")]
    assert prompts.read_seed_pairs("\n ### Instruction\nQ\n\n### Response\nA\n") == [Pair("Q", "A")]
    assert prompts.read_seed_pairs('{"instruction": "Line one\u2028line two", "response": "A"}') == [
        Pair("Line one\u2028line two", "A")]


@pytest.mark.parametrize(("text", "message"), [
    ("", "no seed pairs given: pass a JSON/JSONL file of {instruction, response} or ### blocks"),
    ("  \n ", "no seed pairs given: pass a JSON/JSONL file of {instruction, response} or ### blocks"),
    ('{"instruction": "Q", "response": "A"}\n{broken', "seed pairs are not valid JSON/JSONL (line 2): fix the file or use ### blocks"),
    ('[{"instruction": "Q", "response": "A"}, "x"]', "seed record 2 needs 'instruction' and 'response' (or Alpaca 'output')"),
    ('{"instruction": "Q"}', "seed record 1 needs 'instruction' and 'response' (or Alpaca 'output')"),
    ('{"response": "A"}', "seed record 1 needs 'instruction' and 'response' (or Alpaca 'output')"),
    ('{"instruction": "", "response": "A"}', "seed record 1 needs 'instruction' and 'response' (or Alpaca 'output')"),
])
def test_read_seed_pairs_errors(text, message):
    with pytest.raises(ReplyParseError) as e:
        prompts.read_seed_pairs(text)
    assert str(e.value) == message


# --- teacher mode ----------------------------------------------------------------------------------


REFINE_SYSTEM = (
    "You rewrite instructions so that an AI assistant answers them in more detail and more "
    "truthfully. Keep the user's intent, language and all given facts; make the request "
    "specific: name the aspects to cover, the structure, and the level of detail. Reply with "
    "the rewritten instruction only, in the same language as the original, with no preamble.")
EXPAND_SYSTEM = (
    "You write new instructions for training AI assistants. Given one instruction, write ONE "
    "new instruction of the same task type but about different content. Write it in the same "
    "language as the given instruction. Reply with the new instruction only, with no preamble.")
PAIRS_SYSTEM = (
    "You write training data for AI assistants. Given example instruction-response pairs, write "
    "ONE new pair of the same task type about different content, in exactly this shape:\n"
    "### Instruction\n<the instruction>\n\n### Response\n<the response>")


def test_teacher_messages_english_refine():
    ex = teacher_pool.REFINE
    assert prompts.teacher_messages("refine", "Describe the water cycle.") == [
        {"role": "system", "content": REFINE_SYSTEM},
        {"role": "user", "content": ex[0][0]}, {"role": "assistant", "content": ex[0][1]},
        {"role": "user", "content": ex[1][0]}, {"role": "assistant", "content": ex[1][1]},
        {"role": "user", "content": "Describe the water cycle."},
    ]


def test_teacher_messages_chinese_expand_and_pairs():
    zh = teacher_pool.EXPAND_ZH
    msgs = prompts.teacher_messages("expand", "描述水循环。")
    assert msgs == [
        {"role": "system", "content": EXPAND_SYSTEM},
        {"role": "user", "content": zh[0][0]}, {"role": "assistant", "content": zh[0][1]},
        {"role": "user", "content": zh[1][0]}, {"role": "assistant", "content": zh[1][1]},
        {"role": "user", "content": "描述水循环。"},
    ]
    turn = "### Instruction\n2加2等于几？\n\n### Response\n4"
    pz = teacher_pool.PAIRS_ZH
    assert prompts.teacher_messages("pairs", turn) == [
        {"role": "system", "content": PAIRS_SYSTEM},
        {"role": "user", "content": pz[0][0]}, {"role": "assistant", "content": pz[0][1]},
        {"role": "user", "content": pz[1][0]}, {"role": "assistant", "content": pz[1][1]},
        {"role": "user", "content": turn},
    ]


def test_teacher_messages_overrides_and_respond():
    assert prompts.teacher_messages("expand", "Q?", examples=[], system="Be terse.") == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Q?"}]
    assert prompts.teacher_messages("expand", "Q?", examples=[("a", "b")]) == [
        {"role": "system", "content": EXPAND_SYSTEM}, {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "Q?"}]
    assert prompts.teacher_messages("respond", "What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]
    assert prompts.teacher_messages("respond", "What is 2+2?", system="Answer in French.") == [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is 2+2?"}]
    assert prompts.teacher_messages("respond", "Q", system="") == [{"role": "user", "content": "Q"}]
    with pytest.raises(LocalaugError) as e:
        prompts.teacher_messages("summarize", "Q")
    assert str(e.value) == "unknown task 'summarize'; use refine, expand, pairs or respond"


def test_choose_examples_unknown_task():
    with pytest.raises(LocalaugError) as e:
        prompts.choose_examples("respond", "Q")
    assert str(e.value) == "unknown task 'respond'; use refine, expand or pairs"


def test_choose_examples_resemblance_threshold_and_order():
    # ROUGE-L of "a b c d" with a one-word example sharing a word: 2*1/(4+1) = 0.4 exactly
    pool = (("a", "zz"), ("q", "b"), ("x", "y"), ("u", "v"), ("s", "t"))
    assert prompts.choose_examples("expand", "a b c d", pool) == [("x", "y"), ("u", "v")]
    # just below 0.4 (one word shared with a two-word example and a four-word input: 2/6 = 0.33): shown
    pool2 = (("a zz", "yy"), ("x", "y"))
    assert prompts.choose_examples("expand", "a b c d", pool2) == [("a zz", "yy"), ("x", "y")]
    assert prompts.choose_examples("expand", "a b c d", pool, shots=1) == [("x", "y")]
    assert prompts.choose_examples("expand", "a b c d", pool, shots=3) == [("x", "y"), ("u", "v"), ("s", "t")]
    # examples in the input's language go last (small models lean on the last ones)
    mixed = (("Name a river.", "Name a lake."), ("写一首诗。", "写一篇散文。"))
    assert prompts.choose_examples("expand", "Plan a trip to Kyoto.", mixed) == [mixed[1], mixed[0]]
    assert prompts.choose_examples("expand", "描述水循环。", mixed) == [mixed[0], mixed[1]]
    assert prompts.choose_examples("expand", "描述水循环。", mixed[::-1]) == [mixed[0], mixed[1]]
    # the language of an example is its input's (a translation example may answer in another)
    translations = (("Translate 'thank you' into Chinese.", "谢谢。"), ("把“再见”翻译成英文。", "Goodbye."))
    assert prompts.choose_examples("expand", "Plan a trip to Kyoto.", translations) == [translations[1], translations[0]]


def test_choose_examples_default_pool_by_language():
    assert prompts.choose_examples("refine", "Describe the water cycle.") == list(teacher_pool.REFINE[:2])
    assert prompts.choose_examples("refine", "描述水循环。") == list(teacher_pool.REFINE_ZH[:2])
    # an input like the first example gets the next ones
    first = teacher_pool.EXPAND[0][0]
    assert prompts.choose_examples("expand", first) == [teacher_pool.EXPAND[1], teacher_pool.EXPAND[2]]
    # the output resembling the input is enough to skip an example
    assert prompts.choose_examples("expand", teacher_pool.EXPAND[0][1]) == [teacher_pool.EXPAND[1], teacher_pool.EXPAND[2]]


@pytest.mark.parametrize(("text", "cjk"), [
    ("\u3400", True), ("\u33ff", False), ("\u9fff", True), ("\ua000", False),
    ("\uf900", True), ("\uf8ff", False), ("\ufaff", True), ("\ufb00", False),
    ("abc 写", True), ("abc", False), ("", False), ("こんにちは", False),
])
def test_has_cjk(text, cjk):
    assert prompts.has_cjk(text) == cjk


def test_read_examples():
    text = ('{"input": " a ", "output": " b "}\n{"instruction": "c", "response": "d"}\n'
            '{"input": "e", "instruction": "ignored", "output": "f", "response": "ignored"}\n')
    assert prompts.read_examples(text) == (("a", "b"), ("c", "d"), ("e", "f"))
    assert prompts.read_examples('[{"input": "a", "output": "b"}]') == (("a", "b"),)


@pytest.mark.parametrize(("text", "message"), [
    ("not json", 'mine.jsonl is not valid JSON/JSONL (line 1): give {"input", "output"} objects'),
    ('{"input": "a", "output": "b"}\n{"input": ', 'mine.jsonl is not valid JSON/JSONL (line 2): give {"input", "output"} objects'),
    ('{"input": "a"}', 'mine.jsonl: example 1 needs non-empty "input" and "output" strings'),
    ('{"input": "a", "output": "b"}\n["a", "b"]', 'mine.jsonl: example 2 needs non-empty "input" and "output" strings'),
    ('{"input": "a", "output": "  "}', 'mine.jsonl: example 1 needs non-empty "input" and "output" strings'),
    ('{"input": 1, "output": "b"}', 'mine.jsonl: example 1 needs non-empty "input" and "output" strings'),
    ("[]", 'mine.jsonl holds no examples: give {"input", "output"} objects'),
    ("  ", 'mine.jsonl holds no examples: give {"input", "output"} objects'),
])
def test_read_examples_errors(text, message):
    with pytest.raises(UsageError) as e:
        prompts.read_examples(text, "mine.jsonl")
    assert str(e.value) == message


def test_read_examples_default_source_name():
    with pytest.raises(UsageError, match=r"^examples holds no examples"):
        prompts.read_examples("[]")


def test_render_chat_template_passes_tokens_and_generation_prompt():
    t = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
         "{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}")
    msgs = [{"role": "user", "content": "你好"}]
    assert prompts.render_chat_template(t, msgs) == "[user]你好[assistant]"
    assert prompts.render_chat_template(t, msgs, bos_token="<s>", eos_token="</s>", add_generation_prompt=False) == (
        "<s>[user]你好</s>")


# --- reply cleaning --------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "expected"), [
    ("```markdown\nWrite a poem.\n```", "Write a poem."),
    ("```\nWrite a poem.\n```  \n", "Write a poem."),
    ("```text-only\n  Write a poem.  \n```", "Write a poem."),
    ("```Write a poem.```", "Write a poem."),  # no language tag on a single line
    ("```\n\n  Write a poem.\n```", "Write a poem."),
    ("Rewritten instruction: Write a poem.", "Write a poem."),
    ("**Improved version**: Write a poem.", "Write a poem."),
    ("prompt: Write a poem.", "Write a poem."),
    ("Instruction：写一首诗。", "写一首诗。"),
    ("Expanded prompt:**Write a poem.**", "Write a poem.**"),
    ("Refined: Refined: Write a poem.", "Refined: Write a poem."),
    ("New prompt - Write a poem.", "New prompt - Write a poem."),
    ("'Write a poem.'", "Write a poem."),
    ("「写一首诗」", "写一首诗"),
    ("«Écris un poème.»", "Écris un poème."),
    ('"  Write a poem.  "', "Write a poem."),
    ('"Say "hi" twice."', '"Say "hi" twice."'),
    ("“Write a poem.\"", "“Write a poem.\""),
    ('"', '"'),
    ('""', ""),
    ('```\nRefined: "Write a poem."\n```', "Write a poem."),
])
def test_clean_instruction(reply, expected):
    assert prompts.clean_instruction(reply) == expected


# --- the pairwise judge --------------------------------------------------------------------------------


JUDGE_SYSTEM_DETAIL = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. You should choose the assistant that follows the user's instructions and answers "
    "the user's question better. Your evaluation should consider the level of detail, depth and completeness of the "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. Avoid any "
    "position biases and ensure that the order in which the responses were presented does not influence your "
    "decision. Do not allow the length of the responses to influence your evaluation. Do not favor certain names of "
    "the assistants. Be as objective as possible. After providing your explanation, output your final verdict by "
    "strictly following this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and "
    "\"[[C]]\" for a tie.")


def test_judge_messages_byte_for_byte():
    msgs = judging.messages("detail", "写一首诗。", "Answer one.", "答案二")
    assert msgs == [
        {"role": "system", "content": JUDGE_SYSTEM_DETAIL},
        {"role": "user", "content": (
            "[User Question]\n写一首诗。\n\n[The Start of Assistant A's Answer]\nAnswer one.\n"
            "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n答案二\n"
            "[The End of Assistant B's Answer]")},
    ]
    truth = judging.messages("truthfulness", "q", "a", "b")[0]["content"]
    assert "consider the accuracy and truthfulness of the responses: no invented facts, numbers or claims. Begin" in truth
    helpful = judging.messages("helpfulness", "q", "a", "b")[0]["content"]
    assert ("consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of "
            "their responses. Begin") in helpful


def test_judge_unknown_aspect():
    with pytest.raises(ValueError) as e:
        judging.messages("style", "q", "a", "b")
    assert str(e.value) == "unknown aspect 'style': use detail, truthfulness, helpfulness"


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A is better. [[A]]", "A"),
    ("[[B]]", "B"),
    ("a tie: [[C]]", "C"),
    ("First I thought [[A]], but in the end [[B]]", "B"),
    ("[[C]] [[A]]", "A"),
    ("no verdict here", None),
    ("", None),
    ("[[a]]", None),
    ("[A]", None),
    ("[[D]]", None),
    ("[[ A ]]", None),
    ("[[AB]] [[B]]", "B"),
])
def test_verdict(reply, verdict):
    assert judging.verdict(reply) == verdict


@pytest.mark.parametrize(("first", "second", "combined"), [
    # first: A shown first; second: B shown first, so its "A" means B
    ("A", "A", "tie"),   # the first-shown answer both times: position bias, no preference
    ("A", "B", "A"),     # A preferred in both orders
    ("A", "C", "tie"),
    ("B", "A", "B"),     # B preferred in both orders
    ("B", "B", "tie"),
    ("B", "C", "tie"),
    ("C", "A", "tie"),
    ("C", "B", "tie"),
    ("C", "C", "tie"),
    (None, "B", "tie"),
    ("A", None, "tie"),
    (None, None, "tie"),
    (None, "A", "tie"),
    ("B", None, "tie"),
])
def test_combine_both_orders(first, second, combined):
    assert judging.combine(first, second) == combined
