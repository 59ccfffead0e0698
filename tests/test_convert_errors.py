"""`localaug convert` on bad input: one clear line, the right exit code, and nothing left behind.

Every failure must leave the output folder as it was: no file at the -o path (or the old file
there, byte for byte) and no ``.part`` temporary. Checkpoint problems are driven through Typer's
CliRunner; disk-full and read-only destinations use a real tmpfs where this machine allows
mounting (root in CI) and a file-level fault otherwise; Ctrl-C is a real SIGINT to a real process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner, Result

from localaug.cli.main import app
from localaug.convert import OUTPUT_TYPES

REPO = Path(__file__).resolve().parents[1]
OLD = b"an older model that must survive a failed conversion\n"
PLAIN_LINE = re.compile(r"^(writing (F32|F16|BF16|Q8_0)|quantizing [A-Z0-9_]+): ")


@pytest.fixture(autouse=True)
def _plain_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich treats these as "this is a terminal"; the tests are about the non-TTY output.
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------- helpers


def convert(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["convert", *map(str, args)])


def assert_one_line_error(result: Result, exit_code: int, *needles: str) -> str:
    """A single ``error: ...`` line on stderr naming ``needles``, and the expected exit code."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    message = lines[-1]
    assert message.startswith("error: "), result.stderr
    assert [ln for ln in lines if not PLAIN_LINE.match(ln)] == [message], f"more than one message line:\n{result.stderr}"
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    assert result.exit_code == exit_code, (result.exit_code, message)
    assert result.stdout == "", result.stdout
    return message


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.part")) + sorted(p.name for p in folder.glob(".*.part"))


def assert_nothing_written(dest: Path, old: bytes | None = None) -> None:
    if old is None:
        assert not dest.exists(), f"{dest} was left behind"
    else:
        assert dest.read_bytes() == old, f"{dest} was changed by a failed conversion"
    if dest.parent.is_dir():
        assert leftovers(dest.parent) == [], leftovers(dest.parent)


