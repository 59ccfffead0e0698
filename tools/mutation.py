"""Mutation testing with mutmut over the modules whose results users keep; writes docs/mutation.md.

mutmut (configured under ``[tool.mutmut]`` in pyproject.toml) makes every small edit it knows
(an operator, a number, a string, a removed argument, a swapped ``and``/``or`` ...) to each
function of a module and runs the tests that reach that function: a mutant the tests still pass
is a *survivor*. This driver runs mutmut once per module in a scratch copy of the working tree
(so the checkout is never touched), with the fast tests that guard that module (``MODULES``),
reads mutmut's results, and keeps each module's result in ``tools/mutation-results/<module>.json``
(the score, every survivor, the commit, a sha256 of the module and its guarding tests, the date,
the seconds taken), so modules can be measured one at a time. ``--write`` assembles the report
from those results; a result whose module or guarding tests changed since is marked stale.

A survivor that no behaviour can tell apart from the original (an equivalent mutant) is listed in
``tools/mutation-equivalent/*.toml`` with the reason; it leaves the score's denominator. Every other
survivor is a gap: a test should kill it.

    python tools/mutation.py                              # every module
    python tools/mutation.py localaug/jobs/keys.py        # some modules
    python tools/mutation.py --stale                      # the modules without a fresh result
    python tools/mutation.py --limit 600 localaug/runtime/batch.py   # stop after 10 min: a partial result
    python tools/mutation.py --collect localaug/runtime/batch.py     # keep an interrupted run's result
    python tools/mutation.py --write docs/mutation.md     # and write the report
    python tools/mutation.py --report-only --write docs/mutation.md   # the report from kept results
    python tools/mutation.py --survivors localaug/jobs/keys.py   # the survivors' diffs

Exit status 1 when a module scores under ``--goal`` (default 85 %).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tools" / "mutation-equivalent"  # *.toml: [[equivalent]] module, function, diff, reason
RESULTS = ROOT / "tools" / "mutation-results"  # <module>.json: one measured result per module
SCRATCH = Path(os.environ.get("LOCALAUG_MUTATION_DIR", "/tmp/localaug-mutation"))

# module -> the fast tests that guard it (run for every mutant that these tests reach)
MODULES: dict[str, tuple[str, ...]] = {
    "localaug/jobs/ledger.py": ("tests/test_mut_jobs_ledger.py",),
    "localaug/jobs/merge.py": ("tests/test_mut_jobs_merge.py", "tests/test_mut_jobs_ledger.py"),
    "localaug/jobs/keys.py": ("tests/test_mut_jobs_keys.py",),
    "localaug/jobs/dataio.py": ("tests/test_mut_jobs_dataio.py",),
    "localaug/jobs/readers.py": ("tests/test_mut_readers.py", "tests/test_mut_jobs_dataio.py", "tests/test_readers_places.py"),
    "localaug/jobs/pending.py": ("tests/test_mut_pending.py",),
    "localaug/jobs/seen.py": ("tests/test_mut_seen.py", "tests/test_seen_book.py"),
    "localaug/jobs/chain.py": ("tests/test_mut_jobs_chain.py",),
    "localaug/augment/tasks.py": ("tests/test_mut_augment_tasks.py",),
    "localaug/augment/filters.py": ("tests/test_mut_augment_filters.py", "tests/test_mut_filters_index.py",
                                    "tests/test_filters.py", "tests/test_mut_seen.py", "tests/test_seen_book.py"),  # the index in bulk and kept beside the ledger
    "localaug/family/prompts.py": ("tests/test_mut_augment_prompts.py",),
    "localaug/family/judging.py": ("tests/test_mut_augment_prompts.py", "tests/test_mut_grade.py"),
    "localaug/family/templates.py": ("tests/test_mut_augment_templates.py",),
    "localaug/report/judge.py": ("tests/test_mut_report.py",),
    "localaug/report/metrics.py": ("tests/test_mut_report_metrics.py",),
    "localaug/runtime/calibrate.py": ("tests/test_mut_calibrate.py", "tests/test_mut_runtime_backend.py"),
    "localaug/serve/scheduler.py": ("tests/test_mut_runtime_scheduler.py",),
    "localaug/runtime/batch.py": ("tests/test_mut_runtime_batch.py",),
    "localaug/jobs/exports.py": ("tests/test_mut_exports.py",),
    "localaug/jobs/grade.py": ("tests/test_mut_grade.py",),
    "localaug/jobs/preference.py": ("tests/test_mut_preference.py",),
    "localaug/runtime/remote.py": ("tests/test_mut_remote.py",),
    "localaug/runtime/prefix.py": ("tests/test_mut_runtime_batch.py", "tests/test_mut_runtime_backend.py"),
    "localaug/runtime/backend.py": ("tests/test_mut_runtime_backend.py", "tests/test_mut_runtime_batch.py"),
    "localaug/runtime/llama.py": ("tests/test_mut_runtime_llama.py", "tests/test_mut_runtime_backend.py",
                                  "tests/test_mut_runtime_batch.py"),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          -6: "crash", -7: "crash", -8: "crash"}  # SIGABRT (llama.cpp's GGML_ABORT), SIGBUS, SIGFPE
UNTESTED = "not tested"  # a run stopped at its time limit before this mutant's turn
RUN = "localaug-run.json"  # in a scratch copy: the commit, date and start of its run
DETECTED = {"killed", "timeout", "segfault", "crash"}  # a mutant that makes the tests fail, hang or crash is caught


@dataclass
class Survivor:
    name: str
    function: str
    diff: str  # the changed lines, "-old" / "+new"
    status: str = "survived"  # or "no tests", "suspicious"
    reason: str | None = None  # why it is equivalent (tools/mutation-equivalent/*.toml), looked up when read


@dataclass
class Result:
    module: str
    tests: tuple[str, ...]
    statuses: dict[str, int] = field(default_factory=dict)  # status -> how many mutants
    survivors: list[Survivor] = field(default_factory=list)
    seconds: float = 0.0
    commit: str = ""  # HEAD when measured
    uncommitted: bool = False  # the module or its tests differed from that commit
    fingerprint: str = ""  # sha256 of the module and its guarding tests as measured
    date: str = ""  # UTC, ISO 8601
    mutmut: str = ""

    @property
    def mutants(self) -> int:
        return sum(self.statuses.values())

    @property
    def untested(self) -> int:
        return self.statuses.get(UNTESTED, 0)

    @property
    def equivalent(self) -> int:
        return sum(s.reason is not None for s in self.survivors)

    @property
    def detected(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in DETECTED)

    @property
    def counted(self) -> int:
        return self.mutants - self.statuses.get("skipped", 0) - self.untested - self.equivalent

    @property
    def score(self) -> float:
        return 100.0 * self.detected / self.counted if self.counted else 100.0

    def to_json(self) -> dict:
        return {"module": self.module, "tests": list(self.tests), "commit": self.commit, "uncommitted": self.uncommitted,
                "fingerprint": self.fingerprint, "date": self.date, "seconds": round(self.seconds, 1),
                "mutmut": self.mutmut, "mutants": self.mutants, "statuses": dict(sorted(self.statuses.items())),
                "caught": self.detected, "equivalent": self.equivalent, "score": round(self.score, 1),
                "survivors": [{"name": s.name, "function": s.function, "status": s.status, "diff": s.diff,
                               "equivalent": s.reason} for s in self.survivors]}

    @classmethod
    def from_json(cls, d: dict, equivalent: dict[tuple[str, str, str], str]) -> Result:
        """A kept result; which survivors are equivalent is read from today's lists (no rerun needed)."""
        survivors = [Survivor(s["name"], s["function"], s["diff"], s["status"],
                              equivalent.get((d["module"], s["function"], s["diff"])))
                     for s in d["survivors"]]
        return cls(d["module"], tuple(d["tests"]), dict(d["statuses"]), survivors, d["seconds"], d["commit"],
                   d["uncommitted"], d["fingerprint"], d["date"], d["mutmut"])


