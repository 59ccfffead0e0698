"""Quantization through llama.cpp's own quantizer (``llama_model_quantize`` via llama-cpp-python).

The quantizer runs in a child process: a Ctrl-C can stop it at once (a C call cannot be
interrupted in-process), a crash inside llama.cpp cannot take the caller down, and its per-tensor
log lines drive our progress display.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localaug.core.errors import ConversionError


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: str  # llama_cpp LLAMA_FTYPE_* constant
    bits: float  # approximate bits per weight, for the user's choice
    note: str


# Types produced by llama.cpp's quantizer. Importance-matrix-only types (IQ1/IQ2/IQ3) are left out:
# without an imatrix llama.cpp refuses or produces poor models.
QUANT_TYPES: dict[str, QuantType] = {
    q.name: q
    for q in (
        QuantType("Q2_K", "LLAMA_FTYPE_MOSTLY_Q2_K", 2.96, "smallest, significant quality loss"),
        QuantType("Q3_K_S", "LLAMA_FTYPE_MOSTLY_Q3_K_S", 3.50, "very small, high quality loss"),
        QuantType("Q3_K_M", "LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.91, "very small, high quality loss"),
        QuantType("Q3_K_L", "LLAMA_FTYPE_MOSTLY_Q3_K_L", 4.27, "small, substantial quality loss"),
        QuantType("IQ4_NL", "LLAMA_FTYPE_MOSTLY_IQ4_NL", 4.50, "4-bit non-linear"),
        QuantType("IQ4_XS", "LLAMA_FTYPE_MOSTLY_IQ4_XS", 4.25, "4-bit non-linear, smaller"),
        QuantType("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", 4.50, "legacy 4-bit"),
        QuantType("Q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1", 5.00, "legacy 4-bit"),
        QuantType("Q4_K_S", "LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.58, "small, some quality loss"),
        QuantType("Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.89, "balanced (default)"),
        QuantType("Q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0", 5.50, "legacy 5-bit"),
        QuantType("Q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1", 6.00, "legacy 5-bit"),
        QuantType("Q5_K_S", "LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.54, "low quality loss"),
        QuantType("Q5_K_M", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.69, "very low quality loss"),
        QuantType("Q6_K", "LLAMA_FTYPE_MOSTLY_Q6_K", 6.56, "near-lossless"),
    )
}

_PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")

TensorProgress = Callable[[str, int, int], None]  # (tensor name, index, total)


def quantize(src: Path, dst: Path, qtype: str, threads: int | None = None, progress: TensorProgress | None = None) -> None:
    """Quantize the GGUF ``src`` (F32/F16/BF16) into ``dst`` with llama.cpp's quantizer."""
    if qtype not in QUANT_TYPES:
        raise ConversionError(f"{qtype} is not a quantizer type; use one of {', '.join(QUANT_TYPES)}")
    cmd = [sys.executable, "-m", "localaug.convert.quantize", str(src), str(dst), qtype, str(threads or os.cpu_count() or 1)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    tail: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-20:]
            m = _PROGRESS.match(line.strip())
            if m and progress:
                progress(m.group(3).rstrip(","), int(m.group(1)), int(m.group(2)))
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        detail = next((t for t in reversed(tail) if "error" in t.lower() or "failed" in t.lower()), tail[-1] if tail else "")
        if "space" in detail.lower() or _out_of_space(dst.parent):
            raise ConversionError(f"disk full while quantizing to {qtype} in {dst.parent}: free space there and retry")
        raise ConversionError(f"llama.cpp quantizer failed ({qtype}): {detail.strip() or f'exit code {rc}'}; retry, and report it if it persists")


# llama.cpp's quantizer reports a failed write only as "iostream error" (errno is lost): when it
# fails and the output's filesystem is (nearly) full, with its partial output still there, that is why.
_FULL_MARGIN = 16 * 1024 * 1024


def _out_of_space(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _FULL_MARGIN
    except OSError:
        return False


def _main(argv: list[str]) -> int:
    import ctypes

    import llama_cpp

    src, dst, qtype, threads = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype].ftype)
    params.nthread = int(threads)
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
