"""Scale-out on Ray: ``localaug run … --ray`` (``run_job``) and ``augment(ds, …)`` for your own
Ray Data pipeline. Needs the ``ray`` extra: ``pip install 'localaug[ray]'`` on every node.

Each actor loads the GGUF once and runs the batches of rows it is given through
``localaug.jobs.worker.Worker`` (the continuous-batching engine when ``parallel > 1``): the prompts,
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localaug.core.errors import UsageError
from localaug.core.install import extra_hint

try:  # absolute imports: this is the real Ray, not this module
    import pyarrow as pa
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - the optional extra
    raise UsageError(f"Ray is not installed: {extra_hint('ray')}") from e

from localaug.augment.resolve import DEFAULT_MODELS
from localaug.core import errors
from localaug.core.errors import JobError, LocalaugError, ModelNotFoundError, opt
from localaug.core.files import cached_sha256
from localaug.family.styles import PromptStyle
from localaug.jobs import dataio, parts
from localaug.jobs.chain import responder_options
from localaug.jobs.config import JobConfig
from localaug.jobs.dataio import InputRow
from localaug.jobs.keys import RowKeys, make_key
from localaug.jobs.ledger import record_counts
from localaug.jobs.paths import FOLDER_MANIFEST, folder_manifest, lock_path
from localaug.jobs.run import JobOptions, JobPlan, JobProgress, JobStats, JobSummary, Target, execute
from localaug.jobs.worker import Worker, result_keys
from localaug.runtime.backend import DEFAULT_PARALLEL, rows_per_chunk
from localaug.runtime.engine import EngineOptions
from localaug.runtime.remote import is_remote

ROW, KEY, RECORD, ERROR, RAW = "__localaug_row", "__localaug_key", "__localaug_record", "__localaug_error", "__localaug_raw"


@dataclass(frozen=True)
class Resources:
    """The actor pool. None: GPU actors take 1 CPU, CPU actors the CPUs of the smallest node, and
    as many actors start as the nodes fit (see ``plan_resources``)."""

    actors: int | None = None
    num_cpus: float | None = None  # per actor; llama.cpp threads default to this
    num_gpus: float = 0.0  # per actor; a GPU actor offloads every layer (device auto)
    batch_size: int | None = None  # rows per actor call; default runtime.backend.rows_per_chunk, as localaug run


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
    parallel: int | None  # None: each actor calibrates for its node (cached in the node's store)
    records: bool  # True: whole records as JSON text (run_job); False: result columns (augment)


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
        raise UsageError(f"cannot reach the Ray cluster {address!r} ({e}): start it (ray start --head) or pass "
                         f"{opt('address')} local") from e
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
        raise UsageError(f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for an actor: lower {opt('num_cpus')} or "
                         f"{opt('num_gpus')}")
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
    from localaug.store import local as store

    if is_path:
        path = Path(model)
        if not path.is_file():
            raise ModelNotFoundError(f"{model} is not on node {node_name()}: put the GGUF on a filesystem every node mounts "
                                     "at the same path, or import it into each node's store (localaug bundle import) and pass its name")
        if cached_sha256(path) != sha256:
            raise ModelNotFoundError(f"{model} on node {node_name()} is not the driver's file (sha256 differs): "
                                     "give every node the same file")
        return path
    for entry in store.list_entries():
        if entry.sha256 == sha256 and entry.path.is_file() and entry.path.stat().st_size == entry.size:
            return entry.path
    raise ModelNotFoundError(
        f"model {model} (sha256 {sha256[:12]}) is not in the store on node {node_name()} ({store.root()}): import it there "
        f"(localaug bundle export {model} -o model.tar, then localaug bundle import model.tar on that node), "
        f"or put the GGUF on a shared filesystem and pass its path as {opt('model')}", node=node_name())


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
                             RECORD: pa.array([dataio.json_line(r) for r in recs], pa.string())})
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
    if task == "respond":  # the answered text is the input's own field
        return [("response", pa.string()), *common]
    pair = pa.struct([("instruction", pa.string()), ("response", pa.string())])
    items = ("outputs", pa.list_(pa.string())) if task == "expand" else ("pairs", pa.list_(pair))
    return [items, ("samples", pa.int64()), ("shortfall", pa.int64()), *common]


def with_results(table: pa.Table, recs: list[dict[str, Any]], task: str) -> pa.Table:
    """``table`` with the result columns of ``recs`` (one a row) appended; an input column whose
    name a result uses is kept as ``source_<name>``, as in records."""
    reserved = result_keys(task)
    table = table.rename_columns([f"source_{c}" if c in reserved else c for c in table.column_names])
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
    return res.batch_size or rows_per_chunk(job.parallel or DEFAULT_PARALLEL)


# --- the run -------------------------------------------------------------------------------------------


def actor_job(opts: JobOptions, plan: JobPlan, res: Resources, records: bool) -> ActorJob:
    """What every actor gets for ``plan``: a GGUF path is opened at the same path on every node (a
    shared filesystem), a name is looked up by its sha256 in each node's store."""
    model = str(opts.model or DEFAULT_MODELS[opts.task])
    is_path = Path(model).suffix == ".gguf" and Path(model).is_file()  # as resolve_model decides
    return ActorJob(str(Path(model).resolve()) if is_path else str(model), is_path, plan.sha256, plan.run_id, plan.job_config,
                    plan.style, opts.engine.options(threads_default=max(1, int(res.num_cpus or 1))), opts.engine.parallel,
                    records)


