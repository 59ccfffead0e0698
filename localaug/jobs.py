"""Batch jobs: a dataset in, one augmented record per input row out, never losing work.

The output (``--format jsonl``) is an append-only *ledger*: each row's record is appended and
flushed as soon as the row finishes (fsync at least every second). Every record carries its row
key (``source_id``): the sha256 of the run (task, model file sha256, prompt format, sampling,
seed, n) and the row's text (plus its occurrence number, so repeated texts stay distinct rows).
A restart with the same arguments skips rows whose key is already there, so a job killed at any
moment (even ``kill -9``: a torn last line is cut off on start) is completed by running the same
command again. Changing any of those arguments is a different run: it is refused on the same
output with the list of what changed. ``--limit`` and ``--shard`` only select rows.

A bad row (invalid JSON line, empty text, prompt too long, max tokens hit, unparseable reply) is
recorded with ``status: failed`` and its ``error``; ``retry_failed`` reruns only those, and a
finished job rewrites the ledger (temp file + rename) so that a retried row's new record
supersedes the old one: exactly one record per input row. A lock file beside the output refuses
a second process on the same output.

Generation goes through a *backend* with ``run(requests) -> Iterator[Result]`` (results in any
order): ``localaug.batch.BatchEngine`` (continuous batching) when ``parallel > 1`` and it is
available, else ``SequentialBackend`` on one ``Engine``. ``Worker`` is the per-batch function
(model loaded once, rows in, records out) for other schedulers (e.g. Ray ``map_batches``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from localaug import dataio, tasks
from localaug.atomic import write_json_atomic
from localaug.batch import Request, Result
from localaug.dataio import InputRow
from localaug.engine import Engine, EngineOptions, SamplingParams
from localaug.errors import JobError, JobInterrupted, JobLockedError, LocalaugError, UsageError
from localaug.filters import DedupFilter, normalize
from localaug.prompts import Pair
from localaug.tasks import PromptStyle

TASKS = ("refine", "expand", "pairs")
OUTPUT_FORMATS = ("jsonl", *dataio.EXPORT_FORMATS)
# Result keys a record sets; input columns with these names are kept as source_<name>.
RESULT_KEYS = ("output", "outputs", "pairs", "task", "model", "seed", "status", "finish_reason", "error",
               "source_id", "row", "samples", "rejected", "shortfall", "prompt_tokens", "completion_tokens", "raw")
FSYNC_EVERY_S = 1.0


class Backend(Protocol):
    def run(self, requests: Iterable[Request]) -> Iterator[Result]: ...


class SequentialBackend:
    """One request at a time on one Engine; sample k of a request uses seed + k."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, requests: Iterable[Request]) -> Iterator[Result]:
        for req in requests:
            for k in range(req.n):
                try:
                    gen = self.engine.generate(req.prompt, replace(req.sampling, seed=tasks.sample_seed(req.sampling.seed, k)), req.stop)
                except LocalaugError as e:  # a bad row must not stop the job
                    for j in range(k, req.n):
                        yield Result(req.id, j, None, str(e))
                    break
                yield Result(req.id, k, gen)


# --- one batch: rows in, records out --------------------------------------------------------------


@dataclass(frozen=True)
class JobConfig:
    """What a worker needs besides the model: the task, the input field(s) and the sampling."""

    task: str
    sampling: SamplingParams
    field: str = "instruction"
    response_field: str | None = None  # pairs: default "response", else "output"
    n: int = 1
    model_name: str = ""
    max_samples: int | None = None
    threshold: float = 0.7


@dataclass
class _RowRun:
    row: InputRow
    payload: str | list[Pair]
    prompt: str
    dedup: DedupFilter
    items: list[Any] = field(default_factory=list)
    samples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    waiting: dict[int, Result] = field(default_factory=dict)
    asked: int = 0


