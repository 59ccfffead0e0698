"""The public Python API (re-exports only).

    from localaug import Augmenter, Pair
    aug = Augmenter.load("qwen2-refine:1.5b")          # a family name, repo id, GGUF path or checkpoint dir
    aug.refine("Create a travel guide for Hangzhou.")
    aug.expand("Plan a tour of France.", n=3)
    aug.pairs([Pair("Name three primary colors.", "Red, yellow and blue.")], n=2)

Each method has a ``*_stream`` twin that yields text as it is generated. ``run_job`` runs a task
over a dataset (resumable), ``merge_outputs`` joins job outputs, ``run_grade`` / ``run_verdicts``
judge the answers of a respond output, ``export_output`` writes a training file from judged
answers, ``doctor`` describes the install.

``run_job`` takes its settings as keywords (``threads=2, rouge_l=0.5``) or as the objects the
command line and the server build (``engine=EngineSettings(threads=2)``, ``sampling=...``,
``filters=...``): one name per setting at every layer (docs/configuration.md).
"""

from __future__ import annotations

from localaug.augment.augmenter import Augmenter
from localaug.augment.doctor import doctor
from localaug.augment.resolve import DEFAULT_MODELS, ResolvedModel, default_sampling, resolve_model, resolve_style
from localaug.augment.settings import EngineSettings, FilterSettings, SamplingSettings
from localaug.augment.tasks import ExpandResult
from localaug.family.prompts import Pair
from localaug.jobs.grade import JudgeOptions, run_grade, run_verdicts
from localaug.jobs.merge import MergeSummary, merge_outputs
from localaug.jobs.options import JobOptions
from localaug.jobs.preference import Selection, export_output
from localaug.jobs.run import JobSummary, run_job
from localaug.runtime.sampling import SamplingParams
from localaug.runtime.stream import Generation

__all__ = [
    "DEFAULT_MODELS", "Augmenter", "EngineSettings", "ExpandResult", "FilterSettings", "Generation", "JobOptions",
    "JobSummary", "JudgeOptions", "MergeSummary", "Pair", "ResolvedModel", "SamplingParams", "SamplingSettings", "Selection",
    "default_sampling", "doctor", "export_output", "merge_outputs",
    "resolve_model", "resolve_style", "run_grade", "run_job", "run_verdicts",
]
