"""Streaming GGUF writing (F32/F16/BF16/Q8_0) to a temporary name, renamed when complete.

gguf-py's ``GGUFWriter`` lays out the header, the metadata and the tensor-info table; the tensor
data is then streamed block by block from the checkpoint, so no whole tensor is ever in memory.
The caller writes to a temporary name (``localaug.core.files.atomic_output``): any failure, Ctrl-C
included, removes it, so a finished-looking file is a finished file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from localaug.convert.checkpoint import iter_raw, iter_rows_f32
from localaug.convert.qwen2 import TensorPlan
from localaug.core.errors import ConversionError

Q = gguf.GGMLQuantizationType

# Output types written directly: name -> (tensor type for 2-D weights, llama file type).
DIRECT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "F32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "Q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def _encode(rows: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return rows
    if qtype == Q.F16:
        return rows.astype(np.float16)
    return gguf.quants.quantize(rows, qtype)  # BF16 (round-to-nearest-even) and Q8_0, as llama.cpp's converter


@dataclass(frozen=True)
class TensorJob:
    plan: TensorPlan
    qtype: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        shape = self.plan.shape or (1,)
        return int(np.prod(gguf.quant_shape_to_byte_shape(shape, self.qtype), dtype=np.int64))


def tensor_jobs(plans: list[TensorPlan], outtype: str) -> list[TensorJob]:
    """Pick each tensor's type the way llama.cpp's converter does."""
    weight_type = DIRECT_TYPES[outtype][0]
    jobs = []
    for p in plans:
        qtype = Q.F32 if p.is_vector_or_norm else weight_type
        if qtype == Q.Q8_0 and p.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
            qtype = Q.F16  # rows that do not fill whole Q8_0 blocks fall back to F16, as upstream
        jobs.append(TensorJob(p, qtype))
    return jobs


Progress = Callable[[str, int], None]  # (tensor name, bytes just written)


# Stored dtype -> the GGUF type that holds the same bytes: such tensors are copied, not converted.
SAME_BYTES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}


def _tensor_bytes(job: TensorJob) -> Iterator[memoryview]:
    """The bytes of one output tensor: the stored bytes themselves when the output type is the
    stored type (F16 -> F16, BF16 -> BF16, F32 -> F32), else rows widened to float32 and encoded."""
    ref = job.plan.source
    if SAME_BYTES.get(ref.dtype) == job.qtype:
        yield from iter_raw(ref)
        return
    for rows in iter_rows_f32(ref):
        yield np.ascontiguousarray(_encode(rows, job.qtype)).data


def write_gguf(
    path: Path,
    setup: Callable[[gguf.GGUFWriter], None],
    jobs: list[TensorJob],
    progress: Progress | None = None,
) -> None:
    """Write a complete GGUF to ``path`` (the caller owns atomicity): metadata via ``setup``."""
    writer = gguf.GGUFWriter(path=None, arch="qwen2")
    setup(writer)
    for job in jobs:
        writer.add_tensor_info(job.plan.name, job.plan.shape, np.dtype(np.float32), job.nbytes, raw_dtype=job.qtype)
    try:
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        out = writer.fout[0]
        align = writer.data_alignment
        for job in jobs:
            out.write(bytes(gguf.GGUFWriter.ggml_pad(out.tell(), align) - out.tell()))
            written = 0
            for data in _tensor_bytes(job):
                out.write(data)
                written += data.nbytes
                if progress:
                    progress(job.plan.name, data.nbytes)
            if written != job.nbytes:
                raise ConversionError(f"{job.plan.name}: wrote {written} bytes, expected {job.nbytes} (internal error)")
            out.write(bytes(gguf.GGUFWriter.ggml_pad(written, align) - written))
        out.flush()
        os.fsync(out.fileno())
    finally:
        writer.close()