def row_payload(cfg: JobConfig, row: InputRow) -> str | list[Pair]:
    """The text (or seed pair) of a row; raises ValueError with the reason it cannot be used."""
    if row.error:
        raise ValueError(row.error)
    try:
        text = dataio.get_field(row.record, cfg.field)
    except KeyError:
        raise ValueError(f"no field {cfg.field!r} in this row") from None
    if not isinstance(text, str):
        raise ValueError(f"field {cfg.field!r} is not text")
    if not text.strip():
        raise ValueError("empty text")
    if cfg.task != "pairs":
        return text
    names = [cfg.response_field] if cfg.response_field else ["response", "output"]
    for name in names:
        with contextlib.suppress(KeyError):
            response = dataio.get_field(row.record, name)
            if isinstance(response, str) and response.strip():
                return [Pair(text, response)]
    raise ValueError(f"pairs needs a response: no non-empty {' or '.join(repr(n) for n in names)} field")


def row_identity(cfg: JobConfig, row: InputRow) -> str:
    try:
        payload = row_payload(cfg, row)
    except ValueError:
        return "bad:" + (row.raw if row.raw is not None else json.dumps(row.record, sort_keys=True, ensure_ascii=False, default=str))
    return payload if isinstance(payload, str) else f"{payload[0].instruction}\0{payload[0].response}"


def make_key(run_id: str, identity: str, occurrence: int) -> str:
    return hashlib.sha256(f"{run_id}\0{identity}\0{occurrence}".encode()).hexdigest()


def augment(backend: Backend, style: PromptStyle, cfg: JobConfig, rows: Iterable[InputRow]) -> Iterator[dict[str, Any]]:
    """Each row's record, as soon as it is finished (any order). Rows must carry ``key``."""
    runs: dict[str, _RowRun] = {}
    for row in rows:
        try:
            payload = row_payload(cfg, row)
            prompt = tasks.build_prompt(style, cfg.task, payload)
        except (ValueError, LocalaugError) as e:
            yield _record(cfg, row, "failed", str(e))
            continue
        dedup = tasks.new_dedup(style, cfg.task, payload, cfg.threshold)
        runs[row.key] = _RowRun(row, payload, prompt, dedup)
    cap = 1 if cfg.task == "refine" else (cfg.max_samples or max(3 * cfg.n, cfg.n + 4))
    todo = list(runs.values())
    while todo:
        requests = []
        for r in todo:
            need = 1 if cfg.task == "refine" else min(cfg.n - len(r.items), cap - r.samples)
            r.asked, r.waiting = need, {}
            requests.append(Request(r.row.key, r.prompt, replace(cfg.sampling, seed=tasks.sample_seed(cfg.sampling.seed, r.samples)), style.stop, need))
        todo = []
        for result in backend.run(requests):
            r = runs[result.id]
            r.waiting[result.index] = result
            if len(r.waiting) < r.asked:
                continue
            for k in sorted(r.waiting):  # accept in sample order, as the sequential loop does
                _take(style, cfg, r, r.waiting[k])
            if cfg.task != "refine" and len(r.items) < cfg.n and r.samples < cap and not r.errors:
                todo.append(r)
            else:
                del runs[result.id]
                yield _finish(style, cfg, r)


def _take(style: PromptStyle, cfg: JobConfig, r: _RowRun, result: Result) -> None:
    r.samples += 1
    if result.error is not None or result.generation is None:
        r.errors.append(result.error or "no generation")
        return
    gen = result.generation
    r.finish.append(gen.finish_reason)
    r.prompt_tokens = gen.prompt_tokens
    r.completion_tokens += gen.completion_tokens
    if cfg.task == "refine":
        r.items.append(gen)
        return
    accepted, reasons = tasks.accept(style, cfg.task, gen, r.dedup)
    for reason in reasons:
        r.rejected[reason] = r.rejected.get(reason, 0) + 1
    r.items.extend(accepted[: cfg.n - len(r.items)])