def private_copy(src: Path, dst: Path) -> Path:
    """A checkpoint folder of our own: config.json copied, every other file a symlink into the
    shared fixture. Replace files (``replace_file``), never edit through the links."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "config.json":
            shutil.copyfile(f, dst / f.name)
        else:
            (dst / f.name).symlink_to(f)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # drop the link first: the shared fixture stays untouched
    path.write_bytes(data)


def edit_config(ckpt: Path, **changes: object) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    replace_file(ckpt / "config.json", json.dumps(config).encode())


def read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def rewrite_safetensors(ckpt: Path, header: dict, data_bytes: int | None = None) -> None:
    """Replace model.safetensors by ``header`` over the original data (cut to ``data_bytes``)."""
    path = ckpt / "model.safetensors"
    _, base = read_header(path)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path.resolve(), "rb") as src:
        path.unlink()
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            src.seek(base)
            if data_bytes is None:
                shutil.copyfileobj(src, out, 16 << 20)
            else:
                out.write(src.read(data_bytes))


def descendants(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; zombies left out)."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (d / "stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                kids.append(int(d.name))
    return kids


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, readonly: bool = False, setup: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A small tmpfs at ``path`` (skips the test where mounting is not allowed); always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        if setup:
            setup(path)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --------------------------------------------------------------------------- bad checkpoints


def _no_config(c: Path) -> None:
    (c / "config.json").unlink()


def _no_weights(c: Path) -> None:
    (c / "model.safetensors").unlink()


def _llama(c: Path) -> None:
    edit_config(c, architectures=["LlamaForCausalLM"], model_type="llama")


def _garbage_header(c: Path) -> None:
    junk = b"{this is not: json" + b" " * 46
    replace_file(c / "model.safetensors", struct.pack("<Q", len(junk)) + junk + bytes(1024))


def _absurd_header_length(c: Path) -> None:
    replace_file(c / "model.safetensors", struct.pack("<Q", 1 << 62) + b"{}" + bytes(1024))


def _header_past_end(c: Path) -> None:
    replace_file(c / "model.safetensors", struct.pack("<Q", 4096) + b'{"a": 1}' + bytes(100))


def _truncated(c: Path) -> None:
    header, base = read_header(c / "model.safetensors")
    size = (c / "model.safetensors").stat().st_size
    rewrite_safetensors(c, header, data_bytes=(size - base) // 2)  # a download cut short halfway


def _hidden_size(c: Path) -> None:
    edit_config(c, hidden_size=512)


def _intermediate_size(c: Path) -> None:
    edit_config(c, intermediate_size=1024)


def _missing_tensor(c: Path) -> None:
    header, _ = read_header(c / "model.safetensors")
    del header["model.layers.1.mlp.up_proj.weight"]
    rewrite_safetensors(c, header)


def _missing_shard(c: Path) -> None:
    header, _ = read_header(c / "model.safetensors")
    weight_map = {name: "model.safetensors" for name in header if name != "__metadata__"}
    weight_map["model.layers.1.mlp.down_proj.weight"] = "model-00002-of-00002.safetensors"
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    replace_file(c / "model.safetensors.index.json", json.dumps(index).encode())


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "missing-config": (_no_config, ("config.json",)),
    "no-weights": (_no_weights, ("no *.safetensors", "download")),
    "unsupported-architecture": (_llama, ("LlamaForCausalLM", "Qwen2ForCausalLM", "GGUF")),
    "garbage-header-json": (_garbage_header, ("model.safetensors", "corrupt", "re-download")),
    "absurd-header-length": (_absurd_header_length, ("model.safetensors", "corrupt", "re-download")),
    "header-past-end-of-file": (_header_past_end, ("model.safetensors", "corrupt", "re-download")),
    "truncated-data": (_truncated, ("model.safetensors", "truncated", "re-download")),
    "hidden-size-disagrees": (_hidden_size, ("model.embed_tokens.weight", "shape", "config.json")),
    "intermediate-size-disagrees": (_intermediate_size, ("mlp", "shape", "config.json")),
    "missing-tensor": (_missing_tensor, ("model.layers.1.mlp.up_proj.weight", "lacks", "download")),
    "index-names-missing-shard": (_missing_shard, ("model-00002-of-00002.safetensors", "missing", "download")),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line_and_writes_nothing(case: str, qwen2_tied: Path, tmp_path: Path) -> None:
    break_it, needles = BAD_CHECKPOINTS[case]
    ckpt = private_copy(qwen2_tied, tmp_path / "ckpt")
    break_it(ckpt)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "m.gguf"
    assert_one_line_error(convert(ckpt, "-q", "F16", "-o", dest), 1, *needles)
    assert_nothing_written(dest)
    assert list(out.iterdir()) == []


def test_source_that_is_not_a_folder(tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    assert_one_line_error(convert(tmp_path / "nope", "-o", dest), 1, "not a directory", "checkpoint folder")
    assert_nothing_written(dest)


def test_pickle_weights_are_refused_never_loaded(qwen2_tied: Path, tmp_path: Path) -> None:
    ckpt = private_copy(qwen2_tied, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    sentinel = tmp_path / "unpickled"

    class Payload:  # unpickling this creates `sentinel`: proof that the file was loaded
        def __reduce__(self):
            return (os.mkdir, (str(sentinel),))

    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    dest = tmp_path / "m.gguf"
    assert_one_line_error(convert(ckpt, "-q", "F16", "-o", dest), 1, "pickle", "never unpickles", "safetensors")
    assert not sentinel.exists(), "the pickle file was loaded"
    assert_nothing_written(dest)


def test_bad_checkpoint_leaves_an_existing_destination_intact(qwen2_tied: Path, tmp_path: Path) -> None:
    ckpt = private_copy(qwen2_tied, tmp_path / "ckpt")
    _truncated(ckpt)
    dest = tmp_path / "m.gguf"
    dest.write_bytes(OLD)
    assert_one_line_error(convert(ckpt, "-o", dest), 1, "truncated")
    assert_nothing_written(dest, OLD)


# --------------------------------------------------------------------------- bad options and destinations


def test_unknown_quant_type_is_a_usage_error(qwen2_tied: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    message = assert_one_line_error(convert(qwen2_tied, "-q", "Q9_X", "-o", dest), 2, "Q9_X")
    for valid in ("F16", "Q8_0", "Q4_K_M", "Q6_K"):
        assert valid in message
    assert set(OUTPUT_TYPES) <= set(re.findall(r"[A-Z0-9_]+", message))
    assert_nothing_written(dest)


def test_output_folder_that_does_not_exist(qwen2_tied: Path, tmp_path: Path) -> None:
    dest = tmp_path / "no" / "such" / "folder" / "m.gguf"
    assert_one_line_error(convert(qwen2_tied, "-q", "F16", "-o", dest), 1, str(dest.parent), "does not exist", "-o")
    assert not (tmp_path / "no").exists(), "the converter created folders it was not asked to"


def test_output_folder_that_is_a_file(qwen2_tied: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "models"
    blocker.write_bytes(OLD)
    assert_one_line_error(convert(qwen2_tied, "-q", "F16", "-o", blocker / "m.gguf"), 1, str(blocker), "not a folder", "-o")
    assert blocker.read_bytes() == OLD
    assert leftovers(tmp_path) == []


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder holding an old m.gguf that cannot be written to: mode 0555, or for root (who
    ignores permission bits) a tmpfs remounted read-only (EROFS)."""
    def put_old(d: Path) -> None:
        (d / "m.gguf").write_bytes(OLD)

    if os.geteuid() != 0:
        path.mkdir()
        put_old(path)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
    else:
        with tmpfs(path, "1m", readonly=True, setup=put_old) as d:
            yield d


