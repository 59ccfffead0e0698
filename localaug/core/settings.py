"""Environment-variable settings, read in one place.

``LOCALAUG_HOME``: the local model store and caches (default ``$XDG_CACHE_HOME/localaug``, which is
``~/.cache/localaug`` when XDG_CACHE_HOME is unset, as huggingface_hub does for its cache).
Hugging Face's own variables (``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``) are
honoured by huggingface_hub itself; we only read ``HF_HUB_OFFLINE`` to word errors well.
``LOCALAUG_PARALLEL``: a batch size to use instead of the calibrated one (see runtime.calibrate).
``LOCALAUG_PROGRESS_INTERVAL``: seconds between two progress lines when stderr is not a terminal.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "on", "yes", "true"}


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def localaug_home() -> Path:
    return Path(os.environ.get("LOCALAUG_HOME") or cache_home() / "localaug").expanduser()


def default_parallel() -> int | None:
    """``LOCALAUG_PARALLEL``: the batch size to use when none is given, instead of calibrating."""
    value = os.environ.get("LOCALAUG_PARALLEL", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


PROGRESS_INTERVAL = 10.0  # seconds: a log gets a progress line at most this often


def progress_interval() -> float:
    """``LOCALAUG_PROGRESS_INTERVAL``: the seconds between two plain progress lines (stderr not a
    terminal); 0 prints every step. Unset or not a number >= 0: ``PROGRESS_INTERVAL``."""
    try:
        value = float(os.environ.get("LOCALAUG_PROGRESS_INTERVAL", "").strip())
    except ValueError:
        return PROGRESS_INTERVAL
    return value if value >= 0 and value == value and value != float("inf") else PROGRESS_INTERVAL


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