def _finish(style: PromptStyle, cfg: JobConfig, r: _RowRun) -> dict[str, Any]:
    finish = "length" if "length" in r.finish else ("stop" if r.finish else None)
    extra: dict[str, Any] = {"finish_reason": finish, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
    if cfg.task == "refine":
        if r.errors:
            return _record(cfg, r.row, "failed", r.errors[0], extra)
        gen = r.items[0]
        style_text = str(tasks.parse_reply(style, "refine", gen.text))
        extra["output"] = style_text
        if gen.finish_reason == "length":
            return _record(cfg, r.row, "failed", f"max_tokens hit ({gen.completion_tokens} tokens): raise --max-tokens", extra)
        if not style_text.strip():
            return _record(cfg, r.row, "filtered", "empty reply", extra)
        if normalize(style_text) == normalize(str(r.payload)):
            return _record(cfg, r.row, "filtered", "duplicate of the input", extra)
        return _record(cfg, r.row, "ok", None, extra)
    extra.update(samples=r.samples, rejected=r.rejected, shortfall=max(0, cfg.n - len(r.items)))
    if cfg.task == "expand":
        extra["outputs"] = list(r.items)
    else:
        extra["pairs"] = [{"instruction": p.instruction, "response": p.response} for p in r.items]
    if r.items:
        return _record(cfg, r.row, "ok", None, extra)
    if r.errors:
        return _record(cfg, r.row, "failed", r.errors[0], extra)
    reasons = set(r.rejected)
    if reasons <= {"truncated", "unparseable"}:
        why = "max_tokens hit on every sample: raise --max-tokens" if reasons == {"truncated"} else "unparseable reply"
        return _record(cfg, r.row, "failed", why, extra)
    return _record(cfg, r.row, "filtered", "every sample rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(r.rejected.items())), extra)


def _record(cfg: JobConfig, row: InputRow, status: str, error: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    rec = {(f"source_{k}" if k in RESULT_KEYS else k): v for k, v in row.record.items()}
    if row.raw is not None:
        rec["raw"] = row.raw
    rec.update(extra or {})
    rec.setdefault("finish_reason", None)
    rec.update(task=cfg.task, model=cfg.model_name, seed=cfg.sampling.seed, status=status, error=error,
               source_id=row.key, row=row.index)
    return rec


class Worker:
    """The per-batch function for any scheduler: the model is loaded once, then
    ``worker(records) -> records`` (one output record per input dict, in input order)."""

    def __init__(self, model: str | os.PathLike[str], cfg: JobConfig, *, options: EngineOptions | None = None,
                 prompt_format: str | None = None, quant: str | None = None, parallel: int = 1) -> None:
        from localaug import api

        m = api.resolve_style(model, quant, prompt_format)
        path, spec, self.style = m.path, m.spec, m.style
        self.cfg = replace(cfg, model_name=cfg.model_name or (spec.name if spec else path.name))
        self.path = path
        self.backend, self._closers = make_backend(path, options or EngineOptions(), parallel)
        self.run_id = hashlib.sha256(json.dumps([cfg.task, str(path), asdict(cfg.sampling), cfg.n]).encode()).hexdigest()

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: dict[str, int] = {}
        rows = []
        for i, rec in enumerate(records):
            row = InputRow(i, rec)
            ident = row_identity(self.cfg, row)
            seen[ident] = seen.get(ident, 0) + 1
            row.key = make_key(self.run_id, ident, seen[ident])
            rows.append(row)
        out = {r["source_id"]: r for r in augment(self.backend, self.style, self.cfg, rows)}
        return [out[row.key] for row in rows]

    def close(self) -> None:
        for close in self._closers:
            close()


def make_backend(path: Path, options: EngineOptions, parallel: int) -> tuple[Backend, list[Any]]:
    """BatchEngine when parallel > 1 and localaug.batch imports, else SequentialBackend."""
    if parallel > 1:
        try:
            from localaug.batch import BatchEngine
        except Exception:  # pragma: no cover - the batching engine is optional
            BatchEngine = None  # type: ignore[assignment,misc]  # noqa: N806
        if BatchEngine is not None:
            engine = Engine(path, options, context=False)
            batch = BatchEngine(engine, parallel=parallel, n_ctx=options.n_ctx)
            return batch, [batch.close, engine.close]
    engine = Engine(path, options)
    return SequentialBackend(engine), [engine.close]


# --- the job: ledger, resume, lock, manifest ------------------------------------------------------


@dataclass
class JobStats:
    """Live counters of one job (what progress displays and the manifest keeps)."""

    total: int = 0  # rows selected (after --shard / --limit)
    skipped: int = 0  # already in the output from an earlier run
    done: int = 0  # finished in this run
    ok: int = 0
    filtered: int = 0
    failed: int = 0
    duplicates: int = 0  # samples rejected as (near-)duplicates, outputs equal to their input
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rows_per_s(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.skipped - self.done)

    @property
    def eta_s(self) -> float | None:
        return self.remaining / self.rows_per_s if self.done else None

    def count(self, rec: dict[str, Any]) -> None:
        self.done += 1
        status = rec["status"]
        setattr(self, status, getattr(self, status) + 1)
        self.tokens += int(rec.get("completion_tokens") or 0)
        rejected = rec.get("rejected") or {}
        self.duplicates += rejected.get("duplicate", 0) + rejected.get("near-duplicate", 0)
        self.duplicates += rec.get("error") == "duplicate of the input"


class JobProgress(Protocol):
    def start(self, stats: JobStats, message: str) -> None: ...
    def update(self, stats: JobStats) -> None: ...
    def close(self) -> None: ...


@dataclass
class JobSummary:
    output: Path
    ledger: Path
    manifest: Path
    run_id: str
    stats: JobStats
    exported: int | None = None  # training examples written for --format alpaca|sharegpt|messages

    @property
    def complete(self) -> bool:
        return self.stats.remaining == 0


def job_paths(output: Path, fmt: str) -> tuple[Path, Path, Path]:
    """(ledger, manifest, lock) for an output: the ledger is the output itself for jsonl."""
    ledger = output if fmt == "jsonl" else output.with_name(output.name + ".ledger.jsonl")
    return ledger, output.with_name(output.name + ".manifest.json"), output.with_name(output.name + ".lock")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None or isinstance(shard, tuple):
        return shard
    i, sep, n = shard.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise UsageError(f"--shard {shard!r}: give i/N with 0 <= i < N, e.g. 0/4")
    return int(i), int(n)


def model_sha256(path: Path) -> str:
    """The GGUF's sha256, hashed once and cached by (path, size, mtime) in LOCALAUG_HOME."""
    from localaug.settings import localaug_home

    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = localaug_home() / "sha256-cache.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if ident in cache:
        return str(cache[ident])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    cache[ident] = h.hexdigest()
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, cache)
    return h.hexdigest()


@contextlib.contextmanager
def _output_lock(lock: Path) -> Iterator[None]:
    import fcntl

    f = open(lock, "a")  # noqa: SIM115 - held for the whole job
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobLockedError(f"another localaug run is writing {lock.with_suffix('')}: wait for it or choose another --output") from None
        yield
    finally:
        f.close()  # releases the lock; the file stays (removing it would race a waiting process)


def repair_ledger(ledger: Path) -> int:
    """Cut a torn last line (a write cut short by a kill); return the bytes removed."""
    if not ledger.exists():
        return 0
    size = ledger.stat().st_size
    if size == 0:
        return 0
    with open(ledger, "rb+") as f:
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        pos, keep = size, 0
        while pos > 0:  # find the last newline, reading backwards in blocks
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def scan_ledger(ledger: Path) -> tuple[dict[str, str], int]:
    """(row key -> status of its latest record, lines that are superseded or unreadable)."""
    status: dict[str, str] = {}
    extra = 0
    if not ledger.exists():
        return status, 0
    with open(ledger, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                key = rec["source_id"]
            except (ValueError, KeyError, TypeError):
                extra += 1
                continue
            extra += key in status
            status[key] = rec.get("status", "failed")
    return status, extra


def iter_ledger(ledger: Path, latest_only: bool = True) -> Iterator[dict[str, Any]]:
    """The ledger's records; with ``latest_only`` one per row key (its last), in ledger order."""
    last: dict[str, int] = {}
    if latest_only:
        with open(ledger, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    last[json.loads(line)["source_id"]] = i
    with open(ledger, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not latest_only or last.get(rec.get("source_id")) == i:
                yield rec


def compact_ledger(ledger: Path) -> None:
    """Rewrite the ledger with one record per row key (temp file + rename)."""
    tmp = ledger.with_name(ledger.name + ".compact.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in iter_ledger(ledger):
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ledger)


class _Appender:
    """Whole-line appends with one write() each; fsync at most every FSYNC_EVERY_S."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.synced = time.monotonic()

    def write(self, rec: dict[str, Any]) -> None:
        data = (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data):]
        if time.monotonic() - self.synced >= FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.fd)
        self.synced = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            self.sync()
            os.close(self.fd)
            self.fd = -1


def _run_config(task: str, model_path: Path, sha: str, style: PromptStyle, sampling: SamplingParams, cfg: JobConfig) -> dict[str, Any]:
    """Everything that makes a row's result what it is: the run id is its hash."""
    return {"task": task, "model_sha256": sha, "prompt_format": style.prompt_format, "sampling": asdict(sampling),
            "seed": sampling.seed, "n": cfg.n if task != "refine" else 1, "field": cfg.field,
            "response_field": cfg.response_field, "max_samples": cfg.max_samples, "threshold": cfg.threshold}


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in _changed(a, b)]
        elif a != b:
            out.append(k)
    return out


def _selected(input_path: Path, cfg: JobConfig, run_id: str, shard: tuple[int, int] | None, limit: int | None) -> Iterator[InputRow]:
    """The rows this run covers, each with its key (occurrences counted over the whole input)."""
    seen: dict[bytes, int] = {}
    taken = 0
    for row in dataio.read_rows(input_path):
        ident = row_identity(cfg, row)
        digest = hashlib.blake2b(ident.encode("utf-8", "replace"), digest_size=16).digest()
        seen[digest] = seen.get(digest, 0) + 1
        if shard is not None and row.index % shard[1] != shard[0]:
            continue
        if limit is not None and taken >= limit:
            return
        taken += 1
        row.key = make_key(run_id, ident, seen[digest])
        yield row


def run_job(
    task: str,
    input: str | os.PathLike[str],  # noqa: A002 - the CLI's --input
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    field: str = "instruction",  # noqa: F811
    response_field: str | None = None,
    n: int = 3,
    fmt: str = "jsonl",
    limit: int | None = None,
    shard: str | tuple[int, int] | None = None,
    seed: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    repeat_penalty: float | None = None,
    max_tokens: int | None = None,
    quant: str | None = None,
    prompt_format: str | None = None,
    device: str = "auto",
    gpu_layers: int | str | None = None,
    threads: int | None = None,
    n_ctx: int | None = None,
    parallel: int = 1,
    retry_failed: bool = False,
    progress: JobProgress | None = None,
) -> JobSummary:
    """Run ``task`` over every row of ``input`` into ``output``; resumable (see the module doc)."""
    from localaug import __version__, api

    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: use {', '.join(TASKS)}")
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--format {fmt!r}: use {', '.join(OUTPUT_FORMATS)}")
    if n < 1 or parallel < 1 or (limit is not None and limit < 0):
        raise UsageError("-n and --parallel must be at least 1, --limit at least 0")
    shard_t = parse_shard(shard)
    input_path, out = Path(input), Path(output)
    if not input_path.exists():
        raise UsageError(f"input {input_path} does not exist")
    dataio.input_kind(input_path)
    if out.resolve() == input_path.resolve():
        raise UsageError("--output must not be the input file")
    out.parent.mkdir(parents=True, exist_ok=True)
    ledger, manifest_path, lock = job_paths(out, fmt)
    wall0, started_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")

    with _output_lock(lock):
        m = api.resolve_style(model or api.DEFAULT_MODELS[task], quant, prompt_format)
        path, spec, style, meta = m.path, m.spec, m.style, m.meta
        sampling = api.default_sampling(spec, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                        repeat_penalty=repeat_penalty, max_tokens=max_tokens, seed=seed)
        cfg = JobConfig(task, sampling, field, response_field, n if task != "refine" else 1, spec.name if spec else path.name)
        sha = model_sha256(path)
        config = _run_config(task, path, sha, style, sampling, cfg)
        run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

        repaired = repair_ledger(ledger)
        statuses, superseded = scan_ledger(ledger)
        old = None
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if statuses and old and old.get("run_id") != run_id:
            changed = ", ".join(_changed(old.get("config", {}), config)) or "the run settings"
            raise JobError(f"{ledger} holds a different run ({changed} changed): rerun with the same arguments to resume, "
                           "or choose another --output")

        stats = JobStats()
        for row in _selected(input_path, cfg, run_id, shard_t, limit):
            stats.total += 1
            st = statuses.get(row.key)
            stats.skipped += st is not None and not (retry_failed and st == "failed")
        if stats.skipped and retry_failed:
            message = f"run {run_id[:12]}: retrying failed rows, {stats.remaining} of {stats.total} to do"
        elif stats.skipped:
            message = f"run {run_id[:12]}: resuming, {stats.skipped} of {stats.total} rows already done"
        else:
            message = f"run {run_id[:12]}: new, {stats.total} rows"
        if repaired:
            message += f" (cut a torn last line of {repaired} bytes)"

        manifest: dict[str, Any] = {
            "run_id": run_id, "complete": False, "input": str(input_path), "output": str(out), "ledger": str(ledger),
            "format": fmt, "model": {"path": str(path), "sha256": sha, "quant": _quant(meta),
                                     "family": spec.name if spec else None},
            "localaug": __version__, "llama_cpp_python": _llama_version(), "config": config,
            "shard": list(shard_t) if shard_t else None, "limit": limit, "parallel": parallel, "started": started_at,
        }

        def save_manifest(complete: bool) -> None:
            manifest.update(complete=complete, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            counts={"rows": stats.total, "skipped": stats.skipped, "done": stats.done, "ok": stats.ok,
                                    "filtered": stats.filtered, "duplicates": stats.duplicates, "failed": stats.failed},
                            wall_seconds=round(time.monotonic() - wall0, 3), tokens=stats.tokens,
                            tokens_per_s=round(stats.tokens_per_s, 2))
            write_json_atomic(manifest_path, manifest)

        save_manifest(False)
        if progress:
            progress.start(stats, message)
        appender = _Appender(ledger)
        closers: list[Any] = []
        stats.started = time.monotonic()
        try:
            if stats.remaining:
                opts = EngineOptions(device=device, gpu_layers=gpu_layers, threads=threads, n_ctx=n_ctx)  # type: ignore[arg-type]
                backend, closers = make_backend(path, opts, parallel)
                pending = (r for r in _selected(input_path, cfg, run_id, shard_t, limit)
                           if statuses.get(r.key) is None or (retry_failed and statuses[r.key] == "failed"))
                for chunk in _chunks(pending, max(4 * parallel, 8)):
                    for rec in augment(backend, style, cfg, chunk):
                        appender.write(rec)
                        superseded += rec["source_id"] in statuses
                        stats.count(rec)
                        if progress:
                            progress.update(stats)
        except KeyboardInterrupt:
            appender.close()
            save_manifest(False)
            raise JobInterrupted(
                f"interrupted: {stats.skipped + stats.done} of {stats.total} rows are saved in {ledger}; "
                "run the same command again to finish the rest") from None
        finally:
            appender.close()
            for close in closers:
                close()
            if progress:
                progress.close()
        if superseded:
            compact_ledger(ledger)
        summary = JobSummary(out, ledger, manifest_path, run_id, stats)
        if fmt != "jsonl":
            summary.exported = dataio.write_export(iter_ledger(ledger, latest_only=False), fmt, out)
        save_manifest(True)
        return summary


def _chunks(rows: Iterable[InputRow], size: int) -> Iterator[list[InputRow]]:
    chunk: list[InputRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _quant(meta: dict[str, Any]) -> str | None:
    import gguf

    ftype = meta.get("general.file_type")
    try:
        return gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        return str(ftype)


def _llama_version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)