def test_output_folder_that_is_read_only(qwen2_tied: Path, tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "ro") as ro:
        dest = ro / "m.gguf"
        assert_one_line_error(convert(qwen2_tied, "-q", "F16", "-o", dest), 1, "cannot write", str(ro), "writable -o")
        assert_nothing_written(dest, OLD)
        assert sorted(p.name for p in ro.iterdir()) == ["m.gguf"]


# --------------------------------------------------------------------------- disk full


class _FillingFile:
    """A file on a disk with ``room`` bytes left: the write that does not fit is partly done, then
    fails with ENOSPC, as write(2) does on a full disk."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes > self._room:
            self._f.write(view[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= view.nbytes
        return self._f.write(view)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@pytest.mark.parametrize(("quant", "existing"), [("F16", None), ("Q4_K_M", OLD)], ids=["direct-F16", "intermediate-of-Q4_K_M"])
def test_disk_full_while_writing(
    quant: str, existing: bytes | None, qwen2_tied: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    def filling_open(name, mode="r", *args, **kwargs):
        opened.append(str(name))
        return _FillingFile(open(name, mode, *args, **kwargs), room=12 << 20)  # past the header, into the weights

    monkeypatch.setattr(gguf.gguf_writer, "open", filling_open, raising=False)
    dest = tmp_path / "m.gguf"
    if existing is not None:
        dest.write_bytes(existing)
    assert_one_line_error(convert(qwen2_tied, "-q", quant, "-o", dest), 1, "disk full", str(tmp_path), "free space")
    assert opened and all(name.endswith(".part") for name in opened), opened
    assert_nothing_written(dest, existing)


def test_disk_full_on_a_real_small_filesystem(qwen2_tied: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "8m") as small:
        dest = small / "m.gguf"
        assert_one_line_error(convert(qwen2_tied, "-q", "F16", "-o", dest), 1, "disk full", str(small))
        assert list(small.iterdir()) == []


def test_disk_full_in_the_quantizer(qwen2_tied: Path, tmp_path: Path) -> None:
    # Room for the BF16 intermediate (77 MB) but not also for the Q4_K_M result (37 MB): the
    # llama.cpp quantizer, in its child process, is the one that runs out of space.
    with tmpfs(tmp_path / "small", "96m", setup=lambda d: (d / "m.gguf").write_bytes(OLD)) as small:
        dest = small / "m.gguf"
        assert_one_line_error(convert(qwen2_tied, "-q", "Q4_K_M", "--threads", "1", "-o", dest), 1, "disk full", str(small))
        assert_nothing_written(dest, OLD)
        assert sorted(p.name for p in small.iterdir()) == ["m.gguf"]


# --------------------------------------------------------------------------- success output


def test_q4_k_m_through_the_cli_prints_plain_lines_when_not_a_tty(qwen2_tied: Path, tmp_path: Path) -> None:
    dest = tmp_path / "a-folder-name-long-enough-to-wrap-an-80-column-line" / "m.gguf"
    dest.parent.mkdir()
    result = convert(qwen2_tied, "-q", "Q4_K_M", "-o", dest)
    assert result.exit_code == 0, result.output
    assert dest.is_file() and leftovers(dest.parent) == []
    with open(dest, "rb") as f:
        assert f.read(4) == b"GGUF"
    weights = sum(p.stat().st_size for p in qwen2_tied.glob("*.safetensors"))
    assert dest.stat().st_size < 0.6 * weights  # quantized: well under the bf16 weights

    stdout = result.stdout.splitlines()
    assert len(stdout) == 1, result.stdout  # one result line, not wrapped at 80 columns
    assert re.fullmatch(rf"wrote {re.escape(str(dest))} \(Q4_K_M, [\d.]+ MB, [\d.]+ M parameters\) in [\d.]+s", stdout[0])

    err = result.stderr
    assert "\r" not in err and "\x1b" not in err and "━" not in err, repr(err)  # no live bar
    lines = err.splitlines()
    assert all(PLAIN_LINE.match(ln) for ln in lines), err
    stages = [ln for ln in lines if not re.search(r"\d%", ln)]  # periodic percentage lines may come in between
    assert re.fullmatch(r"writing BF16: [\d.]+ MB", stages[0]), stages
    assert re.fullmatch(r"writing BF16: done in \d+:\d\d:\d\d · [\d.]+ MB", stages[1]), stages
    assert re.fullmatch(r"quantizing Q4_K_M: \d+ tensors", stages[2]), stages
    assert re.fullmatch(r"quantizing Q4_K_M: done in \d+:\d\d:\d\d · \d+ tensors", stages[3]), stages
    assert len(stages) == 4, stages


# --------------------------------------------------------------------------- Ctrl-C


def _spawn(*args: str | Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    return subprocess.Popen(
        [sys.executable, "-m", "localaug.cli", "convert", *map(str, args)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,  # its own process group, as a terminal job is
    )


def _wait_until(proc: subprocess.Popen[str], what: str, ready: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the conversion ended (rc {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _part_size(folder: Path, skip: str = "\0") -> int:
    sizes = []
    for p in folder.glob(".*.part"):
        with contextlib.suppress(FileNotFoundError):
            if skip not in p.name:
                sizes.append(p.stat().st_size)
    return max(sizes, default=-1)


def _assert_interrupted(rc: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    others = [ln for ln in lines if not PLAIN_LINE.match(ln)]
    assert len(others) == 1 and others[0].startswith("interrupted:"), stderr
    assert rc == 130, (rc, stderr)


def test_ctrl_c_while_writing(qwen2_tied: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    proc = _spawn(qwen2_tied, "-q", "F32", "-o", dest)  # F32: the largest, slowest direct write
    _wait_until(proc, "the .part file was being written", lambda: _part_size(tmp_path) > 0)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=60)
    _assert_interrupted(proc.returncode, err)
    assert out == ""
    assert_nothing_written(dest)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_quantizing_kills_the_quantizer(qwen2_tied: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    dest.write_bytes(OLD)
    proc = _spawn(qwen2_tied, "-q", "Q4_K_M", "--threads", "1", "-o", dest)
    assert proc.stderr is not None
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    quantizers: list[int] = []

    def quantizer_is_writing() -> bool:
        if not any(ln.startswith("quantizing") for ln in err_lines):
            return False
        quantizers[:] = descendants(proc.pid)
        return bool(quantizers) and _part_size(tmp_path, skip=".BF16.") > 0  # the child's own output

    try:
        _wait_until(proc, "the quantizer child was writing", quantizer_is_writing)
        for pid in quantizers:  # frozen mid-tensor, like a long C call: it can only end by being killed
            os.kill(pid, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGINT)  # only the parent: it alone must stop its child
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the interrupted conversion waited for its quantizer instead of killing it")
        assert [pid for pid in quantizers if alive(pid)] == [], "the quantizer child outlived the interrupted conversion"
    finally:
        for pid in [proc.pid, *quantizers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    reader.join(timeout=10)
    _assert_interrupted(rc, "".join(err_lines))
    assert_nothing_written(dest, OLD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
