"""`localaug run --ray` and `localaug.jobs.on_ray.augment`: the same records as `localaug run`, exactly once.

A local Ray instance (2 CPUs) and a real two-node cluster on this machine (ray.cluster_utils),
both started and stopped here; the tiny Qwen2 fixture with greedy decoding.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray  # the test extra installs it: a missing Ray is a failure, not a skip

from localaug.core.errors import JobError, ModelNotFoundError, UsageError
from localaug.jobs import dataio
from localaug.jobs.run import run_job

TINY = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=3, threads=1)  # replies hit max_tokens
SCRIPTED = dict(prompt_format="qwen2-chatml", temperature=0.0, max_tokens=64, threads=1)  # replies that end
LOOPBACK = "127.0.0.1"  # the local Ray instance of these tests listens on loopback only
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def test_single_machine_path_does_not_import_ray():
    code = "import sys, localaug.cli, localaug.api, localaug.jobs.run, localaug.jobs.worker, localaug.jobs.merge; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_ray_options_need_ray(tmp_path):
    from typer.testing import CliRunner

    from localaug.cli.main import app

    r = CliRunner().invoke(app, ["run", "refine", "-i", str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o"), "--actors", "2"])
    assert r.exit_code == 2 and "go with --ray" in r.output


# --- helpers ---------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def part_records(out: Path) -> list[dict]:
    return [rec for part in sorted(out.glob("part-*.jsonl")) for rec in records(part)]


def merged(out: Path, tmp_path: Path, n_rows: int) -> list[dict]:
    """OUTDIR merged with localaug merge: exactly one record per input row, in input order."""
    from localaug.jobs.merge import merge_outputs

    dest = tmp_path / f"{out.name}.merged.jsonl"
    merge_outputs([out], dest, dedup="none")
    recs = records(dest)
    assert [r["row"] for r in recs] == list(range(n_rows))
    assert len({r["source_id"] for r in recs}) == n_rows
    return recs


def by_key(recs: list[dict]) -> dict[str, dict]:
    return {r["source_id"]: r for r in recs}


def rows_of(n: int, distinct: int | None = None) -> list[dict]:
    distinct = distinct or n
    return [{"id": i, "instruction": f"Write a short note about topic number {i % distinct}.", "output": "old",
             "meta": {"i": i}} for i in range(n)]


@pytest.fixture(scope="module")
def tiny(converted) -> Path:
    return converted("tied", "Q8_0")


@pytest.fixture(scope="module")
def refiner(scripted) -> Path:
    """Writes tests/scripted_fixture.py's SCRIPTS["refine"][0] and stops: records are ok."""
    return scripted("refine")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALAUG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


def _ray_env(home: Path) -> dict[str, str]:
    return {"OMP_WAIT_POLICY": "PASSIVE", "LOCALAUG_HOME": str(home)}


@contextlib.contextmanager
def _restored_env():
    """Put back what the fixtures set for Ray's workers (Ray's own variables, such as the
    RAY_AUTH_MODE a start sets, must stay for the next start in this process)."""
    old = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "LOCALAUG_HOME")}
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- a local Ray instance ---------------------------------------------------------------------------


@pytest.fixture(scope="class")
def local_ray(tmp_path_factory):
    home = tmp_path_factory.mktemp("ray-home")
    with _restored_env():
        os.environ.update(_ray_env(home))  # what the workers of this instance inherit
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _node_ip_address=LOOPBACK)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def _kinds_input(kind: str, tmp_path: Path) -> Path:
    rows = [{"instruction": f"Row {i}\u2028x", "id": str(i), "note": "a,\"b\"\nc"} for i in range(5)]
    if kind == "jsonl":
        return write_jsonl(tmp_path / "in.jsonl", rows, "\nnot json\n[1]\n")
    if kind == "json":
        (tmp_path / "in.json").write_text(json.dumps(rows + [3]), encoding="utf-8")
        return tmp_path / "in.json"
    if kind == "csv":
        import csv

        with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8-sig") as f:
            w = csv.DictWriter(f, ["instruction", "id", "note"])
            w.writeheader()
            w.writerows(rows)
        return tmp_path / "in.csv"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    return tmp_path / "in.parquet"