def _refuse_remote(*models: object) -> None:
    """Actors load a GGUF each; a model on a server (a URL) is driven from one machine."""
    if any(is_remote(m) for m in models):
        raise UsageError("a model on a server (a URL) is not run on Ray: run localaug run without --ray (its "
                         f"{opt('parallel')} requests stay in flight to the server)")


def augment(ds: ray.data.Dataset, task: str, model: str | os.PathLike[str] | None = None, *, actors: int | None = None,
            num_cpus: float | None = None, num_gpus: float = 0, batch_size: int | None = None,
            respond_with: str | os.PathLike[str] | None = None, respond: dict[str, Any] | None = None,
            **opts: Any) -> ray.data.Dataset:
    """``ds`` with the result columns of ``task`` added (``result_schema``), one output row per row.

    ``opts`` are ``localaug.jobs.run.JobOptions``' fields: field, n, seed, sampling (temperature,
    max_tokens, …), filters, prompt_format, system, examples, device, threads, parallel. ``ds`` is
    read once now, in order, to key its rows as ``localaug run`` keys them (``source_id``, ``row``);
    the rows are augmented when the returned Dataset runs. Across-row duplicates are removed per
    actor (``dedup``).

    ``respond_with`` (refine, expand): the returned Dataset is then one row per new instruction
    (``instruction``, ``origin`` = {task, source_id, item}) with the responder's result columns
    (``response``, ``status``, …), answered by a second actor pool loading that model; ``respond``
    holds the responder's own JobOptions fields (system, max_tokens, …)."""
    _refuse_remote(model, respond_with)
    if not ray.is_initialized():
        ray.init()
    res = plan_resources(Resources(actors, num_cpus, num_gpus, batch_size))
    job_opts = JobOptions.of(task, model=model, **opts)
    job_opts.check()
    plan = job_opts.plan()
    job = actor_job(job_opts, plan, res, records=False)
    check_nodes(job, res)
    answer = None
    if respond_with is not None:
        answer_opts = JobOptions.of("respond", model=respond_with, **responder_options(task, job_opts.kwargs(), respond or {}))
        answer_opts.check()
        answer = actor_job(answer_opts, answer_opts.plan(), res, records=False)
        check_nodes(answer, res)
    keys, refs, index = RowKeys(job.cfg, job.run_id), [], 0
    with _in_order(ds):
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows = [InputRow(index + j, rec) for j, rec in enumerate(batch.to_pylist())]
            index += len(rows)
            batch = batch.append_column(ROW, pa.array([r.index for r in rows], pa.int64()))
            refs.append(ray.put(batch.append_column(KEY, pa.array([keys.key(r) for r in rows], pa.string()))))
    if not refs:
        return ds.limit(0)
    out = _map(ray.data.from_arrow_refs(refs), job, res, res.actors or 1)
    if answer is None:
        return out
    return _map(out.flat_map(_NewInstructions(answer.run_id)), answer, res, res.actors or 1)


