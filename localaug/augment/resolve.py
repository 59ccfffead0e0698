"""From what a user names (a family name, a repo id, a GGUF file, a checkpoint folder) to a GGUF path,
its family spec, its prompt style (with your own system prompt and examples, if given) and its
metadata; and the sampling defaults of a model. A URL (``http://gpu-box:8000/v1#MODEL``) names a
model on an OpenAI-compatible server instead: ``resolve_remote`` (jobs and the judge take one).

The metadata a resolution reads is cached by the file's path, size and mtime (``model_metadata``),
as its sha256 is: naming a model costs a stat and a small JSON read, not a pass over its vocabulary."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gguf import Keys

from localaug.core.errors import LocalaugError, UsageError, opt
from localaug.core.files import read_bounded, read_json, write_json_atomic
from localaug.core.settings import localaug_home
from localaug.family import registry
from localaug.family.prompts import FAMILY_FORMATS, read_examples
from localaug.family.registry import ModelSpec
from localaug.family.styles import TEACHER, PromptStyle, check_overrides, family_spec_from_metadata, style_for
from localaug.runtime.remote import RemoteModel, connect, is_remote, parse_endpoint
from localaug.runtime.sampling import SamplingParams
from localaug.store.gguf_info import read_kv

DEFAULT_MODELS = {"refine": "qwen2-refine:1.5b", "expand": "qwen2-exp:1.5b", "pairs": "qwen2-response-exp:7b",
                  "respond": "qwen2-instruct:1.5b"}
_SAMPLING_KEYS = {f.name for f in fields(SamplingParams)}


def resolve_model(model: str | os.PathLike[str], quant: str | None = None) -> tuple[Path, ModelSpec | None]:
    """A GGUF path for ``model`` (GGUF path, family name, repo id or checkpoint dir) and its family spec."""
    path = Path(model)
    if path.suffix == ".gguf" and path.is_file():
        return path, None
    from localaug.store import local as store

    return store.resolve(str(model), quant), registry.find(str(model))


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    spec: ModelSpec | None
    style: PromptStyle
    meta: dict[str, Any]


def resolve_style(
    model: str | os.PathLike[str], quant: str | None = None, prompt_format: str | None = None
) -> ResolvedModel:
    """The GGUF path, family spec, prompt style and metadata for ``model`` (tensors are not read)."""
    if is_remote(model):
        raise UsageError(f"{opt('model')}: a model on a server (a URL) is for localaug run and localaug judge or grade; here give "
                         "a GGUF file, a family or store name, or a checkpoint folder")
    path, spec = resolve_model(model, quant)
    meta = model_metadata(path)
    spec = spec or family_spec_from_metadata(meta)
    return ResolvedModel(path, spec, style_for(meta, spec, prompt_format), meta)


@dataclass(frozen=True)
class ResolvedRemote:
    model: RemoteModel
    spec: ModelSpec | None  # a family model served under its own name or repo id
    style: PromptStyle


def resolve_remote(model: str, prompt_format: str | None = None, param: str = "model") -> ResolvedRemote:
    """The model a URL names (the server is asked: it must answer with the key), and its style:
    messages sent as they are, a family model's bare user turn or teacher mode's task prompt."""
    target = connect(parse_endpoint(model, param))
    spec = registry.find(target.name)
    return ResolvedRemote(target, spec, remote_style(spec, prompt_format))


def remote_style(spec: ModelSpec | None, prompt_format: str | None = None) -> PromptStyle:
    """How to prompt a model on a server: as its family was trained (a family name or repo id, or
    ``prompt_format`` naming a family format), else teacher mode; its server renders the messages."""
    if prompt_format is not None and prompt_format not in (*FAMILY_FORMATS, TEACHER):
        raise UsageError(f"unknown prompt format {prompt_format!r}; use {', '.join((*FAMILY_FORMATS, TEACHER))}")
    if prompt_format in FAMILY_FORMATS:
        return PromptStyle(prompt_format, family_name=spec.name if spec else None, remote=True)
    if spec is not None and prompt_format is None and spec.task != "respond":
        return PromptStyle(spec.prompt_format, stop=spec.stop, family_name=spec.name, remote=True)
    return PromptStyle(TEACHER, stop=(), remote=True)


def default_sampling(spec: ModelSpec | None, **overrides: Any) -> SamplingParams:
    """The model manifest's sampling (or the family defaults), with non-None overrides applied."""
    unknown = set(overrides) - _SAMPLING_KEYS
    if unknown:
        raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    base = SamplingParams()
    if spec is not None:
        s = spec.sampling
        base = replace(base, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


MAX_EXAMPLES_BYTES = 4 << 20


def with_overrides(style: PromptStyle, task: str | None, system: str | None,
                   examples: str | os.PathLike[str] | tuple[tuple[str, str], ...] | None) -> PromptStyle:
    """``style`` with your own system prompt and in-context examples (a JSON/JSONL file or pairs)."""
    if isinstance(examples, (str, os.PathLike)):
        path = Path(examples)
        try:
            text = read_bounded(path, MAX_EXAMPLES_BYTES)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{opt('examples')} {path}: cannot read it ({e}): give a JSON/JSONL file of "
                             "{\"input\", \"output\"} objects") from None
        examples = read_examples(text, str(path))
    elif examples is not None:
        examples = tuple((str(a), str(b)) for a, b in examples)
    if system is not None and not system.strip():
        raise UsageError(f"{opt('system')} is empty: give the system prompt's text")
    style = replace(style, system=system, examples=examples)
    check_overrides(style, task)
    return style


