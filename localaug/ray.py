"""The Ray entry points under their public name: ``from localaug.ray import augment``.

Re-exports ``localaug.jobs.on_ray`` (the only module that imports Ray); needs the ``ray`` extra."""

from __future__ import annotations

from localaug.jobs.on_ray import augment, run_job

__all__ = ["augment", "run_job"]
