"""Break each guarded behaviour on purpose and show that the test suite goes red.

Each mutant is one small edit of the product code (a stop string that is never matched, a refined
row that is never "ok", a row key that forgets its occurrence, a bundle check skipped, an API key
not checked, ...) applied to a scratch copy of the working tree; the tests that guard that
behaviour run against the copy and must fail. The table printed at the end (Markdown, also
written with ``--write docs/mutation-smoke.md``) names the test that caught each mutant.

    python tools/mutants.py                  # every mutant
    python tools/mutants.py -k stop -k auth  # mutants whose id contains these words
    python tools/mutants.py --write docs/mutation-smoke.md

Exit status 1 if any mutant survives (its tests still pass), or an edit no longer applies (the
code moved: update the mutant).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    behaviour: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]  # pytest arguments


MUTANTS = [
    Mutant("stop-text", "stop strings are matched in the decoded text", "localaug/runtime/engine.py",
           "cut = self._find_stop(start)", "cut = -1", ("tests/test_stops.py",)),
    Mutant("stop-batch", "each batched request stops at its own stop strings", "localaug/runtime/batch.py",
           "TextStream(engine, group.request.stop, group.request.ignore_eog)", "TextStream(engine, (), group.request.ignore_eog)", ("tests/test_stops.py", "-k", "batch")),
    Mutant("ok-refine", "a refined row that passes the filters is recorded ok", "localaug/jobs/worker.py",
           '        return _record(cfg, r.row, "ok", None, extra)\n    extra.update(',
           '        return _record(cfg, r.row, "failed", None, extra)\n    extra.update(',
           ("tests/test_jobs.py", "-k", "refine_records or input_formats")),
    Mutant("ok-expand", "accepted samples become the row's new items", "localaug/augment/tasks.py",
           "result.items.extend(accepted)", "result.items.extend([])",
           ("tests/test_jobs.py", "-k", "expand_records_are_ok or pairs_records")),
    Mutant("key-occurrence", "repeated texts stay distinct rows (the key counts occurrences)", "localaug/jobs/keys.py",
           'f"{run_id}\\0{identity}\\0{occurrence}"', 'f"{run_id}\\0{identity}"',
           ("tests/test_jobs.py", "-k", "duplicate_texts")),
    Mutant("key-run-config", "changed sampling is a different run", "localaug/jobs/config.py",
           '"sampling": asdict(cfg.sampling), ', "", ("tests/test_jobs.py", "-k", "changed_arguments")),
    Mutant("resume-skip", "a restart skips the rows already done", "localaug/jobs/run.py",
           'return status is None or (retry_failed and status == "failed")', "return True",
           ("tests/test_jobs.py", "-k", "torn or bad_rows")),
    Mutant("torn-line", "a torn last line is cut before resuming", "localaug/jobs/ledger.py",
           '    """Cut a torn last line (a write cut short by a kill); return the bytes removed."""\n',
           '    """Cut a torn last line (a write cut short by a kill); return the bytes removed."""\n    return 0\n',
           ("tests/test_jobs.py", "-k", "torn")),
    Mutant("retry-compaction", "a retried row keeps one record", "localaug/jobs/run.py",
           "        if self._superseded:\n", "        if False:\n", ("tests/test_jobs.py", "-k", "bad_rows")),
    Mutant("filter-refusal", "refusals are rejected", "localaug/augment/filters.py",
           "return bool(_REFUSAL.match(", "return False and bool(_REFUSAL.match(",
           ("tests/test_filters.py", "tests/test_jobs.py", "-k", "refusal")),
    Mutant("filter-near-duplicate", "near duplicates (ROUGE-L) are rejected", "localaug/augment/filters.py",
           "if rouge_l(toks, other) >= self.threshold:", "if False:", ("tests/test_filters.py",)),
    Mutant("filter-echo", "a refined output equal to its input is an echo", "localaug/augment/tasks.py",
           'reason = "echo"', "reason = None", ("tests/test_filters.py", "tests/test_jobs.py", "-k", "echo")),
    Mutant("bundle-sha256", "a bundle member that fails its sha256 is refused", "localaug/store/bundle/importing.py",
           "if digest != bf.entry.sha256:", "if False:", ("tests/test_bundle.py",)),
    Mutant("bundle-links", "links inside a bundle are refused", "localaug/store/bundle/importing.py",
           "if m.issym() or m.islnk():", "if False:", ("tests/test_bundle.py",)),
    Mutant("auth", "the API key is checked on every endpoint but /health", "localaug/serve/app.py",
           'if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._key):', "if False:",
           ("tests/test_server.py", "-k", "api_key")),
    Mutant("ray-resume", "a restarted Ray job skips the rows in its part files", "localaug/jobs/on_ray.py",
           "self.statuses = parts.statuses(self.out)", "self.statuses = {}",
           ("tests/test_ray.py", "-k", "restart_after_killing")),
    Mutant("prefix-share", "a prompt starting with the cached prefix takes its KV instead of decoding it", "localaug/runtime/batch.py",
           "shared = group.shared = self._shared(group.tokens)", "shared = group.shared = 0",
           ("tests/test_batch.py", "-k", "shared_prefix")),
    Mutant("examples-unlike", "an in-context example is never shown for an input it resembles", "localaug/family/prompts.py",
           "max(rouge_l(tokens(ex[0]), turn), rouge_l(tokens(ex[1]), turn)) < RESEMBLES", "True",
           ("tests/test_prompts.py", "-k", "example")),
    Mutant("export-needs-responses", "an instruction-only output is refused as alpaca/sharegpt/messages before the run",
           "localaug/jobs/run.py", "if task in dataio.INSTRUCTION_TASKS and fmt in dataio.RESPONSE_FORMATS:", "if False:",
           ("tests/test_respond.py", "-k", "refused")),
    Mutant("dataset-info-keeps", "dataset_info.json keeps the entries it had", "localaug/jobs/dataio.py",
           '    info[export.name.split(".")[0]] =', '    info = {}\n    info[export.name.split(".")[0]] =',
           ("tests/test_respond.py", "-k", "llamafactory and alpaca")),
    Mutant("judge-both-orders", "a verdict read with B shown first is mapped back to B", "localaug/family/judging.py",
           'swapped = {"A": "B", "B": "A", "C": "C"}', 'swapped = {"A": "A", "B": "B", "C": "C"}',
           ("tests/test_report.py", "-k", "combine or biased")),
    Mutant("terminal-echo", "the terminal refine judges its reply like a job", "localaug/cli/generate.py",
           "reason = aug.verdict(instruction, refined, gen)", "reason = None",
           ("tests/test_respond.py", "-k", "terminal")),
    Mutant("modelfile-system-guard", "later Ollama turns get no empty system block", "localaug/store/modelfile.py",
           'text = "{{ if .System }}" + system + "{{ end }}" + text[len(system):]', "pass",
           ("tests/test_bundle.py", "-k", "system_block or template")),
    Mutant("pref-margin", "a dpo pair needs grades at least the margin apart", "localaug/jobs/preference.py",
           "if top - low < sel.margin:", "if False:",
           ("tests/test_preference.py", "-k", "scores_rule")),
    Mutant("pref-both-orders", "a pairwise pair needs the same answer preferred in both orders", "localaug/family/judging.py",
           "    if first != swapped:\n        return \"inconsistent\"", "    if False:\n        return \"inconsistent\"",
           ("tests/test_preference.py", "-k", "outcome or pairwise_rule")),
    Mutant("pref-min-score", "an SFT file keeps only answers graded at least the minimum", "localaug/jobs/preference.py",
           "if sel.min_score is not None and (score is None or score < sel.min_score):", "if False:",
           ("tests/test_preference.py", "-k", "sft_file")),
    Mutant("grade-once", "a rerun grades no answer twice", "localaug/jobs/grade.py",
           "todo = [item for item in items if item.key not in done]", "todo = list(items)",
           ("tests/test_preference.py", "-k", "grade_rates")),
    Mutant("respond-samples", "respond draws --samples answers per instruction", "localaug/augment/tasks.py",
           'self.n = n if task == "respond" else 1 if single else n', "self.n = 1 if single else n",
           ("tests/test_preference.py", "-k", "samples_keep")),
    Mutant("context-in-prompt", "the input field's context is in the responder's prompt", "localaug/jobs/keys.py",
           "text = user_text(text, row_context(cfg, row))", "text = user_text(text, \"\")",
           ("tests/test_preference.py", "-k", "context_and_system")),
    Mutant("system-exported", "the responder's system prompt reaches the alpaca file", "localaug/jobs/exports.py",
           'return {**row, "system": ex.system} if ex.system else row', "return row",
           ("tests/test_preference.py", "-k", "context_and_system")),
]


def scratch_copy() -> Path:
    """The working tree (tracked and untracked, not ignored files) in a temporary folder."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    dest = Path(tempfile.mkdtemp(prefix="localaug-mutant-"))
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def apply(copy: Path, m: Mutant) -> bool:
    path = copy / m.file
    text = path.read_text(encoding="utf-8")
    if text.count(m.find) != 1:
        return False
    text = text.replace(m.find, m.replace)
    path.write_text(text, encoding="utf-8")
    return True


