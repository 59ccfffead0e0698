"""The runtime on real llama.cpp: exact prompting proven against transformers, teacher mode on SmolLM2."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from localaug.api import Augmenter
from localaug.core.errors import PromptTooLongError
from localaug.family import prompts
from localaug.runtime.engine import Engine, EngineOptions
from localaug.runtime.sampling import SamplingParams

GREEDY = dict(temperature=0.0, max_tokens=24)


def hf_greedy(checkpoint: Path, text: str, max_new_tokens: int) -> tuple[list[int], str]:
    """transformers' greedy reply to ``text`` as a Qwen2 chat user turn: (token ids, text), EOS dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=[151645, 151643], pad_token_id=151643)
    new = [t for t in out[0, ids.shape[1]:].tolist() if t not in (151643, 151645)]
    return new, tok.decode(new).strip()


@pytest.fixture(scope="module")
def tiny_family(converted) -> Augmenter:
    aug = Augmenter.load(converted("untied", "F32"), prompt_format="qwen2-chatml", threads=2, kv_f32=True, n_ctx=512)
    yield aug
    aug.close()


@pytest.fixture(scope="module")
def teacher(smollm2: Path) -> Augmenter:
    aug = Augmenter.load(smollm2, threads=2, n_ctx=2048)
    yield aug
    aug.close()


def test_refine_greedy_equals_transformers_generate(tiny_family: Augmenter, qwen2_untied: Path) -> None:
    text = "Create a travel guide for Hangzhou. 写一份杭州旅游指南。"
    new, expected = hf_greedy(qwen2_untied, text, 24)
    refined, gen = tiny_family.refine_full(text, **GREEDY)
    assert gen.tokens == new
    assert refined == expected


def test_stream_pieces_add_up_to_the_final_text(tiny_family: Augmenter) -> None:
    pieces = list(tiny_family.refine_stream("Explain rainbows to a child. 🌈", **GREEDY))
    assert pieces and "".join(pieces).strip() == tiny_family.refine("Explain rainbows to a child. 🌈", **GREEDY)


def test_one_engine_serves_threads_safely(tiny_family: Augmenter) -> None:
    texts = ["a poem about rain", "the history of tea", "how do magnets work", "解释量子纠缠"]
    expected = [tiny_family.refine(t, **GREEDY) for t in texts]
    got: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i, t=t: got.__setitem__(i, tiny_family.refine(t, **GREEDY))) for i, t in enumerate(texts)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [got[i] for i in range(len(texts))] == expected


def test_long_prompt_grows_the_context_or_fails_clearly(converted, qwen2_tied: Path) -> None:
    from tokenizers import Tokenizer

    with Engine(converted("tied", "Q8_0"), EngineOptions(threads=2, n_ctx=256)) as engine:
        assert engine.n_ctx == 256
        prompt = prompts.qwen2_chatml([{"role": "user", "content": "word " * 400}])
        want = len(Tokenizer.from_file(str(qwen2_tied / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids)
        assert want > 256  # does not fit the context the engine started with
        gen = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=8))
        assert gen.prompt_tokens == want  # the whole prompt went in, nothing cut off
        assert gen.completion_tokens == 8 and gen.finish_reason == "length"  # and all 8 tokens came out
        assert engine.n_ctx >= want + 8  # the context grew to hold them
        huge = "x " * (engine.n_ctx_train + 10)
        with pytest.raises(PromptTooLongError, match="exceeds the model's context"):
            engine.generate(huge, SamplingParams(temperature=0, max_tokens=8))


def test_teacher_refine_is_new_text_and_seeded(teacher: Augmenter) -> None:
    assert teacher.style.prompt_format == "teacher"
    text = "Create a travel guide for Hangzhou."
    a = teacher.refine(text, seed=11, max_tokens=96)
    b = teacher.refine(text, seed=11, max_tokens=96)
    assert a and a != text
    assert a == b


