"""Read a local Hugging Face checkpoint: config.json, (sharded) safetensors, tokenizer files.

Safetensors headers are parsed here (8-byte little-endian length + JSON) so that tensor data can
be streamed in bounded chunks with plain file reads: peak memory stays at a few chunk buffers no
matter how large the model is. Pickle-based weights (``*.bin``, ``*.pt``) are refused, never loaded.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localaug.core.errors import CheckpointError

# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 is carried as raw uint16.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "F64": (np.dtype("<f8"), 8),
}

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format caps its JSON header at 100 MB


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are: file, absolute offset, dtype and shape (row-major)."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def row_elements(self) -> int:
        """Elements per row (the last dimension); a 0-d or 1-d tensor is one row."""
        return self.shape[-1] if self.shape else 1


@dataclass
class Checkpoint:
    path: Path
    config: dict
    tensors: dict[str, TensorRef]
    tokenizer_config: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else str(self.config.get("model_type", "unknown"))

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): re-download {what}") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object: re-download {what}")
    return data


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse one .safetensors file's header and check every tensor lies inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is truncated (no safetensors header): re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path.name} has a corrupt safetensors header (length {n}): re-download it")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path.name} has a corrupt safetensors header (not JSON): re-download it") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt safetensors header: re-download it")

    base = 8 + n
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path.name}: malformed header entry for {name!r}: re-download it") from e
        if dtype not in DTYPES:
            supported = ", ".join(DTYPES)
            raise CheckpointError(f"{path.name}: tensor {name!r} has dtype {dtype}; supported: {supported}")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][1]
        if end - begin != expected or begin < 0:
            raise CheckpointError(f"{path.name}: tensor {name!r} has {end - begin} bytes, its shape needs {expected}: re-download it")
        if base + end > size:
            raise CheckpointError(
                f"{path.name} is truncated ({size} bytes, tensor {name!r} ends at {base + end}): re-download it"
            )
        refs[name] = TensorRef(name, path, dtype, shape, base + begin, end - begin)
    return refs


def _weight_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map: re-download it")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise CheckpointError(f"{root} is missing weight shard(s) {', '.join(missing)} named in its index: download them")
        return [root / f for f in files]
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files
    if any(root.glob("*.bin")) or any(root.glob("*.pt")) or any(root.glob("*.pth")):
        raise CheckpointError(
            f"{root} has only pickle weights (*.bin/*.pt); localaug never unpickles model files: "
            "download the safetensors weights of this model"
        )
    raise CheckpointError(f"{root} has no *.safetensors weights: download the model's weights into it")


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Index a checkpoint directory without reading any tensor data."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory: pass a Hugging Face checkpoint folder")
    config_file = root / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{root} has no config.json: is it a Hugging Face model folder?")
    config = _read_json(config_file, "config.json")

    tensors: dict[str, TensorRef] = {}
    for f in _weight_files(root):
        for name, ref in read_safetensors_header(f).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in both {tensors[name].path.name} and {f.name}")
            tensors[name] = ref

    tok_cfg = root / "tokenizer_config.json"
    gen_cfg = root / "generation_config.json"
    return Checkpoint(
        path=root,
        config=config,
        tensors=tensors,
        tokenizer_config=_read_json(tok_cfg, "tokenizer_config.json") if tok_cfg.is_file() else {},
        generation_config=_read_json(gen_cfg, "generation_config.json") if gen_cfg.is_file() else {},
    )


def iter_rows_f32(ref: TensorRef, chunk_bytes: int = 1024 * 1024) -> Iterator[np.ndarray]:
    """Yield the tensor as float32 blocks of whole rows, shape (rows, row_elements).

    The bytes are read with plain file reads into a reused buffer (no mmap), so resident memory
    is bounded by ``chunk_bytes`` plus the float32 copy, whatever the tensor's size.
    """
    storage, width = DTYPES[ref.dtype]
    row = ref.row_elements
    n_rows = max(ref.n_elements // row, 1) if ref.n_elements else 0
    rows_per_chunk = max(1, chunk_bytes // max(1, row * width))
    with open(ref.path, "rb", buffering=0) as f:
        f.seek(ref.offset)
        done = 0
        while done < n_rows:
            take = min(rows_per_chunk, n_rows - done)
            buf = np.empty(take * row, dtype=storage)
            view = memoryview(buf).cast("B")
            got = f.readinto(view)
            while got < view.nbytes:  # a short read is legal; a zero read means the file shrank
                more = f.readinto(view[got:])
                if not more:
                    raise CheckpointError(f"{ref.path.name} was truncated while reading {ref.name!r}: re-download it")
                got += more
            yield to_f32(buf, ref.dtype).reshape(take, row)
            done += take


def iter_raw(ref: TensorRef, chunk_bytes: int = 8 * 1024 * 1024) -> Iterator[memoryview]:
    """Yield the tensor's bytes as they are stored, in chunks of one reused buffer (a pass-through
    when the output type is the stored type: no float32 round trip, memory bounded by the chunk)."""
    buf = bytearray(min(chunk_bytes, max(ref.nbytes, 1)))
    left = ref.nbytes
    with open(ref.path, "rb", buffering=0) as f:
        f.seek(ref.offset)
        while left:
            view = memoryview(buf)[: min(len(buf), left)]
            got = 0
            while got < len(view):
                more = f.readinto(view[got:])
                if not more:
                    raise CheckpointError(f"{ref.path.name} was truncated while reading {ref.name!r}: re-download it")
                got += more
            left -= got
            yield view


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening to float32 (bf16 is the top half of an f32)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)
