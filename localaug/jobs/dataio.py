"""Dataset rows in and training files out, for batch jobs (``jobs.py``).

Readers yield every input row in order, bad ones included (an invalid JSON line is a row with an
error, never a crash), so a job can record it and carry on. Readers by file type:

- ``.jsonl`` / ``.ndjson`` (one JSON object a line), ``.json`` (an array of objects, read item by
  item), ``.csv`` (a header row): ``localaug.jobs.readers``, each row with its place in the file
  (``read_again`` reads rows from their places);
- ``.parquet`` and a ``datasets`` ``save_to_disk`` folder (``state.json`` + ``*.arrow``), both
  through pyarrow (``pip install 'localaug[parquet]'``).

Writers turn finished job records into what fine-tuning tools load: Alpaca and ShareGPT
(LLaMA-Factory), ``messages`` (TRL's conversational format, axolotl's chat_template), each with a
``dataset_info.json`` entry beside it that LLaMA-Factory reads as is, and ``prompts`` (TRL's
prompt-only format, for instructions without responses); or keep the records whole as JSON Lines
or Parquet. A training format that needs responses is refused for records that have none.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from localaug.core.errors import UsageError
from localaug.core.files import dumps_strict
from localaug.core.install import extra_hint
from localaug.jobs import exports
from localaug.jobs.exports import DATASET_INFO, PREFERENCE_FORMATS, Example, no_responses
from localaug.jobs.readers import (  # noqa: F401 - the readers' names, as they were here
    MAX_ROW_CHARS,
    TEXT_KINDS,
    InputRow,
    Place,
    invalid_text,
    refuse_duplicate_columns,
    rows_at,
    text_rows,
)
from localaug.jobs.schema import record_problem

EXPORT_FORMATS = (*exports.SFT_FORMATS, *PREFERENCE_FORMATS)  # training files
RESPONSE_FORMATS = ("alpaca", "sharegpt", "messages", *PREFERENCE_FORMATS)  # each example needs a response
INSTRUCTION_TASKS = ("refine", "expand")  # their records hold new instructions, no responses
RECORD_FORMATS = ("jsonl", "parquet")  # job records as they are


def json_line(record: Any) -> str:
    """One record as one line of strict JSON: readable UTF-8, except that text which is not valid
    Unicode (a carried column) is written escaped, so the line is always valid UTF-8; a NaN or
    infinity (Python's JSON reader accepts them in an input row) is written as null."""
    line = dumps_strict(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return dumps_strict(record, ensure_ascii=True)
    return line


def chunked(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    """``rows`` in lists of ``size`` (the last may be shorter)."""
    chunk: list[InputRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def get_field(record: dict[str, Any], path: str) -> Any:
    """``record`` at a dotted path (``a.b``, list indexes as numbers: ``messages.0.content``)."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


def _need_pyarrow(what: str) -> Any:
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise UsageError(f"reading {what} needs pyarrow: {extra_hint('parquet')}") from e
    return pyarrow


def input_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "state.json").is_file():
            return "hf-disk"
        if (path / "dataset_dict.json").is_file():
            raise UsageError(f"{path} holds several splits: pass one split's folder, e.g. {path / 'train'}")
        raise UsageError(f"{path} is a folder but not a datasets save_to_disk folder (no state.json)")
    suffix = path.suffix.lower()
    kinds = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in kinds:
        raise UsageError(f"{path}: unknown input type {suffix or '(none)'}; use .jsonl, .json, .csv, .parquet or a save_to_disk folder")
    return kinds[suffix]


def is_blank(path: Path, look: int = 1 << 20) -> bool:
    """Whether a file holds nothing but white space (read no further than ``look`` bytes)."""
    if path.stat().st_size > look:
        return False
    with open(path, "rb") as f:
        return not f.read(look).strip()


def read_rows(path: str | os.PathLike[str]) -> Iterator[InputRow]:
    """Every row of ``path``, in order (a text file's rows with their places: ``readers``)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input {path} does not exist")
    kind = input_kind(path)
    if kind in TEXT_KINDS:
        with open(path, "rb") as f:
            yield from text_rows(kind, f, name=str(path))
    elif kind == "parquet":
        _need_pyarrow("Parquet")
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        refuse_duplicate_columns(parquet.schema_arrow.names, str(path))
        yield from _from_batches(parquet.iter_batches(batch_size=1024))
    else:
        yield from _read_hf_disk(path)


def read_again(path: str | os.PathLike[str], places: Iterable[Place]) -> Iterator[InputRow | None]:
    """The rows of a text file at ``places`` (``InputRow.place``), read again (``readers.rows_at``)."""
    path = Path(path)
    with open(path, "rb") as f:
        yield from rows_at(input_kind(path), f, places, str(path))


def _from_batches(batches: Iterable[Any], start: int = 0) -> Iterator[InputRow]:
    i = start
    for batch in batches:
        for rec in batch.to_pylist():
            yield InputRow(i, rec)
            i += 1


def _read_hf_disk(path: Path) -> Iterator[InputRow]:
    """A ``Dataset.save_to_disk`` folder: Arrow IPC stream files listed in state.json."""
    _need_pyarrow("a datasets folder")
    import pyarrow as pa

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    files = [path / f["filename"] for f in state.get("_data_files", [])] or sorted(path.glob("*.arrow"))
    i = 0
    for file in files:
        with pa.memory_map(str(file)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                batches: Iterable[Any] = (reader.get_batch(k) for k in range(reader.num_record_batches))
            else:
                batches = reader
            refuse_duplicate_columns(reader.schema.names, str(file))
            for row in _from_batches(batches, i):
                yield row
                i += 1


# --- training formats ----------------------------------------------------------------------------


def examples(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The (instruction, response) training examples in one ``ok`` job record.

    refine and expand make instructions only (response ""): answer them with ``respond`` (or
    ``--respond-with``); pairs make whole pairs, respond answers one instruction."""
    if record.get("status") != "ok":
        return []
    task = record.get("task")
    if task == "refine":
        return [(record["output"], "")]
    if task == "expand":
        return [(text, "") for text in record.get("outputs", [])]
    if task == "respond":
        return [(record["instruction"], record["response"])]
    return [(p["instruction"], p["response"]) for p in record.get("pairs", [])]


def training_examples(record: dict[str, Any]) -> list[Example]:
    """The training examples in one ``ok`` job record, with all they hold: a respond record's
    context (``input``) and system prompt too (those keys always mean what the responder was given,
    ``worker.result_keys``)."""
    if record.get("task") == "respond" and record.get("status") == "ok":
        context, system = record.get("input"), record.get("system")
        return [Example(record["instruction"], record["response"], context if isinstance(context, str) else "",
                        system if isinstance(system, str) and system else None)]
    return [Example(instruction, response) for instruction, response in examples(record)]


def shape(fmt: str, instruction: str, response: str) -> dict[str, Any]:
    """One row of an SFT training file for an instruction and its response (``exports.shape``)."""
    return exports.shape(fmt, Example(instruction, response))


MAX_DATASET_INFO_BYTES = 16 << 20


def write_dataset_info(export: Path, fmt: str, system_column: bool = False) -> Path | None:
    """Add (or replace) the entry of ``export`` in ``dataset_info.json`` beside it, keeping the
    other entries; the entry is named after the file (``train.json`` -> ``train``). None for a
    format LLaMA-Factory does not read. ``system_column``: the file's rows carry a system prompt."""
    from localaug.core.files import read_bounded, write_json_atomic

    if fmt not in DATASET_INFO:
        return None
    info_path = export.parent / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(read_bounded(info_path, MAX_DATASET_INFO_BYTES))
        except (ValueError, OSError) as e:
            raise UsageError(f"{info_path} is not a JSON object LLaMA-Factory can read ({e}): fix or move it; "
                             f"{export} is written") from None
        if not isinstance(info, dict):
            raise UsageError(f"{info_path} is not a JSON object: fix or move it; {export} is written")
    info[export.name.split(".")[0]] = {"file_name": export.name, **exports.dataset_info_entry(fmt, system_column)}
    write_json_atomic(info_path, info)
    return info_path


def instruction_rows(rows: Iterable[InputRow]) -> Iterator[InputRow]:
    """Rows to answer: a localaug refine or expand output gives one row per new instruction
    (``{"instruction", "origin": {task, source_id, row, item}}``; its rows that are not ``ok``
    have none); any other row is itself."""
    index = 0
    for row in rows:
        rec = row.record
        if row.error is None and rec.get("task") in INSTRUCTION_TASKS and "status" in rec and "source_id" in rec:
            why = record_problem(rec)
            if why is not None:  # a damaged record: its row fails alone, with the reason
                yield InputRow(index, {}, f"a damaged {rec['task']} record ({why})", raw=json_line(rec)[:100_000])
                index += 1
                continue
            origin = {"task": rec["task"], "source_id": rec["source_id"], "row": rec.get("row")}
            for k, (text, _) in enumerate(examples(rec)):
                yield InputRow(index, {"instruction": text, "origin": {**origin, "item": k}})
                index += 1
            continue
        row.index = index
        yield row
        index += 1


def write_records(records: Iterable[dict[str, Any]], fmt: str, path: Path,
                  choose: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> int:
    """Write job records as ``fmt`` atomically (temporary file beside ``path``, then rename) and
    return how many were written: records for jsonl and parquet, training examples for the
    training formats (a JSON array if ``path`` ends in .json, else JSON Lines); beside a training
    file LLaMA-Factory reads, its ``dataset_info.json`` entry. ``choose`` (training formats) maps
    each record to the one to export (e.g. with its best-graded answer as ``response``) or None."""
    from localaug.core.files import temp_beside

    if fmt not in (*RECORD_FORMATS, *EXPORT_FORMATS):
        raise UsageError(f"unknown output format {fmt!r}: use {', '.join((*RECORD_FORMATS, *EXPORT_FORMATS))}")
    if fmt not in RECORD_FORMATS:
        system = [False]

        def rows() -> Iterator[dict[str, Any]]:
            for rec in records:
                chosen = choose(rec) if choose is not None else rec
                for ex in training_examples(chosen) if chosen is not None else []:
                    system[0] = system[0] or ex.system is not None
                    yield exports.shape(fmt, ex)

        n = write_rows(rows(), path)
        write_dataset_info(path, fmt, system[0])
        return n
    with temp_beside(path) as tmp:
        if fmt == "parquet":
            n = _write_parquet(list(records), tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                n = _write_jsonl(records, f)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    return n


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Rows of a training file, written atomically: a JSON array if ``path`` ends in .json, else
    JSON Lines; how many."""
    from localaug.core.files import temp_beside

    as_array = path.suffix.lower() == ".json"
    n = 0
    with temp_beside(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            if as_array:
                f.write("[")
            for row in rows:
                line = json_line(row)
                f.write(("," if n else "") + "\n" + line if as_array else line + "\n")
                n += 1
            if as_array:
                f.write("\n]\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return n


def _write_jsonl(records: Iterable[dict[str, Any]], f: Any) -> int:
    n = 0
    for rec in records:
        f.write(json_line(rec) + "\n")
        n += 1
    return n


def _write_parquet(records: list[dict[str, Any]], path: Path) -> int:
    pa = _need_pyarrow("Parquet output")
    import pyarrow.parquet as pq

    columns: dict[str, None] = {}
    for rec in records:
        columns.update(dict.fromkeys(rec))
    rows = [{k: rec.get(k) for k in columns} for rec in records]
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        # mixed types in a column (e.g. ids that are numbers in one row, text in another): nested
        # values become JSON text, scalars text, so every column has one type
        def text(v: Any) -> str | None:
            return None if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)

        table = pa.Table.from_pylist([{k: text(v) for k, v in row.items()} for row in rows])
    pq.write_table(table, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return len(records)