@pytest.mark.usefixtures("local_ray")
class TestLocal:
    @pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
    def test_inputs_read_by_ray_data_parse_as_localaug_run(self, kind, tmp_path):
        from localaug.jobs.on_ray import read_input

        src = _kinds_input(kind, tmp_path)
        want = [(r.index, r.record, r.error, r.raw) for r in dataio.read_rows(src)]
        assert [(r.index, r.record, r.error, r.raw) for r in read_input(str(src))] == want

    def test_a_folder_of_files_is_one_input_in_order(self, tmp_path):
        from localaug.jobs.on_ray import read_input

        folder = tmp_path / "parts"
        folder.mkdir()
        write_jsonl(folder / "a.jsonl", rows_of(3))
        write_jsonl(folder / "b.jsonl", rows_of(2))
        got = list(read_input(str(folder)))
        assert [r.index for r in got] == list(range(5)) and [r.record["id"] for r in got] == [0, 1, 2, 0, 1]
        with pytest.raises(UsageError, match="does not exist"):
            list(read_input(str(tmp_path / "missing.jsonl")))

    def test_records_equal_localaug_run_row_for_row_and_resume(self, tmp_path, refiner):
        from scripted_fixture import SCRIPTS

        from localaug.jobs import on_ray as lray

        # repeated texts (occurrence numbers), a bad line, a column named like a result field
        src = write_jsonl(tmp_path / "in.jsonl", rows_of(20, distinct=7), "not json\n")
        single = tmp_path / "single.jsonl"
        run_job("refine", src, single, model=refiner, parallel=4, **SCRIPTED)
        out = tmp_path / "out"
        summary = lray.run_job("refine", src, out, model=refiner, parallel=4, actors=1, num_cpus=1, **SCRIPTED)
        assert summary.complete and summary.stats.done == 21 and len(list(out.glob("part-*.jsonl"))) == 2
        assert summary.stats.ok == 20 and summary.stats.failed == 1  # the bad line
        assert {r["output"] for r in part_records(out) if r["status"] == "ok"} == {SCRIPTS["refine"][0]}
        assert by_key(part_records(out)) == by_key(records(single))  # same keys, same records
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] and manifest["run_id"] == json.loads((tmp_path / "single.jsonl.manifest.json").read_text())["run_id"]
        assert manifest["counts"]["rows"] == 21 and manifest["cluster"]["actors"] == 1
        assert merged(out, tmp_path, 21) == sorted(records(single), key=lambda r: r["row"])
        # the same command again: nothing to do; other arguments: refused, naming what changed
        again = lray.run_job("refine", src, out, model=refiner, parallel=4, actors=1, num_cpus=1, **SCRIPTED)
        assert again.stats.skipped == 21 and again.stats.done == 0
        with pytest.raises(JobError, match="sampling.max_tokens changed"):
            lray.run_job("refine", src, out, model=refiner, parallel=4, **{**SCRIPTED, "max_tokens": 4})
        with pytest.raises(UsageError, match="localaug merge"):
            lray.run_job("refine", src, tmp_path / "o2", model=refiner, fmt="alpaca", **SCRIPTED)

    def test_augment_adds_result_columns_to_a_users_dataset(self, tmp_path, refiner):
        from localaug.jobs.on_ray import augment

        rows = rows_of(10, distinct=4)
        single = tmp_path / "single.jsonl"
        run_job("refine", write_jsonl(tmp_path / "in.jsonl", rows), single, model=refiner, parallel=4, **SCRIPTED)
        want = by_key(records(single))
        assert {w["status"] for w in want.values()} == {"ok"}
        ds = ray.data.from_items(rows)
        out = augment(ds, "refine", refiner, parallel=4, actors=1, num_cpus=1, **SCRIPTED)
        got = sorted(out.take_all(), key=lambda r: r["row"])
        assert [r["row"] for r in got] == list(range(10))
        for r in got:
            w = want[r["source_id"]]
            assert (r["output"], r["status"], r["error"], r["row"], r["id"]) == (w["output"], w["status"], w["error"], w["row"], w["id"])
            assert r["source_output"] == "old" and r["meta"] == {"i": r["id"]}
        # it composes: read -> augment -> filter -> write, lazily
        kept = augment(ds, "refine", refiner, parallel=4, actors=1, num_cpus=1, **SCRIPTED).filter(lambda r: r["id"] % 2 == 0)
        kept.write_parquet(str(tmp_path / "pq"))
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / "pq")
        assert table.num_rows == 5 and {"output", "source_id", "rejected", "source_output"} <= set(table.column_names)

    def test_augment_chains_a_responder_one_row_per_new_instruction(self, tmp_path, refiner, scripted):
        from scripted_fixture import SCRIPTS

        from localaug.jobs.on_ray import augment

        ds = ray.data.from_items(rows_of(4))
        out = augment(ds, "refine", refiner, parallel=2, actors=1, num_cpus=1, respond_with=scripted("respond"),
                      respond={"temperature": 0.0, "max_tokens": 64}, **SCRIPTED)
        got = sorted(out.take_all(), key=lambda r: r["origin"]["row"])
        assert [r["origin"]["row"] for r in got] == [0, 1, 2, 3] and {r["origin"]["task"] for r in got} == {"refine"}
        for r in got:
            assert (r["instruction"], r["response"], r["status"]) == (SCRIPTS["refine"][0], SCRIPTS["respond"][0], "ok")

    def test_killed_actor_still_gives_one_record_per_row(self, tmp_path, refiner):
        from ray._private import state

        from localaug.jobs import on_ray as lray

        n = 64  # 8 batches over 2 actors: the kill lands mid-run
        src = write_jsonl(tmp_path / "in.jsonl", rows_of(n))
        args = dict(model=refiner, parallel=2, **SCRIPTED)
        out = tmp_path / "out"
        killed: list[int] = []

        def kill_an_actor() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not list(out.glob("part-*.jsonl")):
                time.sleep(0.02)
            for info in state.actors().values():
                if "MapWorker" in info["ActorClassName"] and info["State"] == "ALIVE":
                    os.kill(info["Pid"], signal.SIGKILL)
                    killed.append(info["Pid"])
                    return

        thread = threading.Thread(target=kill_an_actor)
        thread.start()
        summary = lray.run_job("refine", src, out, actors=2, num_cpus=1, **args)  # batches of 8, as localaug run
        thread.join()
        assert killed and summary.complete and summary.stats.done == n
        # Ray restarted the actor (a new process) and ran again what it held
        assert any(a["NumRestarts"] >= 1 for a in state.actors().values() if "MapWorker" in a["ActorClassName"])
        assert len(part_records(out)) == n  # the batch run again replaced its part, no second copy
        single = tmp_path / "single.jsonl"
        run_job("refine", src, single, **args)
        assert merged(out, tmp_path, n) == sorted(records(single), key=lambda r: r["row"])

    def test_restart_after_killing_the_driver_skips_finished_rows(self, tmp_path, refiner, local_ray):
        n = 40
        src = write_jsonl(tmp_path / "in.jsonl", rows_of(n))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "localaug.cli", "run", "refine", "-i", str(src), "-o", str(out), "-m", str(refiner),
               "--prompt-format", "qwen2-chatml", "--temperature", "0", "--max-tokens", "64", "--threads", "1",
               "--parallel", "2", "--ray", local_ray, "--actors", "1", "--num-cpus", "1"]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # with the token of this Ray instance (RAY_AUTH_MODE)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("part-*.jsonl"))) < 1:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        done_before = len(part_records(out))
        assert 0 < done_before < n, err
        from localaug.jobs.merge import merge_outputs

        partial = merge_outputs([out], tmp_path / "partial.jsonl")  # the folder's manifest says unfinished
        assert partial.rows == done_before and partial.warnings == [f"{out} is unfinished: rerun its command to complete it, then merge again"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"resuming, {done_before} of {n} rows already done" in r.stderr
        assert "localaug merge" in r.stderr
        recs = merged(out, tmp_path, n)
        assert len(part_records(out)) == n  # nothing was done twice
        single = tmp_path / "single.jsonl"
        run_job("refine", src, single, model=refiner, parallel=2, **SCRIPTED)
        assert by_key(recs) == by_key(records(single)) and {r["status"] for r in recs} == {"ok"}


# --- two nodes ---------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def two_nodes(tmp_path_factory, qwen2_tied):
    """A head and a worker node; the model is in the head's store only (by name)."""
    from ray.cluster_utils import Cluster

    from localaug.store import local as store

    head_home, worker_home = tmp_path_factory.mktemp("head-home"), tmp_path_factory.mktemp("worker-home")
    with _restored_env():
        os.environ["LOCALAUG_HOME"] = str(head_home)
        entry = store.pull(str(qwen2_tied), quant="Q8_0")
        # (ray.cluster_utils binds this machine's own address, not loopback; nothing leaves the machine)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                 "env_vars": _ray_env(head_home)})
        worker = cluster.add_node(num_cpus=1, env_vars=_ray_env(worker_home))
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield {"name": entry.name, "path": entry.path, "home": head_home, "worker": worker.node_id}
        finally:
            ray.shutdown()
            cluster.shutdown()


class TestTwoNodes:
    def test_two_nodes_equal_localaug_run(self, tmp_path, two_nodes):
        from ray._private import state

        from localaug.jobs import on_ray as lray

        src = write_jsonl(tmp_path / "in.jsonl", rows_of(16, distinct=5))
        gguf = two_nodes["path"]  # one path for both nodes: a shared filesystem
        out = tmp_path / "out"
        summary = lray.run_job("refine", src, out, model=gguf, parallel=2, actors=2, num_cpus=1, batch_size=8, **TINY)
        assert summary.complete and json.loads((out / "manifest.json").read_text())["cluster"]["nodes"] == 2
        single = tmp_path / "single.jsonl"
        run_job("refine", src, single, model=gguf, parallel=2, **TINY)
        assert merged(out, tmp_path, 16) == sorted(records(single), key=lambda r: r["row"])
        nodes = {a["Address"]["NodeID"] for a in state.actors().values() if "MapWorker" in a["ActorClassName"]}
        assert len(nodes) == 2  # an actor on each node

    def test_a_node_without_the_model_is_named(self, tmp_path, two_nodes, monkeypatch):
        from localaug.jobs import on_ray as lray

        monkeypatch.setenv("LOCALAUG_HOME", str(two_nodes["home"]))  # the driver's store has it
        src = write_jsonl(tmp_path / "in.jsonl", rows_of(2))
        with pytest.raises(ModelNotFoundError) as e:
            lray.run_job("refine", src, tmp_path / "out", model=two_nodes["name"], actors=2, num_cpus=1, **TINY)
        msg = str(e.value)
        assert f"Ray node {two_nodes['worker'][:8]}" in msg and "localaug bundle import" in msg and "shared filesystem" in msg
        assert "\n" not in msg and not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize("task", ["refine", "expand", "pairs"])
def test_result_columns_have_one_type_per_task(task):
    import pyarrow as pa

    from localaug.jobs.on_ray import result_schema, with_results

    base = {"task": task, "model": "m", "seed": 0, "source_id": "k", "row": 0, "prompt_tokens": 3, "completion_tokens": 2}
    ok = {**base, "status": "ok", "error": None, "finish_reason": "stop", "rejected": {"duplicate": 2},
          "output": "a", "outputs": ["a", "b"], "pairs": [{"instruction": "i", "response": "r"}], "samples": 4, "shortfall": 0}
    bad = {**base, "status": "failed", "error": "empty text", "finish_reason": None}  # fields of a row that never ran
    table = with_results(pa.table({"output": ["old", "old2"], "x": [1, 2]}), [ok, bad], task)
    assert table.column_names == ["source_output", "x", *(name for name, _ in result_schema(task))]
    rows = table.to_pylist()
    assert rows[0]["rejected"] == [("duplicate", 2)] and rows[1]["rejected"] == [] and rows[1]["error"] == "empty text"
    items = {"refine": "output", "expand": "outputs", "pairs": "pairs"}[task]
    assert rows[0][items] == ok[items] and rows[1][items] is None