class _NewInstructions:
    """Ray Data flat_map: an augmented row -> one keyed row per new instruction it holds."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"instruction": text, "origin": {"task": row.get("task"), "source_id": row.get("source_id"),
                                                 "row": row.get("row"), "item": k},
                 ROW: row.get("row"), KEY: make_key(self.run_id, f"{row.get('source_id')}\0{k}", 1)}
                for k, (text, _) in enumerate(dataio.examples(row))]


class PartsTarget:
    """The output of ``localaug run --ray``: a folder of part files and its manifest.json."""

    def __init__(self, out: Path) -> None:
        self.out = self.where = out
        self.manifest_path, self.lock = folder_manifest(out), lock_path(out)
        self.statuses: dict[str, str] = {}

    def prepare(self) -> str:
        self.statuses = parts.statuses(self.out)
        return ""

    def drop(self, keys: set[str]) -> tuple[int, Path]:
        moved = parts.drop_keys(self.out, keys)
        self.statuses = {k: v for k, v in self.statuses.items() if k not in keys}
        return moved, self.out / parts.STALE

    def records(self) -> Iterator[dict[str, Any]]:
        return parts.records(self.out)

    def write(self, records: list[dict[str, Any]]) -> None:
        parts.write_part(self.out, [r["source_id"] for r in records],
                         [dataio.json_line(r) for r in records])

    def close(self) -> None:
        pass

    def finish(self) -> int | None:
        return None

    def counts(self) -> dict[str, Any]:
        return record_counts(parts.records(self.out))

    def manifest_fields(self) -> dict[str, Any]:
        return {"output": str(self.out), "parts": "part-*.jsonl", "format": "jsonl"}

    def summary(self, run_id: str, stats: JobStats) -> JobSummary:
        return JobSummary(self.out, self.out, self.manifest_path, run_id, stats)


class RayExecutor:
    """Rows read by Ray Data on the driver and keyed there; records made by an actor pool, one
    part file per batch."""

    def __init__(self, source: str, address: str, res: Resources, task: str = "") -> None:
        self.source, self.address, self.res = source, address, res
        self.blocks: list[InputRow] = []
        self.refs: list[Any] = []
        self.started = False
        self.where = ""
        self.note = ""
        self.task = task
        self._job: ActorJob | None = None

    def plan(self, opts: JobOptions) -> JobPlan:
        self.started = connect(self.address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        self.res = plan_resources(self.res)
        plan = opts.plan()
        self._job = actor_job(opts, plan, self.res, records=True)
        check_nodes(self._job, self.res)
        self.task = opts.task
        return plan

    def load(self, plan: JobPlan) -> None:
        pass  # the actors load the model, each once, when the first block reaches them

    def rows(self) -> Iterator[InputRow]:
        rows = read_input(self.source)
        return dataio.instruction_rows(rows) if self.task == "respond" else rows

    def column_rows(self) -> Iterator[InputRow] | None:
        """A local file is read here before Ray starts (its columns are checked before any actor
        loads the model); a folder or a URI is read by Ray Data later."""
        path = Path(self.source).expanduser()
        if "://" in self.source or not path.is_file():
            return None
        rows = dataio.read_rows(path)
        return dataio.instruction_rows(rows) if self.task == "respond" else rows

    def stage(self, row: InputRow) -> None:
        assert self._job is not None
        self.blocks.append(row)
        if len(self.blocks) >= _batch_size(self._job, self.res):
            self.refs.append(ray.put(_block(self.blocks)))
            self.blocks = []

    def _actors(self) -> int:
        return min(self.res.actors or 1, len(self.refs) + bool(self.blocks))

    def run(self, plan: JobPlan, pending: Any, target: Target) -> Iterator[list[dict[str, Any]]]:
        assert self._job is not None
        if self.blocks:
            self.refs.append(ray.put(_block(self.blocks)))
            self.blocks = []
        mapped = _map(ray.data.from_arrow_refs(self.refs), self._job, self.res, self._actors())
        try:
            for block in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
                yield [json.loads(line) for line in block[RECORD].to_pylist()]
        except (KeyboardInterrupt, LocalaugError):
            raise
        except Exception as e:  # Ray's errors: an actor that cannot start, lost nodes past retries
            raise _unwrap(e) from e

    def manifest_fields(self, plan: JobPlan) -> dict[str, Any]:
        assert self._job is not None
        actors = self._actors()
        self.where = f" on Ray ({actors} actors)"
        return {"ray": ray.__version__,
                "cluster": {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "actors": actors,
                            "num_cpus": self.res.num_cpus, "num_gpus": self.res.num_gpus,
                            "batch_size": _batch_size(self._job, self.res)},
                "parallel": self._job.parallel, "parallel_chosen": "given" if self._job.parallel else "per actor"}

    def close(self) -> None:
        if self.started:
            ray.shutdown()
            self.started = False


def run_job(
    task: str,
    input: str | os.PathLike[str],  # noqa: A002 - the CLI's --input
    output: str | os.PathLike[str],
    *,
    address: str = "auto",
    actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    batch_size: int | None = None,
    fmt: str = "jsonl",
    progress: JobProgress | None = None,
    **options: Any,
) -> JobSummary:
    """``localaug run --ray``: every row of ``input`` (a file or folder, local or on any filesystem
    Ray reads) into the folder ``output``: part files and ``manifest.json``. Resumable; see the
    module doc. ``options`` are ``JobOptions``' fields."""
    _refuse_remote(options.get("model"))
    opts = JobOptions.of(task, **options)
    if fmt != "jsonl":
        raise UsageError(f"{opt('fmt')} {fmt} with Ray: the output is a folder of JSONL parts; "
                         f"join them with localaug merge OUTDIR -o FILE --format {fmt}")
    opts.check()
    _input_kind(str(input))  # a missing or unknown input fails before Ray starts
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{opt('output')} {out} is a file: with Ray give a folder for the part files")
    out.mkdir(parents=True, exist_ok=True)
    _refuse_output_among_inputs(str(input), out)
    executor = RayExecutor(str(input), address, Resources(actors, num_cpus, num_gpus or 0, batch_size), opts.task)
    return execute(opts, str(input), PartsTarget(out), executor, progress)


def _refuse_output_among_inputs(source: str, out: Path) -> None:
    """The part files, manifest and stale records written in ``out`` may not be (or lie in) the input."""
    if "://" in source:
        return
    inp, folder = Path(source).expanduser().resolve(), out.resolve()
    written = inp.parent == folder and (inp.name.startswith("part-") or inp.name in (FOLDER_MANIFEST, parts.STALE))
    if inp == folder or written or folder.is_relative_to(inp):
        raise UsageError(f"{opt('output')} {out} and the input {source} overlap (the part files would be read as input "
                         f"or written over it): give another {opt('output')} folder")


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
    found = re.findall(r"localaug\.core\.errors\.(\w+): (.+)", text)
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


def _block(rows: list[InputRow]) -> pa.Table:
    return pa.table({
        ROW: pa.array([r.index for r in rows], pa.int64()), KEY: pa.array([r.key for r in rows], pa.string()),
        RECORD: pa.array([json.dumps(r.record, ensure_ascii=False, default=str) for r in rows], pa.string()),
        ERROR: pa.array([r.error for r in rows], pa.string()), RAW: pa.array([r.raw for r in rows], pa.string()),
    })
