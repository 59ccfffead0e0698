"""The options the commands share, typed once: choices are enums built from the product's own tables,
so ``--help`` lists them and the parser refuses a typo (exit 2)."""

from __future__ import annotations

import copy
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer

from localaug.convert import OUTPUT_TYPES
from localaug.family.judging import ASPECTS
from localaug.family.prompts import FAMILY_FORMATS
from localaug.family.registry import TASKS
from localaug.family.styles import TEACHER
from localaug.jobs import DEDUP_MODES, MERGE_DEDUP, PREFERENCE_RULES
from localaug.jobs.dataio import EXPORT_FORMATS, RECORD_FORMATS, RESPONSE_FORMATS
from localaug.runtime import DEVICES


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


Device = _choices("Device", DEVICES)
Task = _choices("Task", TASKS)
PromptFormat = _choices("PromptFormat", (*FAMILY_FORMATS, TEACHER))
OutputFormat = _choices("OutputFormat", (*RECORD_FORMATS, *EXPORT_FORMATS))
TrainingFormat = _choices("TrainingFormat", RESPONSE_FORMATS)  # a training file whose examples have responses
Dedup = _choices("Dedup", DEDUP_MODES)
MergeDedup = _choices("MergeDedup", MERGE_DEDUP)
PreferenceRule = _choices("PreferenceRule", PREFERENCE_RULES)
Aspect = _choices("Aspect", tuple(ASPECTS))


def value(choice: Enum | None) -> str | None:
    """The string an enum option stands for (None stays None)."""
    return None if choice is None else str(choice.value)


def _layers_from_env(ctx: typer.Context, param: typer.CallbackParam, given: str | None) -> str | None:
    """LOCALAUG_GPU_LAYERS is checked as it is read, so its error names the variable (a flag's value is
    checked where it is used, naming the flag)."""
    from localaug.cli.configfile import ParameterSource

    if given is not None and ctx.get_parameter_source(param.name or "") == ParameterSource.ENVIRONMENT and not (
            given == "all" or given.isdigit()):
        raise typer.BadParameter(f"{given!r}: give a number or 'all'")
    return given


ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", envvar="LOCALAUG_MODEL", help="Family name, Hugging Face repo id, GGUF file or checkpoint folder.")]
PromptFormatOpt = Annotated[Optional[PromptFormat], typer.Option("--prompt-format", help="Force the prompt format (default: the model's family format, else teacher mode).")]  # type: ignore[valid-type]
SystemOpt = Annotated[Optional[str], typer.Option("--system", help="Teacher mode: your own system prompt instead of localaug's task prompt.")]
ExamplesOpt = Annotated[Optional[Path], typer.Option("--examples", help="Teacher mode: your own in-context examples, a JSON/JSONL file of {input, output} objects (two unlike each input are shown).")]
TempOpt = Annotated[Optional[float], typer.Option("--temperature", help="0 = greedy (default: the model manifest's, 0.5).")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling (default 0.95).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Top-k sampling (default 50).")]
MaxTokOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="New tokens at most (default 2048).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Fixed seed: same output on the same build and device.")]
DeviceOpt = Annotated[Device, typer.Option("--device", envvar="LOCALAUG_DEVICE", help="Where the model runs.")]  # type: ignore[valid-type]
LayersOpt = Annotated[Optional[str], typer.Option("--gpu-layers", envvar="LOCALAUG_GPU_LAYERS", callback=_layers_from_env, help="Layers to offload: a number or 'all' (default: all on a GPU).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", envvar="LOCALAUG_THREADS", help="CPU threads (default: all cores).")]
CtxOpt = Annotated[Optional[int], typer.Option("--n-ctx", "--ctx", help="Context size (default 4096, grown up to the trained length when needed); --ctx is the same flag.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object, no decoration.")]
# Quantizations are checked (any case) where they are used, whose one-line error lists them; --help
# lists them here, from the same table (a Typer enum would show them in lower case).
QUANTS = f"one of {', '.join(OUTPUT_TYPES)} (any case)"
StoredQuantOpt = Annotated[Optional[str], typer.Option("--quant", "-q", help=f"Which stored quantization, {QUANTS} (default: the family's recommended one, else the newest).")]


def in_panel(option: Any, panel: str) -> Any:
    """A shared option (``Annotated[T, typer.Option(...)]``) shown under the --help panel ``panel``."""
    kind, info = get_args(option)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[kind, info]


def gpu_layers(given: str | None) -> int | str | None:
    """``--gpu-layers``: a number, ``all``, or None (the device's default)."""
    from localaug.core.errors import UsageError, opt

    if given is None or given == "all":
        return given
    if not given.isdigit():
        raise UsageError(f"{opt('gpu_layers')} {given!r}: give a number or 'all'")
    return int(given)
