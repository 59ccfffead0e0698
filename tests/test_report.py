"""localaug report and localaug judge, on scripted models' real outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from localaug.family import judging
from localaug.jobs.run import run_job
from localaug.report.build import make_report, project
from localaug.report.judge import run_judge, score

ROWS = [{"instruction": f"Write a short note about topic number {i}."} for i in range(8)]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    ENV["LOCALAUG_HOME"] = str(tmp_path / "home")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def expanded(tmp_path, scripted) -> Path:
    src = write_jsonl(tmp_path / "seeds.jsonl", ROWS)
    out = tmp_path / "expanded.jsonl"
    run_job("expand", src, out, model=scripted("expand"), prompt_format="qwen2-chatml", temperature=0.8, max_tokens=48,
            threads=1, n=3, dedup="row", seed=1)
    return out


def test_report_renders_every_figure_and_a_self_contained_page(tmp_path, expanded):
    import matplotlib.image as mpimg

    r = make_report(expanded, tmp_path / "page.html", threads=1)
    assert r.projection == "t-SNE" and set(r.figures) == {"map", "lengths-characters", "lengths-tokens", "rejections",
                                                          "nearest-rouge-l"}
    html = (tmp_path / "page.html").read_text(encoding="utf-8")
    for name, path in r.figures.items():
        pixels = mpimg.imread(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and float(pixels[..., :3].std()) > 0.01, name  # not blank
        assert f'data-file="{path.name}"' in html
    assert html.count("data:image/png;base64,") == 5 and "<script" not in html and "http" not in html.split("<body>")[1]
    new = sum(len(json.loads(line)["outputs"]) for line in expanded.read_text().splitlines())
    assert r.diversity["new"]["texts"] == new == 24 and r.diversity["sources"]["texts"] == 8
    assert 0 < r.diversity["new"]["distinct-1"] <= 1 and 0 <= r.diversity["new"]["near-duplicate share"] <= 1
    first = json.loads(expanded.read_text().splitlines()[0])
    assert first["instruction"] in html and all(t in html for t in first["outputs"])  # the sample table
    assert sum(r["instruction"] in html for r in ROWS) == 6  # six rows shown side by side
    summary = json.loads((tmp_path / "page.json").read_text())
    assert summary["rows"] == 8 and summary["projection"] == "t-SNE"


def test_the_map_is_deterministic_and_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    centre = np.zeros(16, dtype=np.float32)
    centre[0] = 8.0
    vecs = np.concatenate([rng.standard_normal((20, 16)), rng.standard_normal((20, 16)) + centre]).astype(np.float32)
    a, method = project(vecs, seed=3)
    b, _ = project(vecs, seed=3)
    assert method == "t-SNE" and np.array_equal(a, b)
    left, right = a[:20], a[20:]
    gap = np.linalg.norm(left.mean(0) - right.mean(0))
    spread = max(np.linalg.norm(left - left.mean(0), axis=1).mean(), np.linalg.norm(right - right.mean(0), axis=1).mean())
    assert gap > 2 * spread  # two groups in the embedding are two groups on the map


def test_report_of_a_large_output_samples_with_a_fixed_seed_and_says_so(tmp_path, expanded):
    r1 = make_report(expanded, tmp_path / "a.html", max_rows=5, seed=2, threads=1)
    r2 = make_report(expanded, tmp_path / "b.html", max_rows=5, seed=2, threads=1)
    assert r1.collected.rows == r2.collected.rows and len(r1.collected.rows) == 5
    assert "5 of 8 rows, sampled with seed 2." in (tmp_path / "a.html").read_text()


def test_report_of_a_respond_with_output_shows_its_augmenter(tmp_path, scripted):
    src = write_jsonl(tmp_path / "seeds.jsonl", ROWS)
    out = tmp_path / "train.json"
    run_job("expand", src, out, model=scripted("expand"), prompt_format="qwen2-chatml", temperature=0.8, max_tokens=48,
            threads=1, n=2, dedup="row", seed=1, fmt="alpaca", respond_with=scripted("respond"), respond={"max_tokens": 64})
    r = make_report(out, tmp_path / "page.html", threads=1)
    assert r.collected.task == "expand" and r.collected.path.name == "train.json.expand.jsonl"
    assert r.diversity["new"]["texts"] == 16 and r.diversity["sources"]["texts"] == 8


def test_report_of_something_else_is_a_one_line_usage_error(tmp_path):
    bad = write_jsonl(tmp_path / "x.jsonl", [{"a": 1}])
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "report", str(bad)], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no localaug job records" in r.stderr


# --- judge -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("A", "B", "A"),    # A preferred when shown first, and when shown second
    ("B", "A", "B"),
    ("A", "A", "tie"),  # the judge prefers whatever comes first: position bias cancels
    ("B", "B", "tie"),
    ("C", "C", "tie"), ("A", "C", "tie"), (None, "B", "tie"), ("B", None, "tie"),
])
def test_two_orders_combine_into_one_verdict(first, second, expected):
    assert judging.combine(first, second) == expected


def test_verdict_is_the_last_bracketed_letter_and_the_score_interval():
    assert judging.verdict("I think [[A]] ... on reflection [[B]]") == "B"
    assert judging.verdict("no verdict here") is None
    mean, (lo, hi) = score(["B"] * 6 + ["tie"] * 2 + ["A"] * 2)
    assert mean == pytest.approx(0.7) and lo < 0.7 < hi and 0 <= lo and hi <= 1


def _answers(tmp_path: Path, scripted, n: int) -> tuple[Path, Path]:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Explain idea {i} with an example."} for i in range(n)])
    refined = tmp_path / "refined.jsonl"
    common = dict(temperature=0.0, max_tokens=64, threads=1)
    run_job("refine", seeds, refined, model=scripted("refine"), prompt_format="qwen2-chatml", **common)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_job("respond", seeds, a, model=scripted("respond"), **common)
    run_job("respond", refined, b, model=scripted("respond"), **common)
    return a, b


def test_a_position_biased_judge_gives_ties_and_the_page_gets_the_table(tmp_path, scripted, expanded):
    a, b = _answers(tmp_path, scripted, 6)
    s = run_judge(a, b, scripted("judge"), aspect="detail", threads=1, max_tokens=32, parallel=2)
    assert (s.wins, s.ties, s.losses, s.n) == (0, 6, 0, 6) and s.score == 0.5 and s.no_verdict == 0
    lines = [json.loads(x) for x in Path(s.verdicts).read_text().splitlines()]
    assert all(rec["first"] == "A" and rec["second"] == "A" and rec["verdict"] == "tie" for rec in lines)
    again = run_judge(a, b, scripted("judge"), aspect="detail", threads=1, max_tokens=32, parallel=2)
    assert again.done_now == 0 and again.n == 6  # nothing judged twice
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "judge", str(a), str(b), "--judge", str(scripted("judge")),
                        "--max-tokens", "32", "--threads", "1", "--json", "--html", str(tmp_path / "page.html")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {k: data[k] for k in ("wins", "ties", "losses", "n")} == {"wins": 0, "ties": 6, "losses": 0, "n": 6}
    assert len(data["interval"]) == 2 and "Judge: detail" in (tmp_path / "page.html").read_text()


def test_judge_resumes_after_kill_9_without_counting_a_pair_twice(tmp_path, scripted):
    a, b = _answers(tmp_path, scripted, 24)
    out = tmp_path / "verdicts.jsonl"
    cmd = [sys.executable, "-m", "localaug.cli", "judge", str(a), str(b), "--judge", str(scripted("judge")), "-o", str(out),
           "--max-tokens", "32", "--threads", "1", "--parallel", "1", "--json"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and (not out.exists() or out.read_bytes().count(b"\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes().count(b"\n")
    assert 0 < before < 24
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    keys = [json.loads(x)["key"] for x in out.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 24 and json.loads(r.stdout)["n"] == 24