# --- the metadata a resolution reads, cached -----------------------------------------------------------

METADATA_CACHE = "metadata-cache.json"  # in LOCALAUG_HOME, beside the sha256 cache
_CACHE_VERSION = 1
_CACHED_MODELS = 64  # the most recently resolved files kept
_SHORT_LIST = 64  # lists longer than this (the vocabulary, merges, scores) are not kept


class Vocabulary(Sequence[str]):
    """A GGUF's token list as the metadata cache keeps it: its length, and the texts of the tokens its
    metadata names by id (``tokenizer.ggml.*_token_id``: BOS, EOS, ...), which is all a prompt style
    reads; any other id reads as ""."""

    def __init__(self, texts: dict[int, str], length: int) -> None:
        self._texts, self._length = texts, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._length))]
        if not -self._length <= i < self._length:
            raise IndexError(i)
        return self._texts.get(i % self._length, "")


def model_metadata(path: Path) -> dict[str, Any]:
    """The GGUF metadata a model's resolution reads (``store.gguf_info.read_kv``), cached by (path,
    size, mtime) in LOCALAUG_HOME as the file's sha256 is: reading a 150k-token vocabulary and its
    merges takes a few hundred milliseconds, which every command naming the model (an all-done rerun
    of a job included) would spend again. Every scalar key and short list is kept; of the vocabulary,
    its length and the special tokens' texts (``Vocabulary``)."""
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = localaug_home() / METADATA_CACHE
    cache = read_json(cache_file) or {}
    hit = cache.get(ident)
    if isinstance(hit, dict) and hit.get("version") == _CACHE_VERSION:
        try:
            return _thaw(hit)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a damaged entry: read the file again
    entry = _freeze(read_kv(path))
    kept = dict(list((k, v) for k, v in cache.items() if k != ident)[-(_CACHED_MODELS - 1):])
    with contextlib.suppress(OSError, LocalaugError):  # a read-only home: read the file again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, {**kept, ident: entry})
    return _thaw(entry)


def _freeze(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta.get(Keys.Tokenizer.LIST)
    tokens = tokens if isinstance(tokens, list) else []
    named = {v for k, v in meta.items() if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")
             and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(tokens)}
    keys = {k: v for k, v in meta.items() if not isinstance(v, list) or len(v) <= _SHORT_LIST}
    return {"version": _CACHE_VERSION, "keys": keys, "n_tokens": len(tokens),
            "tokens": {str(i): tokens[i] for i in sorted(named)}}


def _thaw(entry: dict[str, Any]) -> dict[str, Any]:
    meta = dict(entry["keys"])
    if entry["n_tokens"]:
        meta[Keys.Tokenizer.LIST] = Vocabulary({int(i): str(t) for i, t in entry["tokens"].items()}, int(entry["n_tokens"]))
    return meta