def test_teacher_expand_returns_distinct_instructions(teacher: Augmenter) -> None:
    seed_text = "Plan an in depth tour itinerary of France that includes Paris, Lyon, and Provence."
    result = teacher.expand_full(seed_text, n=3, seed=7, max_tokens=64)
    assert len(result.items) == 3
    assert len({prompts_norm(x) for x in result.items}) == 3
    assert all(prompts_norm(x) != prompts_norm(seed_text) for x in result.items)
    assert result.samples >= 3


def prompts_norm(text: str) -> str:
    from localaug.augment.filters import normalize

    return normalize(text)


# --- the commands, through Typer's runner -------------------------------------------------------

import json  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from localaug.cli.main import app  # noqa: E402

runner = CliRunner()


def test_cli_refine_json_is_exactly_transformers_greedy(converted, qwen2_tied: Path) -> None:
    text = "Write a haiku about the sea."
    _, expected = hf_greedy(qwen2_tied, text, 20)
    result = runner.invoke(app, ["refine", text, "-m", str(converted("tied", "F32")), "--prompt-format", "qwen2-chatml",
                                 "--temperature", "0", "--max-tokens", "20", "--threads", "2", "--json"])
    data = json.loads(result.stdout)
    assert data["output"] == expected
    assert data["input"] == text and data["completion_tokens"] <= 20
    # the random-weight model runs on to --max-tokens: the reply is reported cut off, as a job records it
    cut = data["finish_reason"] == "length"
    assert (result.exit_code, data["status"], data["rejected"]) == ((1, "filtered", "truncated") if cut else (0, "ok", None))


