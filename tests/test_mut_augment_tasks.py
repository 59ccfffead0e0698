"""The one sampling loop (``tasks.Draw``) pinned by hand: how many samples it asks for, the seed of
each, which sample is kept or rejected and for which reason (counted exactly), the shortfall, and
the echo rules that differ between refine (one sample, echo at ROUGE-L 0.9) and expand/pairs
(duplicate filter seeded with the input, echo at the near-duplicate threshold).

Generations are built by hand (the text a model would have written), so every expected value is
typed here. ``Replay`` stands in for ``runtime.Engine`` only where the drivers (``run_sequential``,
``refine``, ``expand_iter``) are checked for what they ask of an engine (prompt, seed per sample,
stop strings); the same drivers run on real llama.cpp models in tests/test_batch.py and
tests/test_jobs.py. Fast and pure: these guard ``localaug/augment/tasks.py`` in tools/mutation.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from localaug.augment import tasks
from localaug.augment.filters import DedupFilter, ExactIndex, QualityRules
from localaug.augment.tasks import Draw, ExpandResult, default_cap
from localaug.core.errors import UsageError
from localaug.family import teacher_pool
from localaug.family.prompts import Pair
from localaug.family.styles import PromptStyle
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Generation

FAMILY = PromptStyle("qwen2-chatml")
RESPONSE_EXP = PromptStyle("qwen2-response-pairs")
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEACHER = PromptStyle("teacher", CHATML, stop=("<|im_end|>",))

SEED = "Write a poem about the sea."
SEA_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\nWrite a poem about the sea.<|im_end|>\n<|im_start|>assistant\n")


def gen(text: str, finish: str = "stop", ntok: int = 3) -> Generation:
    return Generation(text, list(range(ntok)), finish, 12, 0.5, 0.1)  # type: ignore[arg-type]


def drive(draw: Draw, replies: list[Generation]) -> list[tuple[int, int | None]]:
    """Feed ``replies`` one at a time while the draw wants more: (want, seed) before each."""
    seen = []
    for reply in replies:
        if not draw.want:
            break
        seen.append((draw.want, draw.sampling_for_next().seed))
        draw.take(reply)
    return seen


# --- caps and the result ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "cap"), [(1, 5), (2, 6), (3, 9), (4, 12), (10, 30)])
def test_default_cap(n, cap):
    assert default_cap(n) == cap  # max(3n, n + 4)


def test_shortfall():
    assert ExpandResult(["a"], 3, 5).shortfall == 2
    assert ExpandResult(["a", "b", "c"], 3, 3).shortfall == 0
    assert ExpandResult(["a", "b"], 1, 3).shortfall == 0
    assert ExpandResult([], 1, 0).shortfall == 1
    r = ExpandResult([], 2, 0)
    assert r.rejected == {} and r.generations == []


@pytest.mark.parametrize("n", [0, -1])
def test_n_below_one_is_a_usage_error(n):
    with pytest.raises(UsageError) as e:
        Draw(FAMILY, "expand", SEED, n, SamplingParams(seed=1))
    assert str(e.value) == "n must be at least 1"
    assert e.value.params == ["n"]


# --- expand -------------------------------------------------------------------------------------------


def test_expand_n1_prompt_seeds_and_echo():
    d = Draw(FAMILY, "expand", SEED, 1, SamplingParams(seed=100, temperature=0.3))
    assert d.prompt == SEA_PROMPT
    assert (d.n, d.cap, d.want) == (1, 5, 1)
    assert d.last is None
    nxt = d.sampling_for_next()
    assert nxt.seed == 100 and nxt.temperature == 0.3 and nxt.top_k == 50
    assert d.take(gen("write a POEM about the sea!")) == []  # the input itself
    assert d.result.rejected == {"echo": 1}
    assert (d.want, d.sampling_for_next().seed) == (1, 101)
    assert d.take(gen("  List three facts about volcanoes.\n", ntok=7)) == ["List three facts about volcanoes."]
    assert d.want == 0
    r = d.result
    assert (r.items, r.requested, r.samples, r.shortfall) == (["List three facts about volcanoes."], 1, 2, 0)
    assert d.completion_tokens == 10
    assert d.last is r.generations[-1] and len(r.generations) == 2
    assert d.last.text.startswith("  List")


def test_expand_cap_shortfall_and_reasons_counted_exactly():
    d = Draw(FAMILY, "expand", SEED, 3, SamplingParams(seed=7), max_samples=5)
    replies = [
        gen("Name three rivers in Europe."),
        gen("name three rivers in europe"),          # duplicate of an accepted one
        gen("I'm sorry, but I can't help with that."),
        gen("Describe a volcano erupting", "length"),  # cut at max_tokens
        gen("Name three long rivers in Europe."),    # near duplicate (ROUGE-L >= 0.7)
        gen("Never asked for: the cap is reached."),
    ]
    assert drive(d, replies) == [(3, 7), (2, 8), (2, 9), (2, 10), (1, 11)]
    r = d.result
    assert d.want == 0 and r.samples == 5
    assert r.items == ["Name three rivers in Europe."]
    assert r.rejected == {"duplicate": 1, "refusal": 1, "truncated": 1, "near-duplicate": 1}
    assert r.shortfall == 2 and r.requested == 3


def test_expand_default_cap_all_rejected():
    d = Draw(FAMILY, "expand", SEED, 2, SamplingParams(seed=0))
    assert d.cap == 6
    assert drive(d, [gen(SEED)] * 10) == [(2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (1, 5)]
    assert d.result.rejected == {"echo": 6}
    assert d.result.shortfall == 2 and d.result.samples == 6


@pytest.mark.parametrize(("n", "max_samples", "wants"), [
    (2, 2, [2, 1]),      # exactly n samples allowed, all accepted
    (2, 1, [1]),         # fewer samples than n: want is bounded by the cap
    (3, 4, [3, 2, 1]),
    (1, None, [1]),
])
def test_want_is_bounded_by_n_and_cap(n, max_samples, wants):
    d = Draw(FAMILY, "expand", SEED, n, SamplingParams(seed=3), max_samples=max_samples)
    texts = ["Name three rivers.", "Plan a weekend in Kyoto.", "Explain how vaccines work."]
    got = drive(d, [gen(t) for t in texts])
    assert [w for w, _ in got] == wants
    assert d.want == 0
    assert d.result.items == texts[:len(wants)]


def test_want_when_samples_left_are_fewer_than_items_missing():
    d = Draw(FAMILY, "expand", SEED, 3, SamplingParams(seed=3), max_samples=4)
    d.take(gen(SEED))
    d.take(gen(SEED))
    assert d.want == 2  # 3 missing, 2 samples left
    d.take(gen("Plan a weekend in Kyoto."))
    assert d.want == 1  # 2 missing, 1 sample left


def test_the_draws_rules_judge_every_sample():
    rules = QualityRules(min_chars=20, refusals=False)
    d = Draw(FAMILY, "expand", SEED, 3, SamplingParams(seed=3), rules=rules)
    assert d.refined is None
    assert d.take(gen("Plan a weekend.")) == []
    assert d.take(gen("I'm sorry, I can't help with that.")) == ["I'm sorry, I can't help with that."]
    assert d.result.rejected == {"too-short": 1}
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue.")]
    p = Draw(RESPONSE_EXP, "pairs", seeds, 2, SamplingParams(seed=4), rules=rules)
    p.take(gen(block(("Name two oceans.", "Pacific."), ("Name two oceans on Earth, please.", "I'm sorry, I can't."))))
    assert p.result.rejected == {"too-short": 1}
    assert p.result.items == [Pair("Name two oceans on Earth, please.", "I'm sorry, I can't.")]


def test_seed_none_stays_random():
    d = Draw(FAMILY, "expand", SEED, 2, SamplingParams())
    assert d.sampling_for_next().seed is None
    d.take(gen("Plan a weekend in Kyoto."))
    assert d.sampling_for_next().seed is None


def test_expand_threshold_is_the_near_duplicate_threshold():
    base = "a b c d e f g h i j"
    at = "a b c d e f g x y z"  # ROUGE-L exactly 0.7 with base
    d = Draw(FAMILY, "expand", base, 2, SamplingParams(seed=1), threshold=0.7)
    d.take(gen(at))
    assert d.result.rejected == {"echo": 1}  # an echo of the input at exactly the threshold
    loose = Draw(FAMILY, "expand", base, 2, SamplingParams(seed=1), threshold=0.71)
    assert loose.take(gen(at)) == [at]


def test_job_wide_memory_only_holds_accepted_texts():
    seen = ExactIndex()
    first = Draw(FAMILY, "expand", SEED, 3, SamplingParams(seed=1), seen=seen)
    for text in ("Name three rivers.", "Name three rivers", "Hi", "Plan a trip to Kyoto."):
        first.take(gen(text))
    assert first.result.items == ["Name three rivers.", "Plan a trip to Kyoto."]
    assert first.result.rejected == {"duplicate": 1, "too-short": 1}
    assert len(seen) == 2  # a rejected text is never remembered
    second = Draw(FAMILY, "expand", "Describe the water cycle.", 2, SamplingParams(seed=1), seen=seen)
    second.take(gen("NAME three rivers!"))
    assert second.result.rejected == {"duplicate": 1}
    assert second.take(gen("Explain how tides work.")) == ["Explain how tides work."]
    assert len(seen) == 3


def test_check_text_order():
    rules = QualityRules(min_chars=5)
    seen = ExactIndex()
    dedup = DedupFilter(0.7)
    dedup.add_reference([SEED])
    assert tasks.check_text("Hi", dedup, rules, seen) == "too-short"
    assert tasks.check_text(SEED, dedup, rules, seen) == "echo"
    assert len(seen) == 0
    assert tasks.check_text("Plan a trip to Kyoto.", dedup, rules, seen) is None
    assert len(seen) == 1
    assert tasks.check_text("Name three rivers.", dedup, rules) is None
    other = DedupFilter(0.7)
    assert tasks.check_text("plan a trip to kyoto", other, rules, seen) == "duplicate"


# --- teacher mode: the in-context examples are echoes too -------------------------------------------


def test_teacher_expand_rejects_copies_of_the_examples_it_showed():
    shown = teacher_pool.EXPAND[:2]  # the default examples of an English input
    d = Draw(TEACHER, "expand", "Describe the water cycle.", 4, SamplingParams(seed=1))
    assert d.prompt.count("<|im_start|>user\n") == 3
    for text in (shown[0][1], shown[1][0], "New instruction: " + shown[1][1], teacher_pool.EXPAND[2][1]):
        d.take(gen(text))
    assert d.result.rejected == {"echo": 3}
    assert d.result.items == [teacher_pool.EXPAND[2][1]]  # an example it did not show is new data


def test_teacher_reply_is_cleaned_family_reply_is_only_stripped():
    d = Draw(TEACHER, "expand", "Describe the water cycle.", 2, SamplingParams(seed=1))
    assert d.take(gen('New instruction: "Plan a weekend in Kyoto."')) == ["Plan a weekend in Kyoto."]
    f = Draw(FAMILY, "expand", "Describe the water cycle.", 2, SamplingParams(seed=1))
    assert f.take(gen('  New instruction: "Plan a weekend in Kyoto."  ')) == ['New instruction: "Plan a weekend in Kyoto."']


def test_example_texts():
    assert tasks.example_texts(FAMILY, "expand", SEED) == []
    assert tasks.example_texts(TEACHER, "respond", SEED) == []
    ex = teacher_pool.EXPAND
    assert tasks.example_texts(TEACHER, "expand", SEED) == [ex[0][0], ex[0][1], ex[1][0], ex[1][1]]
    seeds = [Pair("What is the boiling point of water?", "100 °C at sea level.")]
    assert tasks.example_texts(TEACHER, "pairs", seeds) == [
        "Name three primary colors.", "Name the three states of matter.",
        "Convert 5 kilometres to miles.", "Convert 20 degrees Celsius to Fahrenheit.",
    ]
    mine = PromptStyle("teacher", CHATML, examples=(
        ("a plain seed text", "### Instruction\nName two oceans.\n\n### Response\nPacific, Atlantic."),))
    assert tasks.example_texts(mine, "pairs", seeds) == ["a plain seed text", "Name two oceans."]


def test_new_dedup_references():
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue."), Pair("What is 2+2?", "4")]
    d = tasks.new_dedup(RESPONSE_EXP, "pairs", seeds, 0.7)
    assert d.threshold == 0.7
    assert d.check("name three primary colors") == "echo"
    assert d.check("What is 2 + 2") == "echo"
    assert d.check("Name the three states of matter.") is None  # family: no examples shown
    t = tasks.new_dedup(TEACHER, "pairs", seeds, 0.9)
    # the first built-in example resembles the seeds, so the prompt shows the next two
    assert t.check("Convert 20 degrees Celsius to Fahrenheit.") == "echo"
    assert t.check("Give an antonym for generous") == "echo"
    assert t.check("Name the three states of matter.") is None


# --- pairs ------------------------------------------------------------------------------------------------


def block(*pairs: tuple[str, str]) -> str:
    return "\n\n".join(f"### Instruction\n{q}\n\n### Response\n{a}" for q, a in pairs)


def test_pairs_room_and_reasons():
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue.")]
    d = Draw(RESPONSE_EXP, "pairs", seeds, 2, SamplingParams(seed=4))
    assert d.prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "### Instruction\nName three primary colors.\n\n### Response\nRed, yellow and blue.<|im_end|>\n"
        "<|im_start|>assistant\n")
    reply = block(("Name two oceans.", "Pacific and Atlantic."), ("Hi", "Hello."),
                  ("What is the capital of France?", "Paris."), ("What is 5 + 7?", "12."))
    assert d.take(gen(reply)) == [Pair("Name two oceans.", "Pacific and Atlantic."),
                                  Pair("What is the capital of France?", "Paris.")]
    assert d.result.rejected == {"too-short": 1}  # the fourth pair is never judged: no room
    assert d.want == 0 and d.result.samples == 1


def test_pairs_room_is_what_is_missing():
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue.")]
    d = Draw(RESPONSE_EXP, "pairs", seeds, 3, SamplingParams(seed=4))
    d.take(gen(block(("Name two oceans.", "Pacific and Atlantic."), ("Name a planet.", "Mars."))))
    assert len(d.result.items) == 2 and d.want == 1
    got = d.take(gen(block(("What is 5 + 7?", "12."), ("What is 6 + 7?", "13."))))
    assert got == [Pair("What is 5 + 7?", "12.")]
    assert d.result.rejected == {} and d.want == 0


def test_pairs_rejections():
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue.")]
    seen = ExactIndex()
    seen.check("Name a famous painter.")
    d = Draw(RESPONSE_EXP, "pairs", seeds, 5, SamplingParams(seed=4), seen=seen)
    d.take(gen("Sure! Here is a pair: what is love?"))
    d.take(gen(block(("I'm sorry, I can't help with that.", "OK."))))
    d.take(gen(block(("Name a famous composer.", "I'm sorry, but I cannot answer."))))
    d.take(gen(block(("name three primary colors", "Red, blue, yellow."))))
    d.take(gen(block(("Name a famous painter.", "Van Gogh."))))
    d.take(gen(block(("Name a famous river.", "The Ni")), "length"))
    d.take(gen("### Instruction\nName a famous mou", "length"))
    assert d.result.rejected == {"unparseable": 1, "refusal": 2, "echo": 1, "duplicate": 1, "truncated": 2}
    assert d.result.items == [] and d.result.samples == 7


def test_pairs_cut_at_max_tokens_lose_only_the_cut_pair():
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue.")]
    d = Draw(RESPONSE_EXP, "pairs", seeds, 3, SamplingParams(seed=4))
    d.take(gen(block(("Name two oceans.", "Pacific and Atlantic."), ("Name a planet.", "Ma")) + "\n", "length"))
    assert d.result.items == [Pair("Name two oceans.", "Pacific and Atlantic.")]
    assert d.result.rejected == {"truncated": 1}
    # cut after a whole pair, in the next block's instruction: the whole pair is kept
    d.take(gen(block(("What is 5 + 7?", "12.")) + "\n\n### Instruction\nWhat is", "length"))
    assert d.result.items[-1] == Pair("What is 5 + 7?", "12.") and d.result.rejected == {"truncated": 1}
    # not cut: the last pair is judged like the others
    d.take(gen(block(("Name a metal.", "Iron."))))
    assert d.result.items[-1] == Pair("Name a metal.", "Iron.") and d.want == 0
    # the cut pair beyond the room left is neither judged nor counted
    full = Draw(RESPONSE_EXP, "pairs", seeds, 1, SamplingParams(seed=4))
    full.take(gen(block(("Name two oceans.", "Pacific and Atlantic."), ("Name a planet.", "Ma")), "length"))
    assert full.result.rejected == {} and len(full.result.items) == 1


def test_accept_defaults():
    dedup = DedupFilter(0.7)
    items, reasons = tasks.accept(FAMILY, "expand", gen("Hi"), dedup)
    assert (items, reasons) == ([], ["too-short"])
    many = block(*[(f"Question number {i} here?", f"Answer {i}.") for i in range(5)])
    items, reasons = tasks.accept(RESPONSE_EXP, "pairs", gen(many), DedupFilter(0.99))
    assert len(items) == 5 and reasons == []


# --- refine and respond: one sample ------------------------------------------------------------------


HZ = "Create a travel guide for Hangzhou."
LONGER = "Create a detailed travel guide for Hangzhou covering West Lake, food, transport and a three-day plan."


def test_refine_is_one_sample_whatever_n_and_max_samples():
    d = Draw(FAMILY, "refine", HZ, 5, SamplingParams(seed=9), max_samples=9)
    assert (d.n, d.cap, d.want, d.dedup) == (1, 1, 1, None)
    assert d.result.requested == 1
    assert d.refined is None
    assert d.take(gen(LONGER)) == [LONGER]
    assert d.refined == LONGER and d.want == 0 and d.result.rejected == {}
    assert d.result.items == [LONGER]


@pytest.mark.parametrize(("reply", "finish", "reason"), [
    (HZ, "stop", "echo"),
    ("  create a travel guide for HANGZHOU  ", "stop", "echo"),
    (LONGER, "length", "truncated"),
    ("I'm sorry, I can't do that.", "stop", "refusal"),
    ("", "stop", "empty"),
    ("Hi", "stop", "too-short"),
])
def test_refine_rejections_count_one(reply, finish, reason):
    d = Draw(FAMILY, "refine", HZ, 1, SamplingParams(seed=9))
    assert d.take(gen(reply, finish)) == []
    assert d.result.rejected == {reason: 1}
    assert d.refined == reply.strip()  # kept to show, even when rejected
    assert d.want == 0 and d.result.items == [] and d.result.shortfall == 1


def test_echo_rules_refine_vs_expand():
    """ROUGE-L 0.9 with the input is an echo for refine (0.9) and expand (0.7); 0.8 is a refinement
    but still an echo for expand."""
    src = "a b c d e f g h i j"
    at_09 = "a b c d e f g h i z"
    at_08 = "a b c d e f g h y z"
    for reply, refine_reason, expand_reason in ((at_09, "echo", "echo"), (at_08, None, "echo")):
        r = Draw(FAMILY, "refine", src, 1, SamplingParams(seed=1))
        r.take(gen(reply))
        assert r.result.rejected == ({refine_reason: 1} if refine_reason else {})
        e = Draw(FAMILY, "expand", src, 1, SamplingParams(seed=1))
        e.take(gen(reply))
        assert e.result.rejected == {expand_reason: 1}
    custom = Draw(FAMILY, "refine", src, 1, SamplingParams(seed=1), echo=0.8)
    custom.take(gen(at_08))
    assert custom.result.rejected == {"echo": 1}


def test_refine_reason_exact_echo_even_above_any_rouge():
    rules = QualityRules()
    assert tasks.refine_reason("create a travel guide for HANGZHOU", HZ, rules, echo=1.01) == "echo"
    assert tasks.refine_reason("Create a travel guide for Hangzhou, please.", HZ, rules, echo=1.01) is None
    assert tasks.refine_reason("Write a haiku.", HZ, rules, examples=["write a haiku"]) == "echo"
    assert tasks.refine_reason("Write a haiku.", HZ, rules) is None
    assert tasks.refine_reason(HZ, HZ, QualityRules(min_chars=100)) == "too-short"


def test_teacher_refine_cleans_and_rejects_a_copied_example():
    example_output = teacher_pool.REFINE[0][1]
    d = Draw(TEACHER, "refine", "Describe the water cycle.", 1, SamplingParams(seed=1))
    d.take(gen("Refined: " + example_output))
    assert d.refined == example_output
    assert d.result.rejected == {"echo": 1}
    ok = Draw(TEACHER, "refine", "Describe the water cycle.", 1, SamplingParams(seed=1))
    assert ok.take(gen('Refined: "Explain the water cycle in five steps."')) == ["Explain the water cycle in five steps."]


@pytest.mark.parametrize(("reply", "finish", "max_chars", "kept", "reason"), [
    ("4", "stop", None, True, None),                     # a short answer is fine
    ("What is 2+2?", "stop", None, True, None),          # no echo rule for answers
    ("", "stop", None, False, "empty"),
    ("I'm sorry, but I can't help.", "stop", None, False, "refusal"),
    ("0123456789", "stop", 10, True, None),              # exactly max_chars
    (" 0123456789 ", "stop", 10, True, None),
    ("0123456789A", "stop", 10, False, "too-long"),      # one past
    ("Four.", "length", None, False, "truncated"),
])
def test_respond(reply, finish, max_chars, kept, reason):
    rules = QualityRules(max_chars=max_chars, min_chars=50)
    d = Draw(FAMILY, "respond", "What is 2+2?", 1, SamplingParams(seed=2), rules=rules)
    assert d.n == 1 and d.cap == 1
    got = d.take(gen(reply, finish))
    assert got == ([reply.strip()] if kept else [])
    assert d.result.rejected == ({} if kept else {reason: 1})


def test_respond_draws_exactly_n_answers_each_judged_alone():
    d = Draw(FAMILY, "respond", "What is 2+2?", 3, SamplingParams(seed=2), rules=QualityRules(max_chars=10))
    assert (d.n, d.cap, d.want) == (3, 3, 3)
    assert d.sampling_for_next().seed == 2
    assert d.take(gen("4")) == ["4"]
    assert d.sampling_for_next().seed == 3
    assert d.take(gen("")) == []
    assert d.want == 1  # a rejected answer is not drawn again: exactly n samples
    assert d.take(gen("0123456789A")) == []
    assert d.want == 0
    assert d.answers == [("4", None), ("", "empty"), ("0123456789A", "too-long")]
    assert d.result.rejected == {"empty": 1, "too-long": 1}


def test_respond_counts_answers_rejected_for_the_same_reason():
    d = Draw(FAMILY, "respond", "What is 2+2?", 3, SamplingParams(seed=2))
    assert [d.take(gen(t)) for t in ("", "4", "")] == [[], ["4"], []]
    assert d.result.rejected == {"empty": 2} and d.result.items == ["4"]


def test_teacher_respond_keeps_the_answer_as_written():
    d = Draw(TEACHER, "respond", "Quote a proverb.", 1, SamplingParams(seed=2))
    assert d.take(gen(' "A stitch in time saves nine." ')) == ['"A stitch in time saves nine."']
    r = Draw(TEACHER, "respond", "Name a label.", 1, SamplingParams(seed=2))
    assert r.take(gen("Instruction: none")) == ["Instruction: none"]


def test_single_reason_default_rules():
    assert tasks.single_reason(FAMILY, "respond", "Q?", "A", gen("A")) is None
    assert tasks.single_reason(FAMILY, "respond", "Q?", "", gen("")) == "empty"
    assert tasks.single_reason(FAMILY, "refine", "Q?", "Q?", gen("Q?")) == "too-short"
    assert tasks.single_reason(FAMILY, "refine", HZ, HZ, gen(HZ)) == "echo"
    assert tasks.single_reason(FAMILY, "refine", HZ, HZ, gen(HZ), echo=1.5) == "echo"
    assert tasks.single_reason(FAMILY, "refine", HZ, LONGER, gen(LONGER)) is None


def test_response_reason():
    assert tasks.response_reason("abc", QualityRules(max_chars=3)) is None
    assert tasks.response_reason("abcd", QualityRules(max_chars=3)) == "too-long"
    assert tasks.response_reason("I'm sorry, I can't answer that.", QualityRules(max_chars=3)) == "refusal"
    assert tasks.response_reason("abcd", QualityRules()) is None


# --- failures ---------------------------------------------------------------------------------------------


def test_fail_ends_the_draw_and_take_all_stops_at_the_error():
    d = Draw(FAMILY, "expand", SEED, 3, SamplingParams(seed=5))
    d.take_all([gen("Name three rivers."), "the engine failed", gen("Plan a trip to Kyoto.")])
    assert d.errors == ["the engine failed"]
    assert d.result.items == ["Name three rivers."]
    assert d.result.samples == 2 and len(d.result.generations) == 1
    assert d.want == 0


def test_take_all_without_errors():
    d = Draw(FAMILY, "expand", SEED, 2, SamplingParams(seed=5))
    d.take_all([gen("Name three rivers."), gen("Plan a trip to Kyoto.")])
    assert d.errors == [] and d.result.items == ["Name three rivers.", "Plan a trip to Kyoto."]


# --- drivers ----------------------------------------------------------------------------------------------


@dataclass
class Replay:
    """Hands out the given replies in order and records what it was asked for."""

    replies: list[Generation]
    calls: list[tuple[str, int | None, tuple[str, ...]]] = field(default_factory=list)

    def generate(self, prompt, sampling, stop=()):
        self.calls.append((prompt, sampling.seed, tuple(stop)))
        return self.replies.pop(0)

    def stream(self, prompt, sampling, stop=()):
        self.calls.append((prompt, sampling.seed, tuple(stop)))
        reply = self.replies.pop(0)
        yield from reply.text.partition(" ")[::2]
        yield reply


def test_run_sequential_one_sample_at_a_time():
    engine = Replay([gen(SEED), gen("Name three rivers."), gen("Plan a trip to Kyoto."), gen("unused")])
    d = Draw(FAMILY, "expand", SEED, 2, SamplingParams(seed=20))
    assert list(tasks.run_sequential(engine, d)) == ["Name three rivers.", "Plan a trip to Kyoto."]  # type: ignore[arg-type]
    stop = ("<|im_end|>", "<|endoftext|>")
    assert engine.calls == [(SEA_PROMPT, 20, stop), (SEA_PROMPT, 21, stop), (SEA_PROMPT, 22, stop)]
    assert len(engine.replies) == 1


def test_expand_iter_and_final():
    engine = Replay([gen("a b c d"), gen("a b x y"), gen("e f g h"), gen("unused")])
    events = list(tasks.expand_iter(engine, FAMILY, SEED, 2, SamplingParams(seed=1), max_samples=3,  # type: ignore[arg-type]
                                    threshold=0.5))
    assert events[:2] == ["a b c d", "e f g h"]
    result = events[-1]
    assert isinstance(result, ExpandResult) and len(events) == 3
    assert result.rejected == {"near-duplicate": 1} and result.samples == 3
    capped = tasks.final(tasks.expand_iter(Replay([gen(SEED)] * 3), FAMILY, SEED, 2, SamplingParams(seed=1),  # type: ignore[arg-type]
                                           max_samples=2))
    assert capped.samples == 2 and capped.shortfall == 2 and capped.rejected == {"echo": 2}


def test_expand_iter_teacher_mode():
    engine = Replay([gen('New instruction: "Plan a weekend in Kyoto."')])
    result = tasks.final(tasks.expand_iter(engine, TEACHER, "Describe the water cycle.", 1, SamplingParams(seed=8)))  # type: ignore[arg-type]
    assert result.items == ["Plan a weekend in Kyoto."]
    prompt, seed, stop = engine.calls[0]
    assert prompt.startswith("<|im_start|>system\nYou write new instructions for training AI assistants.")
    assert prompt.endswith("<|im_start|>user\nDescribe the water cycle.<|im_end|>\n<|im_start|>assistant\n")
    assert (seed, stop) == (8, ("<|im_end|>",))


def test_pairs_iter():
    seeds = [Pair("Name three primary colors.", "Red, yellow and blue.")]
    engine = Replay([gen(block(("Name two oceans.", "Pacific and Atlantic.")))])
    result = tasks.final(tasks.pairs_iter(engine, RESPONSE_EXP, seeds, 1, SamplingParams(seed=1)))  # type: ignore[arg-type]
    assert result.items == [Pair("Name two oceans.", "Pacific and Atlantic.")] and result.samples == 1
    near = Replay([gen(block(("Name two big oceans.", "Pacific."))), gen(block(("Name two oceans now.", "x")))] * 2)
    r = tasks.final(tasks.pairs_iter(near, RESPONSE_EXP, seeds, 2, SamplingParams(seed=1), max_samples=2,  # type: ignore[arg-type]
                                     threshold=0.5))
    assert r.rejected == {"near-duplicate": 1} and r.samples == 2


def test_final_needs_a_result():
    with pytest.raises(AssertionError):
        tasks.final(iter(["a"]))


def test_refine_streams_pieces_and_returns_the_parsed_reply():
    engine = Replay([gen('Refined: "Plan a trip."')])
    pieces: list[str] = []
    text, g = tasks.refine(engine, TEACHER, HZ, SamplingParams(seed=3), pieces.append)  # type: ignore[arg-type]
    assert text == "Plan a trip." and g.text == 'Refined: "Plan a trip."'
    assert pieces == ["Refined:", '"Plan a trip."']
    prompt, seed, stop = engine.calls[0]
    assert seed == 3 and stop == ("<|im_end|>",)
    assert prompt.startswith("<|im_start|>system\nYou rewrite instructions") and prompt.endswith(
        f"<|im_start|>user\n{HZ}<|im_end|>\n<|im_start|>assistant\n")
    quiet = Replay([gen("  Plan a trip.  ")])
    assert tasks.refine(quiet, FAMILY, HZ, SamplingParams(seed=3))[0] == "Plan a trip."  # type: ignore[arg-type]