def fingerprint(root: Path, module: str, tests: tuple[str, ...]) -> str:
    """sha256 over the module's and its guarding tests' names and bytes: what a result was measured on."""
    h = hashlib.sha256()
    for name in (module, *tests):
        path = root / name
        data = path.read_bytes() if path.is_file() else b""
        h.update(f"{name}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def result_path(module: str) -> Path:
    return RESULTS / (module.removesuffix(".py").replace("/", ".") + ".json")


def save(result: Result) -> None:
    """Strict JSON (no NaN), UTF-8, sorted by design, newline at the end; replaced whole, never half-written."""
    path = result_path(result.module)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result.to_json(), ensure_ascii=False, indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load(module: str, equivalent: dict[tuple[str, str, str], str]) -> Result | None:
    path = result_path(module)
    if not path.exists():
        return None
    return Result.from_json(json.loads(path.read_text(encoding="utf-8")), equivalent)


def is_stale(result: Result) -> bool:
    """The module or its guarding tests (or which tests guard it) changed since it was measured."""
    tests = MODULES.get(result.module)
    return tests != result.tests or fingerprint(ROOT, result.module, tests) != result.fingerprint


def copy_tree(dest: Path) -> None:
    """The working tree as it is (tracked and untracked files git does not ignore) into ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def configure(dest: Path, module: str, tests: tuple[str, ...]) -> None:
    """The scratch copy's [tool.mutmut]: pyproject's settings, this module, its tests."""
    pyproject = dest / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    base = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    conf = {**base, "only_mutate": [module], "pytest_add_cli_args_test_selection": list(tests)}
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in conf.items()]
    pyproject.write_text(text.rstrip() + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def run_module(module: str, jobs: int, quiet: bool, limit: float | None = None) -> Result:
    """mutmut over ``module`` in a fresh scratch copy; after ``limit`` seconds it is stopped and the
    mutants tested so far make a partial result."""
    tests = MODULES[module]
    dest = scratch(module)
    run = {"commit": git("rev-parse", "HEAD"), "uncommitted": bool(git("status", "--porcelain", "--", module, *tests)),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "started": time.time()}
    copy_tree(dest)
    configure(dest, module, tests)
    (dest / RUN).write_text(json.dumps(run) + "\n", encoding="utf-8")
    # the tests' own child processes (the CLI) import the mutated package too; the folder exists
    # before Python starts, or its import system remembers it as absent
    (dest / "mutants").mkdir()
    t0 = time.monotonic()
    log = dest / "mutmut.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=dest,
                                env=mutmut_env(dest), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # mutmut and the pytest processes it forked
            proc.wait()
            rc = 0  # what was tested so far is in the .meta file
    if rc != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-15:]
        raise SystemExit(f"mutmut failed on {module} (exit {rc}); see {log}:\n" + "\n".join(tail))
    return collect(module, time.monotonic() - t0, quiet)


def scratch(module: str) -> Path:
    return SCRATCH / module.replace("/", "_").removesuffix(".py")


def mutmut_env(dest: Path) -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(dest / "mutants")}


def collect(module: str, seconds: float | None, quiet: bool) -> Result:
    """The result of the mutmut run in ``module``'s scratch copy, finished or stopped part-way (its
    untested mutants are counted apart). ``seconds`` None: from its start to mutmut's last record."""
    import mutmut

    tests, dest = MODULES[module], scratch(module)
    meta = dest / "mutants" / (module + ".meta")
    if not meta.exists() or not (dest / RUN).exists():
        raise SystemExit(f"no mutmut run of {module} to read in {dest}")
    run = json.loads((dest / RUN).read_text(encoding="utf-8"))
    if seconds is None:
        seconds = meta.stat().st_mtime - run["started"]
    result = Result(module, tests, seconds=seconds, commit=run["commit"], uncommitted=run["uncommitted"],
                    fingerprint=fingerprint(dest, module, tests), date=run["date"],
                    mutmut=getattr(mutmut, "__version__", "?"))
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    statuses = {name: UNTESTED if code is None else STATUS.get(code, "suspicious") for name, code in codes.items()}
    for status in statuses.values():
        result.statuses[status] = result.statuses.get(status, 0) + 1
    equivalent = load_equivalent()
    env = mutmut_env(dest)
    for name, status in sorted(statuses.items(), key=lambda kv: _order(kv[0])):
        if status in DETECTED or status in ("skipped", UNTESTED):
            continue
        diff = show(dest, name, env)
        base = name.rsplit(".", 1)[-1].split("__mutmut_")[0]  # x_function, or xǁClassǁmethod
        function = base[2:].replace("ǁ", ".") if base.startswith(("x_", "xǁ")) else base
        result.survivors.append(Survivor(name, function, diff, status, equivalent.get((module, function, diff))))
    if not quiet:
        part = f", {result.untested} of {result.mutants} not tested (stopped)" if result.untested else ""
        print(f"{module}: {result.score:.1f} % ({result.detected}/{result.counted}, {result.equivalent} equivalent{part}) "
              f"in {result.seconds:.0f} s", flush=True)
    return result