def test_cli_expand_and_pairs_on_smollm2(smollm2: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["expand", "Explain how vaccines work.", "-n", "2", "-m", str(smollm2),
                                 "--seed", "3", "--max-tokens", "48", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["instructions"]) == 2 and len(set(data["instructions"])) == 2
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Name three primary colors.", "response": "Red, yellow and blue."}) + "\n")
    result = runner.invoke(app, ["pairs", str(seeds), "-m", str(smollm2), "--seed", "2", "--max-tokens", "100",
                                 "--threads", "2", "--json"])
    data = json.loads(result.stdout)
    found = len(data["pairs"])
    # -n 1 (the default): at most one pair, drawn from at most max(3n, n+4) = 5 samples.
    assert found <= 1 and data["shortfall"] == 1 - found
    assert 1 <= data["samples"] <= 5 and (found or data["samples"] == 5)
    # A reply that does not parse is counted, never silently dropped: every sample that gave no pair left at
    # least one counted rejection (a teacher reply may hold several pairs, each rejected on its own, so the
    # count can exceed the samples; an unparseable reply counts exactly once).
    assert sum(data["rejected"].values()) >= data["samples"] - found
    assert data["rejected"].get("unparseable", 0) <= data["samples"] - found
    assert result.exit_code == (0 if found else 1)
    for pair in data["pairs"]:
        assert pair["instruction"] and pair["response"] and "###" not in pair["response"]


# tests/scripted_fixture.py SCRIPTS["pairs"], read as (instruction, response) by hand: the model writes one
# of these three replies per sample, each holding exactly one pair.
SCRIPTED_PAIRS = {
    ("Name three primary colors.", "Red, yellow and blue"),
    ("What is the capital of France?", "Paris"),
    ("Give a synonym for happy.", "Joyful"),
}


def test_cli_pairs_on_the_scripted_model(scripted, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Translate 'cat' into French.", "response": "Chat."}) + "\n",
                     encoding="utf-8")
    result = runner.invoke(app, ["pairs", str(seeds), "-n", "3", "-m", str(scripted("pairs")),
                                 "--prompt-format", "qwen2-response-pairs", "--seed", "0", "--threads", "2", "--ctx", "512",
                                 "--json"])
    data = json.loads(result.stdout)
    got = [(p["instruction"], p["response"]) for p in data["pairs"]]
    assert got, data
    assert set(got) <= SCRIPTED_PAIRS and len(set(got)) == len(got), got
    # One pair per reply: every sample is either a kept pair or exactly one counted rejection.
    assert data["samples"] == len(got) + sum(data["rejected"].values()), data
    assert set(data["rejected"]) <= {"duplicate"}, data  # a scripted pair is only ever turned down as drawn again
    assert data["shortfall"] == 3 - len(got)
    assert result.exit_code == (0 if len(got) == 3 else 1)
    assert len(got) == 3 or data["samples"] == 9  # a shortfall only after max(3n, n+4) samples


def test_refine_nfc_normalises_the_user_turn(tiny_family: Augmenter, converted, qwen2_tied: Path,
                                            qwen2_untied: Path) -> None:
    """README/docs: the runtime NFC-normalises the user turn, as the Qwen2 tokenizer does (llama.cpp's does
    not). Decomposed input (e + U+0301) must give the prompt and the reply of its composed form, which is
    what transformers gives for it."""
    import unicodedata

    from tokenizers import Tokenizer

    nfc = "Décris un café naïf à Zürich, en Ångström."
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    prompt_of = {t: ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # Qwen2 ChatML, typed out
                     f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n") for t in (nfc, nfd)}
    want_tokens = len(Tokenizer.from_file(str(qwen2_tied / "tokenizer.json")).encode(prompt_of[nfd], add_special_tokens=False).ids)
    # Without localaug's NFC step llama.cpp would see other tokens: the checks below can fail.
    engine = tiny_family.engine
    assert engine.tokenize(prompt_of[nfd]) != engine.tokenize(prompt_of[nfc])
    assert len(engine.tokenize(prompt_of[nfc])) == want_tokens

    # The API (F32 weights and KV cache): exactly transformers' greedy reply to the decomposed text.
    new, _ = hf_greedy(qwen2_untied, nfd, 12)
    for text in (nfd, nfc):
        _, gen = tiny_family.refine_full(text, temperature=0.0, max_tokens=12)
        assert gen.prompt_tokens == want_tokens and gen.tokens == new

    # The CLI: both forms make the same prompt and the same reply.
    model = converted("tied", "F32")
    got = {}
    for text in (nfc, nfd):
        result = runner.invoke(app, ["refine", text, "-m", str(model), "--prompt-format", "qwen2-chatml", "--temperature", "0",
                                     "--max-tokens", "6", "--threads", "2", "--json"])
        got[text] = json.loads(result.stdout)
        assert result.exit_code == (0 if got[text]["status"] == "ok" else 1), result.output
    assert got[nfd]["prompt_tokens"] == got[nfc]["prompt_tokens"] == want_tokens
    assert got[nfd]["output"] == got[nfc]["output"] and got[nfd]["input"] == nfd


def test_cli_usage_errors_exit_2(smollm2: Path) -> None:
    result = runner.invoke(app, ["refine", "hi", "-m", str(smollm2), "--device", "tpu"])
    assert result.exit_code == 2 and "is not one of" in result.output and "'metal'" in result.output  # the choices
    result = runner.invoke(app, ["refine", "hi", "-m", str(smollm2), "--prompt-format", "nope"])
    assert result.exit_code == 2 and "is not one of" in result.output and "'teacher'" in result.output
    result = runner.invoke(app, ["pairs", "/nonexistent/seeds.jsonl", "-m", str(smollm2)])
    assert result.exit_code == 2 and "cannot read" in result.output


def test_cli_doctor_reports_the_build() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert isinstance(data["gpu_offload"], bool) and "CPU" in data["llama_cpp_features"]


def test_cli_bench_measures_against_raw_decode(converted) -> None:
    result = runner.invoke(app, ["bench", "-m", str(converted("tied", "Q8_0")), "--tokens", "16", "--repeats", "1",
                                 "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["generated_tokens"] == 16 and data["prompt_tokens"] > 0
    assert data["decode_tokens_per_s"] > 0 and data["raw_decode_tokens_per_s"] > 0 and data["prefill_tokens_per_s"] > 0
    # the ratio is the two speeds' (a timing ratio on a shared machine proves nothing by itself:
    # one repeat of 16 tokens on a loaded CPU can swing either way several times over)
    assert data["decode_vs_raw"] == pytest.approx(data["decode_tokens_per_s"] / data["raw_decode_tokens_per_s"], rel=0.01, abs=0.002)
