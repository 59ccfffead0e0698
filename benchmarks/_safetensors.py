"""Write a single-file bf16 (or fp16) safetensors checkpoint tensor by tensor, as save_pretrained lays it out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


def write_bf16(path: Path, shapes: dict[str, tuple[int, ...]], fill: Callable[[str, tuple[int, ...], BinaryIO], None],
               dtype: str = "BF16") -> int:
    """Header for ``shapes`` (names sorted, all ``dtype``: BF16 or F16), then ``fill(name, shape, f)`` writes each
    tensor's bytes.

    Returns the data size in bytes.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(shapes):
        nbytes = int(np.prod(shapes[name])) * 2
        header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in sorted(shapes):
            fill(name, shapes[name], f)
    return offset
