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
