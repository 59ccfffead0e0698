"""Scale-out on Ray: ``localaug run … --ray`` (``run_job``) and ``augment(ds, …)`` for your own
Ray Data pipeline. Needs the ``ray`` extra: ``pip install 'localaug[ray]'`` on every node.

Each actor loads the GGUF once and runs the batches of rows it is given through
``localaug.worker.Worker`` (the continuous-batching engine when ``parallel > 1``): the prompts,
sampling, filters and records of ``localaug run``.

Row keys are those of ``localaug run``: a repeated text's occurrences are counted over the whole
input (``jobs.select_rows``), which needs every row, in order, in one place. So the driver streams
the input once (read by Ray Data, in order), numbers the rows and keys them, and puts them in the
object store as blocks for the actors. That is one pass over the input on the driver (reading,
parsing, hashing: ~15,000 rows/s) and the pending rows held by the object store (spilled to disk
when large): small next to generation, at seconds a row, and in exchange the keys do not depend
on how Ray splits the data, and outputs of ``localaug run`` and of Ray runs merge.

Exactly once. ``run_job`` writes each finished batch as ``OUTDIR/part-<hash of its row
keys>.jsonl`` (a temporary file, then a rename): a part is whole or absent, and a batch that Ray
runs again (an actor or node died) replaces its part instead of adding one. Before scheduling, the
driver reads the keys already in OUTDIR and leaves those rows out, so after a crash (or a killed
driver) the same command does only what is left. ``localaug merge OUTDIR`` keeps one record a key.

Models. The driver resolves the model as ``localaug run`` does; its sha256 is part of the run id.
A GGUF path is opened at the same path on every node (a shared filesystem); a name is looked up by
that sha256 in each node's own store (``localaug bundle import``). Nodes are checked before any
actor starts, and one without the model is named in the error.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localaug.errors import UsageError

try:  # absolute imports: this is the real Ray, not this module
    import pyarrow as pa
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - the optional extra
    raise UsageError("Ray is not installed: pip install 'localaug[ray]'") from e

from localaug import dataio, errors, parts
from localaug.atomic import write_json_atomic
from localaug.dataio import InputRow
from localaug.engine import EngineOptions
from localaug.errors import JobError, JobInterrupted, LocalaugError, ModelNotFoundError
from localaug.jobs import JobProgress, JobStats, JobSummary, RowKeys, parse_shard, record_counts, select_rows
from localaug.ledger import changed_keys, model_sha256, output_lock
from localaug.tasks import PromptStyle
from localaug.worker import RESULT_KEYS, TASKS, JobConfig, Worker, run_config, run_id_of

ROW, KEY, RECORD, ERROR, RAW = "__localaug_row", "__localaug_key", "__localaug_record", "__localaug_error", "__localaug_raw"
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens")
_FILTERS = ("max_samples", "threshold", "min_chars", "max_chars", "refusals", "echo", "dedup", "minhash_threshold")


@dataclass(frozen=True)
class Resources:
    """The actor pool. None: GPU actors take 1 CPU, CPU actors the CPUs of the smallest node, and
    as many actors start as the nodes fit (see ``plan_resources``)."""

    actors: int | None = None
    num_cpus: float | None = None  # per actor; llama.cpp threads default to this
    num_gpus: float = 0.0  # per actor; a GPU actor offloads every layer (device auto)
    batch_size: int | None = None  # rows per actor call; default max(4 x parallel, 8), as localaug run


@dataclass(frozen=True)
class ActorJob:
    """What every actor gets: the model as named, the driver's resolution of it, the run."""

    model: str  # an absolute GGUF path (a shared filesystem) or a name (each node's store)
    is_path: bool
    sha256: str
    run_id: str
    cfg: JobConfig
    style: PromptStyle
    options: EngineOptions
    parallel: int
    records: bool  # True: whole records as JSON text (run_job); False: result columns (augment)


