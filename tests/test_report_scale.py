"""The report at scale keeps its numbers: texts embedded in batches get the vectors they get one
by one (real SmolLM2 GGUF), the JSON summary of a fixed output holds the values computed here by
hand and with the pure-Python ROUGE-L, and every phase reports its progress in order to its end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from localaug.family.text import rouge_l
from localaug.report.build import make_report
from localaug.runtime.embed import embed_texts
from localaug.runtime.engine import Engine, EngineOptions

TEXTS = ["Write a travel guide for Kyoto.", "请为杭州写一份旅游指南。", "", "Write a travel guide for Kyoto.",
         "Explain recursion to beginners with two examples.", "比较梯度下降和复利的优缺点。", "a",
         "Summarise " + "the arguments for and against remote work " * 40]  # past the 256 tokens embedded


def test_batched_vectors_are_the_ones_of_each_text_alone_and_lengths_are_all_tokens(smollm2: Path):
    with Engine(smollm2, EngineOptions(threads=1), context=False) as engine:
        together = embed_texts(engine, TEXTS * 3)
        alone = np.stack([embed_texts(engine, [t]).vectors[0] for t in TEXTS])
        lengths = [len(engine.tokenize(t, special=False)) for t in TEXTS]
    assert together.vectors.shape == (24, alone.shape[1]) and together.vectors.dtype == np.float32
    # llama.cpp's kernels round differently for other batch shapes: the same vectors within that
    cosine = (together.vectors * np.tile(alone, (3, 1))).sum(axis=1)
    assert cosine.min() > 0.9995 and np.abs(together.vectors - np.tile(alone, (3, 1))).max() < 0.01
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-6)
    assert together.tokens == lengths * 3 and lengths[2] == 0 and lengths[-1] > 256
    assert not np.allclose(alone[0], alone[1], atol=0.05)  # different texts, different vectors


ROWS = [("write a guide for kyoto", ["write a guide for kyoto", "plan a trip to lisbon"]),
        ("我喜欢猫", ["我喜欢狗", "你好"]),
        ("explain recursion to beginners", ["explain recursion to parents", "draft an email about the launch"]),
        ("compare tea and coffee", ["compare sea and sky", "list three birds"]),
        ("猫在垫子上", ["狗在垫子上", "今天下雨"]),
        ("summarise the news", ["summarise the news today", "name a river"])]


def _ref_tokens(text: str) -> list[str]:
    return list(text) if any("\u4e00" <= c <= "\u9fff" for c in text) else text.split()


def _ref_distinct(texts: list[str], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in map(_ref_tokens, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams)


def test_the_summary_of_a_fixed_output_and_the_phases(tmp_path: Path, smollm2: Path):
    out = tmp_path / "expanded.jsonl"
    out.write_text("".join(json.dumps({"source_id": f"r{i}", "row": i, "task": "expand", "instruction": s, "status": "ok",
                                       "outputs": new}, ensure_ascii=False) + "\n" for i, (s, new) in enumerate(ROWS)),
                   encoding="utf-8")
    events: list[tuple[str, int, int]] = []
    make_report(out, tmp_path / "page.html", embed_model=str(smollm2), threads=1, progress=lambda *e: events.append(e))
    summary = json.loads((tmp_path / "page.json").read_text(encoding="utf-8"))
    sources, new = [s for s, _ in ROWS], [t for _, ts in ROWS for t in ts]
    # nearest neighbour by the pure-Python ROUGE-L: kyoto's copy 1, 我喜欢狗 3/4, recursion to parents 3/4,
    # 狗在垫子上 4/5, the news today 6/7; the other seven below 0.7
    nn = [max(rouge_l(t, o) for o in [*sources, *new[:i], *new[i + 1:]]) for i, t in enumerate(new)]
    assert [v >= 0.7 for v in nn] == [True, False, True, False, True, False, False, False, True, False, True, False]
    with Engine(smollm2, EngineOptions(threads=1), context=False) as engine:
        vecs = [np.stack([embed_texts(engine, [t]).vectors[0] for t in side]) for side in (sources, new)]
    for side, texts, v in (("sources", sources, vecs[0]), ("new", new, vecs[1])):
        got = summary["diversity"][side]
        assert got["texts"] == len(texts)
        assert got["distinct-1"] == _ref_distinct(texts, 1) and got["distinct-2"] == _ref_distinct(texts, 2)
        assert got["mean characters"] == sum(map(len, texts)) / len(texts)
        sims = v @ v.T
        assert got["mean pairwise cosine"] == pytest.approx((sims.sum() - len(v)) / (len(v) * (len(v) - 1)), abs=5e-3)
    assert summary["diversity"]["new"]["near-duplicate share"] == 5 / 12
    assert summary["projection"] == "t-SNE" and summary["rows"] == 6
    phases = list(dict.fromkeys(p for p, _, _ in events))
    assert phases == ["reading", "embeddings", "ROUGE-L neighbours", "map", "charts", "page"]
    for phase in phases:
        seen = [(d, t) for p, d, t in events if p == phase]
        assert seen[-1][0] == seen[-1][1] > 0 and [d for d, _ in seen] == sorted(d for d, _ in seen), phase
    assert ("embeddings", 18, 18) in events and ("map", 750, 750) in events and ("charts", 5, 5) in events


class Shown:
    """A Progress display that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def stage(self, name: str, total: int | None, unit: str, done: int = 0) -> None:
        self.events.append(("stage", name, total, unit))

    def advance(self, amount: int, item: str = "") -> None:
        self.events.append(("advance", amount))

    def finish(self) -> None:
        self.events.append(("finish",))


def test_the_report_phases_become_stages_of_the_display_a_command_installed():
    from localaug.core.progress import Phases, reporting
    from localaug.report.build import PHASE_UNITS

    shown = Shown()
    with reporting(shown):
        phases = Phases(PHASE_UNITS)
        for event in [("reading", 0, 1), ("reading", 40, 40), ("embeddings", 0, 400), ("embeddings", 100, 400),
                      ("embeddings", 100, 400), ("embeddings", 400, 400), ("map", 0, 750), ("map", 750, 750)]:
            phases(*event)
        phases.close()
        phases.close()  # twice: nothing more
    assert shown.events == [
        ("stage", "reading", None, "rows"), ("advance", 40), ("finish",),  # 0 of 1: no total to show
        ("stage", "embeddings", 400, "texts"), ("advance", 100), ("advance", 300), ("finish",),
        ("stage", "map", 750, "iterations"), ("advance", 750), ("finish",)]
