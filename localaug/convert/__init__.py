"""The conversion step: Hugging Face Qwen2 checkpoint -> GGUF -> quantized GGUF.

``convert_checkpoint()`` is the one entry point. F32/F16/BF16/Q8_0 are written directly by
streaming the safetensors data; every other type goes through llama.cpp's own quantizer from a
lossless intermediate (BF16 for bf16 checkpoints). Needs neither PyTorch nor transformers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
import gguf

from localaug._version import __version__
from localaug.convert import qwen2
from localaug.convert.checkpoint import Checkpoint, open_checkpoint
from localaug.convert.gguf_out import DIRECT_TYPES, tensor_jobs, write_gguf
from localaug.convert.keys import LocalaugKeys
from localaug.convert.quantize import QUANT_TYPES, quantize
from localaug.convert.vocab import load_vocab
from localaug.core.errors import UsageError
from localaug.core.files import atomic_output, refuse_overwriting_inputs, temp_beside
from localaug.core.progress import Progress, current

DEFAULT_QUANT = "Q4_K_M"
OUTPUT_TYPES: tuple[str, ...] = tuple(DIRECT_TYPES) + tuple(q for q in QUANT_TYPES if q not in DIRECT_TYPES)


ConvertProgress = Progress  # what conversion reports: a stage per pass (bytes written, tensors quantized)


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    quant: str
    n_tensors: int
    n_parameters: int
    n_bytes: int
    seconds: float


def normalize_quant(quant: str) -> str:
    q = quant.strip().upper()
    if q not in OUTPUT_TYPES:
        raise UsageError(f"unknown quantization {quant!r}; choose one of {', '.join(OUTPUT_TYPES)}")
    return q


def default_output_name(ckpt_dir: Path, quant: str) -> str:
    return f"{ckpt_dir.resolve().name}.{quant}.gguf"


def _intermediate_type(ckpt: Checkpoint) -> str:
    # Quantize from a lossless copy of the weights: BF16 for bf16 checkpoints, F16 for f16, F32 otherwise.
    dtypes = {t.dtype for t in ckpt.tensors.values()}
    if dtypes <= {"BF16"}:
        return "BF16"
    if dtypes <= {"F16"}:
        return "F16"
    return "F32"


# generation_config.json -> general.sampling.* (llama.cpp's tools read these as sampling defaults),
# as gguf-py's Metadata.load writes them for llama.cpp's converter: (GGUF key, kind, config keys).
SAMPLING_KEYS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (gguf.Keys.General.SAMPLING_SEQUENCE, "str", ("sequence",)),
    (gguf.Keys.General.SAMPLING_TOP_K, "i32", ("top_k",)),
    (gguf.Keys.General.SAMPLING_TOP_P, "f32", ("top_p",)),
    (gguf.Keys.General.SAMPLING_MIN_P, "f32", ("min_p",)),
    (gguf.Keys.General.SAMPLING_XTC_PROBABILITY, "f32", ("xtc_probability",)),
    (gguf.Keys.General.SAMPLING_XTC_THRESHOLD, "f32", ("xtc_threshold",)),
    (gguf.Keys.General.SAMPLING_TEMP, "f32", ("temperature",)),
    (gguf.Keys.General.SAMPLING_PENALTY_LAST_N, "i32", ("penalty_last_n",)),
    (gguf.Keys.General.SAMPLING_PENALTY_REPEAT, "f32", ("penalty_repeat", "repetition_penalty")),
    (gguf.Keys.General.SAMPLING_MIROSTAT, "i32", ("mirostat",)),
    (gguf.Keys.General.SAMPLING_MIROSTAT_TAU, "f32", ("mirostat_tau",)),
    (gguf.Keys.General.SAMPLING_MIROSTAT_ETA, "f32", ("mirostat_eta",)),
)


def sampling_defaults(generation_config: dict) -> list[tuple[str, str, object]]:
    """(key, kind, value) for the sampling defaults generation_config.json sets."""
    out: list[tuple[str, str, object]] = []
    for key, kind, names in SAMPLING_KEYS:
        value = next((generation_config[n] for n in names if generation_config.get(n) is not None), None)
        if value is None:
            continue
        try:
            value = str(value) if kind == "str" else int(value) if kind == "i32" else float(value)
        except (TypeError, ValueError):
            continue  # a malformed optional default is skipped, not fatal
        out.append((key, kind, value))
    return out


def _metadata(
    ckpt: Checkpoint, plans: list[qwen2.TensorPlan], outtype: str, name: str | None, repo: str | None, revision: str | None
):
    vocab = load_vocab(ckpt)  # read before writing anything, so tokenizer errors leave no file
    n_params = qwen2.parameter_count(plans)

    def setup(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or (repo.split("/")[-1] if repo else ckpt.path.resolve().name))
        w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
        if repo:
            w.add_source_repo_url(f"https://huggingface.co/{repo}")
            w.add_string(LocalaugKeys.SOURCE_REPO, repo)
        if revision:
            w.add_string(LocalaugKeys.SOURCE_REVISION, revision)
        w.add_string(LocalaugKeys.VERSION, __version__)
        for key, kind, value in sampling_defaults(ckpt.generation_config):
            {"i32": w.add_int32, "f32": w.add_float32, "str": w.add_string}[kind](key, value)
        for key, kind, value in qwen2.hparams(ckpt.config) + qwen2.rope_scaling(ckpt.config):
            {"u32": w.add_uint32, "f32": w.add_float32, "str": w.add_string}[kind](key, value)
        w.add_file_type(DIRECT_TYPES[outtype][1])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.add_to(w)

    return setup


def convert_checkpoint(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    quant: str = DEFAULT_QUANT,
    *,
    name: str | None = None,
    source_repo: str | None = None,
    source_revision: str | None = None,
    threads: int | None = None,
    progress: ConvertProgress | None = None,
) -> ConvertResult:
    """Convert the checkpoint folder ``src`` into one GGUF file of type ``quant``.

    Everything is checked (architecture, shapes, tokenizer, output folder) before the first
    byte is written; the result appears under ``out`` only when complete.
    """
    started = time.monotonic()
    progress = progress if progress is not None else current()
    quant = normalize_quant(quant)
    ckpt = open_checkpoint(src)
    plans = qwen2.plan(ckpt)
    dest = Path(out) if out is not None else Path.cwd() / default_output_name(ckpt.path, quant)
    if dest.is_dir():
        dest = dest / default_output_name(ckpt.path, quant)
    refuse_overwriting_inputs(dest, [p for p in ckpt.path.iterdir() if p.is_file()])
    direct = quant if quant in DIRECT_TYPES else _intermediate_type(ckpt)
    setup = _metadata(ckpt, plans, direct, name, source_repo, source_revision)
    jobs = tensor_jobs(plans, direct)

    def on_bytes(tensor: str, nbytes: int) -> None:
        progress.advance(nbytes, tensor)

    with atomic_output(dest) as tmp:
        progress.stage(f"writing {direct}", sum(j.nbytes for j in jobs), "bytes")
        if quant in DIRECT_TYPES:
            write_gguf(tmp, setup, jobs, on_bytes)
        else:
            with temp_beside(dest.with_name(f"{dest.name}.{direct}")) as inter:
                write_gguf(inter, setup, jobs, on_bytes)
                progress.stage(f"quantizing {quant}", len(jobs), "tensors")
                quantize(inter, tmp, quant, threads, lambda t, i, n: progress.advance(1, t))
        progress.finish()  # on success only: a failed phase has no "done" line (the error says what happened)
    return ConvertResult(dest, quant, len(jobs), qwen2.parameter_count(plans), dest.stat().st_size, time.monotonic() - started)