@dataclass(frozen=True)
class _Plan:
    job: ActorJob
    config: dict[str, Any]
    path: Path
    quant: str | None
    family: str | None


# --- the cluster -----------------------------------------------------------------------------------


def connect(address: str = "auto") -> bool:
    """Join a Ray cluster: ``auto`` (RAY_ADDRESS, or the cluster ``ray start`` runs on this
    machine, else a new local one), ``local`` (a new local one) or an address. True when this
    call started Ray in this process (the caller shuts it down)."""
    if ray.is_initialized():
        return False
    # quiet: the job reports its own progress; actors' output (llama.cpp) stays in Ray's logs
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address != "auto":
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot reach the Ray cluster {address!r} ({e}): start it (ray start --head) or pass --ray local") from e
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return True


def plan_resources(res: Resources) -> Resources:
    """``res`` with its defaults filled in from the live nodes."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = float(res.num_gpus or 0)
    cpus = res.num_cpus if res.num_cpus is not None else (
        1.0 if gpus else min((r.get("CPU", 0.0) for r in nodes if r.get("CPU", 0.0) >= 1), default=1.0))
    fits = [_fit(r, cpus, gpus) for r in nodes]
    if not any(fits):
        raise UsageError(f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for an actor: lower --num-cpus or --num-gpus")
    return Resources(res.actors or sum(fits), cpus, gpus, res.batch_size)


def _fit(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many actors of (cpus, gpus) a node holds (one when they ask for nothing)."""
    counts = [int(resources.get("CPU", 0.0) // cpus)] if cpus else []
    counts += [int(resources.get("GPU", 0.0) // gpus)] if gpus else []
    return min(counts) if counts else 1


def node_name() -> str:
    node = ray.get_runtime_context().get_node_id()[:8]
    return f"{ray.util.get_node_ip_address()} (host {socket.gethostname()}, Ray node {node})"


def locate_model(model: str, is_path: bool, sha256: str) -> Path:
    """This node's copy of the driver's model: the same path, or the store entry with the same
    sha256; otherwise a ModelNotFoundError that names the node and says how to fix it."""
    from localaug import store

    if is_path:
        path = Path(model)
        if not path.is_file():
            raise ModelNotFoundError(f"{model} is not on node {node_name()}: put the GGUF on a filesystem every node mounts "
                                     "at the same path, or import it into each node's store (localaug bundle import) and pass its name")
        if model_sha256(path) != sha256:
            raise ModelNotFoundError(f"{model} on node {node_name()} is not the driver's file (sha256 differs): "
                                     "give every node the same file")
        return path
    for entry in store.list_entries():
        if entry.sha256 == sha256 and entry.path.is_file() and entry.path.stat().st_size == entry.size:
            return entry.path
    raise ModelNotFoundError(
        f"model {model} (sha256 {sha256[:12]}) is not in the store on node {node_name()} ({store.root()}): import it there "
        f"(localaug bundle export {model} -o model.tar, then localaug bundle import model.tar on that node), "
        "or put the GGUF on a shared filesystem and pass its path as --model")


@ray.remote(num_cpus=0)
def _probe(model: str, is_path: bool, sha256: str) -> str | None:
    try:
        locate_model(model, is_path, sha256)
    except LocalaugError as e:
        return str(e)
    return None


def check_nodes(job: ActorJob, res: Resources) -> None:
    """Every live node that can hold an actor has the model, or a ModelNotFoundError naming one."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and _fit(n["Resources"], res.num_cpus or 0, res.num_gpus)]
    refs = [_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(job.model, job.is_path, job.sha256) for n in nodes]
    problems = [p for p in ray.get(refs) if p]
    if len(problems) == 1:
        raise ModelNotFoundError(problems[0])
    if problems:
        raise ModelNotFoundError(f"{len(problems)} of {len(nodes)} nodes lack the model; the first: {problems[0]}")


# --- the actors --------------------------------------------------------------------------------------


class _Actor:
    """A Ray Data map_batches UDF: the model loaded once; each call is one batch of keyed rows."""

    def __init__(self, job: ActorJob) -> None:
        self.job = job
        path = locate_model(job.model, job.is_path, job.sha256)
        self.worker = Worker(path, job.cfg, options=job.options, parallel=job.parallel, style=job.style)
        if self.worker.run_id != job.run_id:
            raise JobError(f"node {node_name()} gets another run id for the same model: install one localaug version on every node")

    def __call__(self, batch: pa.Table) -> pa.Table:
        col = {name: batch[name].to_pylist() for name in batch.column_names if name.startswith("__localaug_")}
        if self.job.records:
            rows = [InputRow(i, json.loads(rec) if rec is not None else {}, err, raw, key)
                    for i, key, rec, err, raw in zip(col[ROW], col[KEY], col[RECORD], col[ERROR], col[RAW])]
            recs = self.worker.run_rows(rows)
            return pa.table({KEY: pa.array(col[KEY], pa.string()),
                             RECORD: pa.array([json.dumps(r, ensure_ascii=False, default=str) for r in recs], pa.string())})
        user = batch.drop_columns([ROW, KEY])
        rows = [InputRow(i, rec, key=key) for i, key, rec in zip(col[ROW], col[KEY], user.to_pylist())]
        return with_results(user, self.worker.run_rows(rows), self.job.cfg.task)


def result_schema(task: str) -> list[tuple[str, pa.DataType]]:
    """The columns ``augment`` adds for ``task`` (the fields of a ``localaug run`` record)."""
    common = [("task", pa.string()), ("model", pa.string()), ("seed", pa.int64()), ("status", pa.string()),
              ("error", pa.string()), ("finish_reason", pa.string()), ("source_id", pa.string()), ("row", pa.int64()),
              ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("rejected", pa.map_(pa.string(), pa.int64()))]
    if task == "refine":
        return [("output", pa.string()), *common]
    pair = pa.struct([("instruction", pa.string()), ("response", pa.string())])
    items = ("outputs", pa.list_(pa.string())) if task == "expand" else ("pairs", pa.list_(pair))
    return [items, ("samples", pa.int64()), ("shortfall", pa.int64()), *common]


def with_results(table: pa.Table, recs: list[dict[str, Any]], task: str) -> pa.Table:
    """``table`` with the result columns of ``recs`` (one a row) appended; an input column whose
    name a result uses is kept as ``source_<name>``, as in records."""
    table = table.rename_columns([f"source_{c}" if c in RESULT_KEYS else c for c in table.column_names])
    for name, typ in result_schema(task):
        values = [list((r.get(name) or {}).items()) for r in recs] if name == "rejected" else [r.get(name) for r in recs]
        table = table.append_column(name, pa.array(values, typ))
    return table


def _map(ds: ray.data.Dataset, job: ActorJob, res: Resources, actors: int) -> ray.data.Dataset:
    gpus = {"num_gpus": res.num_gpus} if res.num_gpus else {}
    # start them all, but go on with fewer when the cluster cannot fit them (yet)
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors), initial_size=max(1, actors))
    return ds.map_batches(_Actor, fn_constructor_kwargs={"job": job}, batch_size=_batch_size(job, res), batch_format="pyarrow",
                          compute=pool, num_cpus=res.num_cpus, **gpus)


def _batch_size(job: ActorJob, res: Resources) -> int:
    return res.batch_size or max(4 * job.parallel, 8)


# --- the run -------------------------------------------------------------------------------------------


def _plan(task: str, model: str | os.PathLike[str] | None, *, records: bool, threads_default: int, field: str = "instruction",
          response_field: str | None = None, n: int = 3, seed: int = 0, quant: str | None = None,
          prompt_format: str | None = None, device: str = "auto", gpu_layers: int | str | None = None,
          threads: int | None = None, n_ctx: int | None = None, parallel: int = 8, **rest: Any) -> _Plan:
    """Resolve the model and the run on the driver, as ``jobs.run_job`` does."""
    from localaug import api
    from localaug.jobs import quant_name

    unknown = set(rest) - {*_SAMPLING, *_FILTERS}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: use {', '.join(TASKS)}")
    max_samples = rest.get("max_samples")
    if n < 1 or parallel < 1 or (max_samples is not None and max_samples < n):
        raise UsageError("-n and --parallel must be at least 1, --max-samples at least -n")
    model = model or api.DEFAULT_MODELS[task]
    m = api.resolve_style(model, quant, prompt_format)
    sampling = api.default_sampling(m.spec, seed=seed, **{k: rest.get(k) for k in _SAMPLING})
    filter_opts = {k: v for k, v in rest.items() if k in _FILTERS and v is not None}
    cfg = JobConfig(task, sampling, field, response_field, n if task != "refine" else 1,
                    m.spec.name if m.spec else m.path.name, **filter_opts)
    cfg.validate()
    sha = model_sha256(m.path)
    config = run_config(cfg, sha, m.style)
    is_path = Path(model).suffix == ".gguf" and Path(model).is_file()  # as api.resolve_model decides
    options = EngineOptions(device=device, gpu_layers=gpu_layers, threads=threads or threads_default, n_ctx=n_ctx)  # type: ignore[arg-type]
    job = ActorJob(str(m.path.resolve()) if is_path else str(model), is_path, sha, run_id_of(config), cfg, m.style,
                   options, parallel, records)
    return _Plan(job, config, m.path, quant_name(m.meta), m.spec.name if m.spec else None)


def augment(ds: ray.data.Dataset, task: str, model: str | os.PathLike[str] | None = None, *, actors: int | None = None,
            num_cpus: float | None = None, num_gpus: float = 0, batch_size: int | None = None, **opts: Any) -> ray.data.Dataset:
    """``ds`` with the result columns of ``task`` added (``result_schema``), one output row per row.

    ``opts`` are ``localaug.jobs.run_job``'s: field, n, seed, sampling (temperature, max_tokens,
    …), filters, prompt_format, device, threads, parallel. ``ds`` is read once now, in order, to
    key its rows as ``localaug run`` keys them (``source_id``, ``row``); the rows are augmented
    when the returned Dataset runs. Across-row duplicates are removed per actor (``dedup``)."""
    if not ray.is_initialized():
        ray.init()
    res = plan_resources(Resources(actors, num_cpus, num_gpus, batch_size))
    plan = _plan(task, model, records=False, threads_default=max(1, int(res.num_cpus or 1)), **opts)
    check_nodes(plan.job, res)
    keys, refs, index = RowKeys(plan.job.cfg, plan.job.run_id), [], 0
    with _in_order(ds):
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows = [InputRow(index + j, rec) for j, rec in enumerate(batch.to_pylist())]
            index += len(rows)
            batch = batch.append_column(ROW, pa.array([r.index for r in rows], pa.int64()))
            refs.append(ray.put(batch.append_column(KEY, pa.array([keys.key(r) for r in rows], pa.string()))))
    if not refs:
        return ds.limit(0)
    return _map(ray.data.from_arrow_refs(refs), plan.job, res, res.actors or 1)


def run_job(
    task: str,
    input: str | os.PathLike[str],  # noqa: A002 - the CLI's --input
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    address: str = "auto",
    actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    batch_size: int | None = None,
    fmt: str = "jsonl",
    limit: int | None = None,
    shard: str | tuple[int, int] | None = None,
    retry_failed: bool = False,
    progress: JobProgress | None = None,
    **opts: Any,
) -> JobSummary:
    """``localaug run --ray``: every row of ``input`` (a file or folder, local or on any filesystem
    Ray reads) into the folder ``output``: part files and ``manifest.json``. Resumable; see the
    module doc. ``opts`` are ``jobs.run_job``'s."""
    from localaug import __version__
    from localaug.jobs import _llama_version

    if fmt != "jsonl":
        raise UsageError(f"--format {fmt} with --ray: the output is a folder of JSONL parts; "
                         f"join them with localaug merge OUTDIR -o FILE --format {fmt}")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be at least 0")
    shard_t = parse_shard(shard)
    _input_kind(str(input))  # a missing or unknown input fails before Ray starts
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} is a file: with --ray give a folder for the part files")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    wall0, started_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with output_lock(out.with_name(out.name + ".lock")):
        started = connect(address)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            res = plan_resources(Resources(actors, num_cpus, num_gpus or 0, batch_size))
            plan = _plan(task, model, records=True, threads_default=max(1, int(res.num_cpus or 1)), **opts)
            job = plan.job
            done = parts.statuses(out)
            old = parts.read_manifest(out)
            if done and old and old.get("run_id") != job.run_id:
                changed = ", ".join(changed_keys(old.get("config", {}), plan.config)) or "the run settings"
                raise JobError(f"{out} holds a different run ({changed} changed): rerun with the same arguments to resume, "
                               "or choose another --output")
            check_nodes(job, res)

            stats = JobStats()

            def pending() -> Iterator[InputRow]:
                for row in select_rows(read_input(str(input)), job.cfg, job.run_id, shard_t, limit):
                    stats.total += 1
                    status = done.get(row.key)
                    if status is not None and not (retry_failed and status == "failed"):
                        stats.skipped += 1
                    else:
                        yield row

            refs = [ray.put(block) for block in _blocks(pending(), _batch_size(job, res))]
            manifest: dict[str, Any] = {
                "run_id": job.run_id, "complete": False, "input": str(input), "output": str(out), "parts": "part-*.jsonl",
                "format": "jsonl", "model": {"path": str(plan.path), "sha256": job.sha256, "quant": plan.quant, "family": plan.family},
                "localaug": __version__, "llama_cpp_python": _llama_version(), "ray": ray.__version__, "config": plan.config,
                "shard": list(shard_t) if shard_t else None, "limit": limit, "parallel": job.parallel, "started": started_at,
                "cluster": {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "actors": min(res.actors or 1, len(refs)),
                            "num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "batch_size": _batch_size(job, res)},
            }

            def save_manifest(complete: bool) -> None:
                manifest.update(stats.manifest_fields(complete, wall0),
                                counts=record_counts(parts.records(out)) if complete else None)
                write_json_atomic(manifest_path, manifest)

            save_manifest(False)
            what = f"resuming, {stats.skipped} of {stats.total} rows already done" if stats.skipped else f"new, {stats.total} rows"
            if progress:
                progress.start(stats, f"run {job.run_id[:12]} on Ray ({manifest['cluster']['actors']} actors): {what}")
            stats.started = time.monotonic()
            try:
                if refs:
                    mapped = _map(ray.data.from_arrow_refs(refs), job, res, min(res.actors or 1, len(refs)))
                    for block in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
                        lines = block[RECORD].to_pylist()
                        parts.write_part(out, block[KEY].to_pylist(), lines)
                        for line in lines:
                            stats.count(json.loads(line))
                            if progress:
                                progress.update(stats)
            except KeyboardInterrupt:
                save_manifest(False)
                raise JobInterrupted(f"interrupted: {stats.skipped + stats.done} of {stats.total} rows are saved in {out}; "
                                     "run the same command again to finish the rest") from None
            except LocalaugError:
                save_manifest(False)
                raise
            except Exception as e:  # Ray's errors: an actor that cannot start, lost nodes past retries
                save_manifest(False)
                raise _unwrap(e) from e
            finally:
                if progress:
                    progress.close()
            save_manifest(stats.remaining == 0)
            return JobSummary(out, out, manifest_path, job.run_id, stats, counts=manifest["counts"])
        finally:
            if started:
                ray.shutdown()


def _unwrap(e: BaseException) -> LocalaugError:
    """The localaug error inside a Ray error (its class and message), else a JobError."""
    cause: BaseException | None = e
    for _ in range(8):  # Ray keeps the exception raised in a task or actor as .cause
        if cause is None or isinstance(cause, LocalaugError):
            break
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, LocalaugError):
        return cause
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.findall(r"localaug\.errors\.(\w+): (.+)", text)
    cls = getattr(errors, found[-1][0], None) if found else None
    if isinstance(cls, type) and issubclass(cls, LocalaugError):
        return cls(found[-1][1].strip())
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return JobError(f"the Ray job failed ({type(e).__name__}: {first[:300]}): finished parts are kept; "
                    "run the same command again to do the rest")


# --- input -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _in_order(ds: ray.data.Dataset) -> Iterator[None]:
    options = ds.context.execution_options
    old, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = old


_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_input(source: str) -> Iterator[InputRow]:
    """Every row of ``source`` in order: read by Ray Data (a file or a folder of files of one
    type, local or on any filesystem Ray reads), parsed as ``localaug run`` parses it."""
    kind, uri = _input_kind(source)
    if kind == "hf-disk":
        yield from dataio.read_rows(source)
        return
    here: dict[str, Any] = {}
    if "://" not in uri:  # a local path: read it on this node, which has it
        here = {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}
    index = 0
    if kind == "parquet":
        ds = ray.data.read_parquet(uri, **here)
        with _in_order(ds):
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=1024):
                for rec in batch.to_pylist():
                    yield InputRow(index, rec)
                    index += 1
        return
    exts = [s.lstrip(".") for s, k in _KINDS.items() if k == kind]
    ds = ray.data.read_binary_files(uri, include_paths=True, file_extensions=exts, **here)
    with _in_order(ds):
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=1):  # one file a row
            for data, path in zip(batch["bytes"].to_pylist(), batch["path"].to_pylist()):
                for row in dataio.text_rows(kind, io.BytesIO(data), index, path):
                    yield row
                    index = row.index + 1


