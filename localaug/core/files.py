"""Files written whole or not at all, read back leniently, hashed, and locked between processes.

- ``temp_beside(dest)``: a fresh temporary name in ``dest``'s folder, always removed afterwards;
  the writer renames it onto ``dest`` when complete (``atomic_output`` does both), so a crash never
  leaves something that looks finished. OSErrors become one-line ``WriteError``s. The name holds
  the writer's pid (``.NAME.PID.RANDOM.part``): a later writer of the same file removes the parts
  a killed process left. A finished file gets the permissions the umask gives (not mkstemp's
  0600), and ``dest`` must be a regular file (or absent): a FIFO or device is never replaced.
- ``refuse_overwriting_inputs``: an output may not be one of the files a command reads (by any
  name: hard links and symlinks are resolved).
- ``write_json_atomic`` / ``read_json``: small JSON files (manifests); a missing or damaged file
  reads as None. Everything localaug writes as JSON is strict JSON: ``finite_json`` maps NaN and
  the infinities (a metric that is undefined) to null, and the writers refuse any that remain.
- ``sha256_file``: the sha256 of a file, read in 8 MiB chunks.
- ``exclusive_lock`` / ``locked``: inter-process locks through ``filelock`` (fcntl on POSIX, msvcrt
  on Windows), held by the OS, so a killed process never leaves a stale lock. The lock file stays
  after release: removing it would race a process waiting on it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from localaug.core.errors import LocalaugError, UsageError, WriteError, opt
from localaug.core.progress import QUIET_BELOW, SILENT, current
from localaug.core.settings import localaug_home

CHUNK = 8 << 20


@contextlib.contextmanager
def temp_beside(dest: Path, param: str = "output") -> Iterator[Path]:
    """Yield a fresh temporary path in ``dest``'s folder; it is always removed afterwards.

    OSErrors raised inside the block (other than localaug's own) become one-line WriteErrors (disk
    full named as such); ``param`` is the setting that chose ``dest``, named in the advice."""
    dest = Path(dest)
    parent = dest.parent
    if not parent.is_dir():
        if parent.exists():
            raise WriteError(f"output folder {parent} is a file, not a folder: pass another {opt(param)}", path=str(dest))
        raise WriteError(f"output folder {parent} does not exist: create it or pass another {opt(param)}", path=str(dest))
    if dest.exists() and not dest.is_file():
        raise UsageError(f"{opt(param)} {dest} is not a regular file (a folder, FIFO or device): give a file path",
                         path=str(dest))
    sweep_stale_parts(dest)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{dest.name}.{os.getpid()}.", suffix=".part")
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError as e:
        raise WriteError(f"cannot write in {parent}: {e.strerror}; pass a writable {opt(param)} path", path=str(dest)) from e
    finally:
        with contextlib.suppress(UnboundLocalError, OSError):
            os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
    except LocalaugError:
        raise  # ours (a StoreError, a WriteError... are OSErrors too) already say what to do
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise WriteError(f"disk full while writing {dest}: free space in {parent} and retry", path=str(dest)) from e
        raise WriteError(f"writing {dest} failed: {e.strerror or e}", path=str(dest)) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sweep_stale_parts(dest: Path) -> int:
    """Remove the temporary files beside ``dest`` that a dead process left (their name holds its
    pid); the number removed."""
    removed = 0
    prefix = f".{dest.name}."
    with contextlib.suppress(OSError):
        for part in dest.parent.iterdir():
            name = part.name
            if not (name.startswith(prefix) and name.endswith(".part")):
                continue
            pid = name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    part.unlink()
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: keep its file
    return True


def _umask() -> int:
    """The process umask (read from /proc where it can be; else set and restored at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_overwriting_inputs(output: Path | Iterable[Path], inputs: Iterable[Path], param: str = "output") -> None:
    """A UsageError when ``output`` (or any of several outputs) is one of ``inputs``: the same
    file by any name (a hard link, or a symlink on either side)."""
    outputs = [Path(output)] if isinstance(output, (str, os.PathLike)) else [Path(o) for o in output]
    existing = [o for o in outputs if o.exists()]
    if not existing:
        return
    for path in inputs:
        for out in existing:
            with contextlib.suppress(OSError):
                if os.path.samefile(out, path):
                    raise UsageError(f"{opt(param)} {out} is one of the files this reads ({path}): choose another "
                                     f"{opt(param)}", path=str(out))


@contextlib.contextmanager
def atomic_output(dest: Path, param: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; it becomes ``dest`` only if the block succeeds."""
    with temp_beside(dest, param) as tmp:
        yield tmp
        os.replace(tmp, dest)


def finite_json(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite (an undefined metric) replaced by None,
    so that it can be written as strict JSON; containers are copied only where something changes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps_strict(value: Any, **kw: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (``finite_json`` maps them to null); other
    objects are written as their text (``default=str``)."""
    try:
        return json.dumps(value, allow_nan=False, default=str, **kw)
    except ValueError:  # a non-finite float somewhere (rare): copy with nulls in its place
        return json.dumps(finite_json(value), allow_nan=False, default=str, **kw)


def write_json_atomic(path: Path, data: Any, param: str = "output") -> None:
    """``data`` as strict, indented JSON at ``path``, whole or not at all (readable UTF-8; text
    that is not valid Unicode, such as a file name's undecodable bytes, is written escaped)."""
    text = dumps_strict(data, indent=2, ensure_ascii=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        encoded = dumps_strict(data, indent=2, ensure_ascii=True).encode("utf-8")
    write_atomic(path, encoded + b"\n", param)


def write_atomic(path: Path, data: bytes | str, param: str = "output") -> None:
    """A whole small file (a page, a figure, a summary): written beside ``path``, fsync'd, then
    renamed onto it, so a reader never sees half of it."""
    with temp_beside(path, param) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def read_bounded(path: Path, limit: int) -> str:
    """A text file's contents (UTF-8); ValueError when it is over ``limit`` bytes (never read whole)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"over {limit} bytes")
    return data.decode("utf-8")


MAX_JSON_FILE = 64 << 20  # a manifest or cache larger than this is not one of ours


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, over MAX_JSON_FILE or
    not an object."""
    try:
        data = json.loads(read_bounded(Path(path), MAX_JSON_FILE))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path: Path) -> str:
    """The file's sha256; a big file (a model) reports a "hashing" phase as it is read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        shown = current() if size >= QUIET_BELOW else SILENT
        shown.stage(f"hashing {path.name}", size, "bytes")
        while chunk := f.read(CHUNK):
            h.update(chunk)
            shown.advance(len(chunk))
        shown.finish()
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
    """A (model) file's sha256, hashed once and cached by (path, size, mtime) in LOCALAUG_HOME."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = localaug_home() / "sha256-cache.json"
    cache = read_json(cache_file) or {}
    if ident in cache:
        return str(cache[ident])
    cache[ident] = digest = sha256_file(path)
    with contextlib.suppress(OSError, WriteError, UsageError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, cache)
    return digest


@contextlib.contextmanager
def exclusive_lock(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` if no other process does; yields False (holding nothing) when one does."""
    held = FileLock(str(lock), is_singleton=False, preserve_lock_file=True)
    try:
        held.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        held.release()


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Wait for ``lock`` and hold it (serialises read-modify-write of a file between processes)."""
    with FileLock(str(lock), is_singleton=False, preserve_lock_file=True):
        yield
