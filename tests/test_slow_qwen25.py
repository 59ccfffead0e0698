"""Opt-in (python -m pytest -m slow): the real Qwen2.5-Coder-1.5B Q4_K_M, the Qwen2-1.5B stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localaug.api import Augmenter
from localaug.family.styles import build_prompt
from localaug.runtime.bench import BENCH_PROMPT, run_bench

pytestmark = pytest.mark.slow
NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


@pytest.fixture(scope="module")
def qwen25() -> Path:
    folder = Path(os.environ.get("LOCALAUG_TEST_MODELS") or Path.home() / ".cache" / "localaug-test-models")
    tool = Path(__file__).resolve().parents[2] / "shared" / "tools" / "fetch-test-models"
    if not (folder / NAME).is_file() and tool.is_file():
        subprocess.run([str(tool), "qwen25-coder-1.5b", "--dir", str(folder)], check=True, env={**os.environ, "PYTHON": sys.executable})
    if not (folder / NAME).is_file():
        pytest.skip("run fetch-test-models qwen25-coder-1.5b first")
    return folder / NAME


def test_refine_and_expand_with_the_qwen2_chat_format(qwen25: Path) -> None:
    with Augmenter.load(qwen25, prompt_format="qwen2-chatml", threads=2, n_ctx=2048) as aug:
        refined, gen = aug.refine_full("Create a travel guide for Hangzhou.", seed=1, max_tokens=160)
        assert gen.finish_reason in ("stop", "length") and len(refined) > 40
        assert "Hangzhou" in refined or "杭州" in refined
        # Same seed, same output on the same build and device.
        assert aug.refine("Create a travel guide for Hangzhou.", seed=1, max_tokens=160) == refined


def test_decode_keeps_up_with_raw_llama_cpp(qwen25: Path) -> None:
    with Augmenter.load(qwen25, prompt_format="qwen2-chatml", threads=2, n_ctx=1024) as aug:
        result = run_bench(aug.engine, build_prompt(aug.style, "refine", BENCH_PROMPT), n_tokens=32, repeats=2)
    print(result.to_dict())
    assert result.decode_vs_raw >= 0.9


def test_the_readme_expand_example_in_teacher_mode_gives_n_distinct_instructions(qwen25: Path) -> None:
    """The README's expand seed is the input of no example shown for it, so the model does not copy one."""
    seed = "Plan an in depth tour itinerary of France that includes Paris, Lyon, and Provence."
    r = subprocess.run([sys.executable, "-m", "localaug.cli", "expand", seed, "-n", "3", "--model", str(qwen25),
                        "--threads", "2", "--json", "--seed", "0"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["instructions"]) == len(set(data["instructions"])) == 3 and data["shortfall"] == 0
    print(data["rejected"], data["samples"])
