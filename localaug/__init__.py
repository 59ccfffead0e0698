"""localaug: an offline, on-prem runtime for the Qwen2 Refine/Exp data-augmentation models."""

from localaug._version import __version__

__all__ = ["__version__"]
