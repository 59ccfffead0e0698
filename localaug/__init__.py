"""localaug: an offline, on-prem runtime for the Qwen2 Refine/Exp data-augmentation models.

The public API lives in ``localaug.api`` and is importable from here too
(``from localaug import Augmenter``); it is loaded on first use, so ``import localaug`` stays light.
"""

from __future__ import annotations

from typing import Any

from localaug._version import __version__

__all__ = ["__version__", "Augmenter", "Pair", "run_job", "merge_outputs", "doctor", "run_grade", "run_verdicts", "export_output",
           "JudgeOptions", "Selection"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from localaug import api

        return getattr(api, name)
    raise AttributeError(f"module 'localaug' has no attribute {name!r}")