def _order(name: str) -> tuple[str, int]:
    head, _, n = name.rpartition("__mutmut_")
    return head, int(n) if n.isdigit() else 0


def show(dest: Path, name: str, env: dict[str, str]) -> str:
    """The lines a mutant changes ("-old" and "+new", stripped), from ``mutmut show``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=dest, env=env, capture_output=True,
                         text=True).stdout
    lines = [ln for ln in out.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(ln[0] + ln[1:].strip() for ln in lines)


def load_equivalent() -> dict[tuple[str, str, str], str]:
    """(module, function, diff) -> why that mutant cannot be told apart from the original."""
    found = {}
    for path in sorted(EQUIVALENT.glob("*.toml")):
        for e in tomllib.loads(path.read_text(encoding="utf-8")).get("equivalent", []):
            found[(e["module"], e["function"], e["diff"].strip())] = e["reason"]
    return found


def report(modules: list[str], command: str) -> str:
    """docs/mutation.md from the kept results of ``modules``: what was measured, when, at which commit."""
    equivalent = load_equivalent()
    results = {m: load(m, equivalent) for m in modules}
    lines = [
        "# Mutation testing",
        "",
        "[mutmut](https://github.com/boxed/mutmut) makes every small edit it knows to each function of the modules",
        "whose results users keep (an operator, a comparison, a number, a string, a dropped argument, `and`/`or`,",
        "a `break`...), and runs the tests that guard that module against each edit. A mutant the tests still",
        "pass *survives*. Equivalent mutants (no behaviour can tell them from the original) are listed in",
        "`tools/mutation-equivalent/` with the reason and leave the denominator; a mutant that makes the tests",
        "fail, hang or crash is caught. Score = caught / (mutants − equivalent).",
        "",
        "Each module is measured on its own and its result kept in `tools/mutation-results/`; the table says",
        "at which commit and on which date. A result is *stale* when the module or its guarding tests changed",
        "since it was measured (rerun those with `python tools/mutation.py --stale`). A run stopped at its time",
        "limit (`--limit`) scores the mutants it tested: \"*n* of *m* (stopped)\". Written with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| module | guarding tests | mutants | caught | equivalent | survived | score | time | measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in modules:
        r = results[m]
        tests = ", ".join(f"`{t}`" for t in MODULES[m])
        if r is None:
            lines.append(f"| `{m}` | {tests} | | | | | not measured | | |")
            continue
        survived = len(r.survivors) - r.equivalent
        when = f"{r.date[:10]}, `{r.commit[:10]}`{' + uncommitted' if r.uncommitted else ''}"
        stale = " **stale**" if is_stale(r) else ""
        mutants = f"{r.mutants - r.untested} of {r.mutants} (stopped)" if r.untested else f"{r.mutants}"
        lines.append(f"| `{m}` | {tests} | {mutants} | {r.detected} | {r.equivalent} | {survived} | "
                     f"**{r.score:.1f} %** | {r.seconds:.0f} s | {when}{stale} |")
    lines += ["", "## Survivors", ""]
    for m in modules:
        r = results[m]
        if r is None or not r.survivors:
            continue
        lines += [f"### `{m}`", ""]
        for s in r.survivors:
            verdict = f"equivalent: {s.reason}" if s.reason else f"**not killed** ({s.status}: a gap)"
            lines += [f"- `{s.function}` — {verdict}", "  ```diff", *("  " + ln for ln in s.diff.splitlines()), "  ```"]
        lines.append("")
    lines += ["The fast smoke set of hand-written mutants (`python tools/mutants.py`) is in "
              "[mutation-smoke.md](mutation-smoke.md).", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="modules to mutate (default: all of MODULES)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    ap.add_argument("--goal", type=float, default=85.0, help="lowest acceptable score per module, in percent")
    ap.add_argument("--stale", action="store_true", help="measure only the modules whose kept result is missing or stale")
    ap.add_argument("--report-only", action="store_true", help="measure nothing; with --write, report the kept results")
    ap.add_argument("--limit", type=float, help="stop a module's run after this many seconds: a partial result")
    ap.add_argument("--collect", action="store_true",
                    help="measure nothing: keep the result of the last (finished or interrupted) run of each module named")
    ap.add_argument("--write", type=Path, help="write the Markdown report (every module's kept result) here")
    ap.add_argument("--survivors", action="store_true", help="print every survivor's diff")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"not in MODULES: {', '.join(unknown)}")
    modules = args.modules or list(MODULES)
    if args.report_only or args.collect:
        modules = []
    elif args.stale:
        equivalent = load_equivalent()
        modules = [m for m in modules if (r := load(m, equivalent)) is None or is_stale(r)]
    results = [collect(m, None, quiet=False) for m in (args.modules if args.collect else [])]
    for r in results:
        save(r)
    for m in modules:
        results.append(run_module(m, args.jobs, quiet=False, limit=args.limit))
        save(results[-1])  # kept as soon as measured: an interrupted run loses only the module it was on
    if args.survivors:
        for r in results:
            for s in r.survivors:
                print(f"\n{r.module} {s.name} ({'equivalent: ' + s.reason if s.reason else 'SURVIVED'})\n{s.diff}")
    if args.write:
        command = shlex.join(["python", "tools/mutation.py", *sys.argv[1:]])
        args.write.write_text(report(list(MODULES), command), encoding="utf-8")
    low = [r for r in results if r.score < args.goal]
    for r in low:
        print(f"{r.module}: {r.score:.1f} % is under {args.goal:.0f} %", file=sys.stderr)
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