def _input_kind(source: str) -> tuple[str, str]:
    """(kind, the path for Ray Data)."""
    if "://" in source:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(source)
        uri, is_dir = source, fs.get_file_info(path).type == pafs.FileType.Directory
        names = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))] if is_dir else [path]
    else:
        p = Path(source).expanduser().resolve()
        if not p.exists():
            raise UsageError(f"input {source} does not exist")
        if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            return dataio.input_kind(p), str(p)
        uri = str(p)
        names = sorted(str(f) for f in p.rglob("*") if f.is_file()) if p.is_dir() else [str(p)]
    kinds = {_KINDS[s] for s in (os.path.splitext(n)[1].lower() for n in names) if s in _KINDS}
    if len(kinds) != 1:
        raise UsageError(f"{source}: give a .jsonl, .json, .csv or .parquet file, or a folder of files of one of those types")
    return kinds.pop(), uri


def _blocks(rows: Iterable[InputRow], size: int) -> Iterator[pa.Table]:
    """Rows as blocks of ``size`` for the actors (a row's columns travel as its JSON text)."""
    chunk: list[InputRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield _block(chunk)
            chunk = []
    if chunk:
        yield _block(chunk)


def _block(rows: list[InputRow]) -> pa.Table:
    return pa.table({
        ROW: pa.array([r.index for r in rows], pa.int64()), KEY: pa.array([r.key for r in rows], pa.string()),
        RECORD: pa.array([json.dumps(r.record, ensure_ascii=False, default=str) for r in rows], pa.string()),
        ERROR: pa.array([r.error for r in rows], pa.string()), RAW: pa.array([r.raw for r in rows], pa.string()),
    })