def run(m: Mutant) -> tuple[str, str, float]:
    """(verdict, the test that caught it, seconds)."""
    copy = scratch_copy()
    started = time.monotonic()
    try:
        if not apply(copy, m):
            return "does not apply", "", 0.0
        env = {**os.environ, "PYTHONPATH": str(copy), "OMP_WAIT_POLICY": "PASSIVE"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *m.tests],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=1800)
        failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", r.stdout, re.M)
        if r.returncode == 0:
            return "SURVIVED", "", time.monotonic() - started
        return "caught", failed[0] if failed else f"pytest exit {r.returncode}", time.monotonic() - started
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", action="append", default=[], help="only mutants whose id contains this (repeatable)")
    parser.add_argument("--write", type=Path, help="also write the Markdown table to this file")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.k or any(k in m.id for k in args.k)]
    rows, bad = [], 0
    for m in chosen:
        verdict, test, seconds = run(m)
        bad += verdict != "caught"
        rows.append(f"| `{m.id}` | {m.behaviour} | `{m.file}` | {verdict} | `{test}` | {seconds:.0f} s |")
        print(rows[-1], flush=True)
    table = "\n".join(["| mutant | guarded behaviour | file | verdict | first failing test | time |",
                       "|---|---|---|---|---|---|", *rows])
    print("\n" + table)
    if args.write:
        args.write.write_text(_page(table), encoding="utf-8")
    return 1 if bad else 0


def _page(table: str) -> str:
    return f"""# Mutation check

Each row is a deliberate bug: a one-line edit of the product code that breaks a behaviour the
tests claim to guard, applied to a scratch copy of the tree. The guarding tests run against the
copy and must fail ("caught"); the first failing test is named. Rerun with:

```bash
python tools/mutants.py --write docs/mutation-smoke.md     # or -k ID to run some
```

{table}
"""


if __name__ == "__main__":
    sys.exit(main())
