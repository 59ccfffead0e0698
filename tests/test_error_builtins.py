"""Each of localaug's errors is also the built-in exception of its kind (``except ValueError`` catches
a UsageError, ``except FileNotFoundError`` a ModelNotFoundError), while its message, structured
fields, pickling, exit code and HTTP status stay what they were; and the ``except`` sites that
could now catch more than before still let our errors through as they came.
"""

from __future__ import annotations

import errno
import inspect
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localaug.core import errors
from localaug.core.errors import (
    BundleError,
    CheckpointError,
    ConversionError,
    DownloadError,
    EngineError,
    GGUFError,
    JobError,
    JobInterrupted,
    JobLockedError,
    LocalaugError,
    ModelNotFoundError,
    PromptTooLongError,
    QueueFullError,
    RemoteError,
    ReplyParseError,
    StoreError,
    TemplateRenderError,
    UnsupportedModelError,
    UsageError,
    WriteError,
    opt,
)
from localaug.core.files import temp_beside

# class -> (the built-ins it is, its CLI exit code, its HTTP status), as each was before it had a built-in
KINDS: dict[type[LocalaugError], tuple[tuple[type[Exception], ...], int, int]] = {
    UsageError: ((ValueError,), 2, 400),
    CheckpointError: ((ValueError,), 1, 400),
    UnsupportedModelError: ((ValueError,), 1, 400),
    ConversionError: ((RuntimeError,), 1, 500),
    WriteError: ((OSError, RuntimeError), 1, 500),
    ModelNotFoundError: ((FileNotFoundError,), 1, 404),
    StoreError: ((OSError,), 1, 500),
    GGUFError: ((ValueError,), 1, 500),
    BundleError: ((ValueError,), 1, 500),
    DownloadError: ((ConnectionError,), 1, 502),
    JobError: ((RuntimeError,), 1, 500),
    JobLockedError: ((BlockingIOError, RuntimeError), 1, 500),
    JobInterrupted: ((), 130, 500),
    QueueFullError: ((RuntimeError,), 1, 429),
    EngineError: ((RuntimeError,), 1, 500),
    PromptTooLongError: ((ValueError,), 1, 400),
    ReplyParseError: ((ValueError,), 1, 400),
    TemplateRenderError: ((RuntimeError,), 1, 500),
    RemoteError: ((ConnectionError,), 1, 502),
}
BUILTINS = (ValueError, OSError, RuntimeError, LookupError, TypeError, ArithmeticError, KeyboardInterrupt)


def test_every_error_class_has_a_row() -> None:
    defined = {c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, LocalaugError)}
    assert defined - {LocalaugError} == set(KINDS)


@pytest.mark.parametrize("cls", list(KINDS), ids=lambda c: c.__name__)
def test_each_error_is_its_builtin_and_keeps_its_codes(cls: type[LocalaugError]) -> None:
    builtins, exit_code, http_status = KINDS[cls]
    e = cls(f"cannot do it: lower {opt('max_tokens')}", path="/x")
    for builtin in builtins:
        assert isinstance(e, builtin)
    # it is no other kind: an `except ValueError` does not catch a StoreError
    assert [b for b in BUILTINS if isinstance(e, b) and not any(issubclass(k, b) for k in builtins)] == []
    assert (cls.exit_code, cls.http_status) == (exit_code, http_status)
    # ours first in the method order: str(), pickling and a handler looked up by the MRO
    # (Starlette's, for the HTTP status) are LocalaugError's
    mro = cls.__mro__
    assert all(mro.index(LocalaugError) < mro.index(b) for b in builtins)
    assert str(e) == "cannot do it: lower max_tokens"
    assert e.render(lambda p: "--" + p.replace("_", "-")) == "cannot do it: lower --max-tokens"
    assert e.args == ("cannot do it: lower \x00max_tokens\x00",) and e.fields == {"path": "/x"}
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.fields == {"path": "/x"}


def test_an_oserror_of_ours_has_no_errno_so_it_is_never_taken_for_a_system_error() -> None:
    e = StoreError("the store folder /s already holds 'a', not 'b': delete that folder")
    assert (e.errno, e.strerror, e.filename) == (None, None, None)
    assert str(e) == "the store folder /s already holds 'a', not 'b': delete that folder"
    lock = JobLockedError("another localaug run is writing out.jsonl: wait for it", path="out.jsonl")
    assert str(lock) == "another localaug run is writing out.jsonl: wait for it" and lock.errno is None


def test_the_command_exits_as_before(tmp_path: Path) -> None:
    from localaug.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["rm", "no-such-model"], env={"LOCALAUG_HOME": str(tmp_path)})  # a ModelNotFoundError
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no-such-model is not in the store: `localaug models` lists it"


# -- except sites that an error of ours could now reach -------------------------------------------

# core/files.temp_beside turns an OSError raised while the temp file is written into a WriteError;
# our own errors (StoreError, ModelNotFoundError, WriteError...: OSErrors now) go through as they came.


@pytest.mark.parametrize("error", [
    StoreError("/s/Q8_0.gguf fails its sha256 check, so no bundle was written: re-pull it"),
    ModelNotFoundError("m is not in the store: `localaug pull m` first"),
    WriteError("cannot write in /w: Permission denied; pass a writable output path", path="/w/x"),
    DownloadError("cannot reach the Hugging Face hub"),
    JobLockedError("another localaug run is writing out.jsonl"),
], ids=lambda e: type(e).__name__)
def test_temp_beside_lets_our_errors_through(tmp_path: Path, error: LocalaugError) -> None:
    dest = tmp_path / "out.json"
    with pytest.raises(type(error)) as caught:
        with temp_beside(dest) as tmp:
            tmp.write_bytes(b"half written")
            raise error
    assert caught.value is error
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def test_temp_beside_still_words_a_full_disk(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    with pytest.raises(WriteError) as caught:
        with temp_beside(dest) as tmp:
            tmp.write_bytes(b"half written")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == f"disk full while writing {dest}: free space in {tmp_path} and retry"
    assert caught.value.fields == {"path": str(dest)}
    assert list(tmp_path.iterdir()) == []
