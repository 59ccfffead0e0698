"""Judging the answers of a respond output: a grade for each answer, and verdicts between the
answers of one instruction — what a quality gate and a preference file are made of.

- ``run_grade`` (``localaug grade OUT --judge M``): every kept answer of every ``ok`` respond record
  (each of its ``responses``, or its one ``response``) rated 1–10 with MT-Bench's single-answer
  grading prompt (``family.judging.grade_messages``); the rating and the judge's reply (its reason)
  are kept.
- ``run_verdicts`` (``--pairwise``): every two different answers of one instruction judged with
  MT-Bench's pairwise prompt in both orders (``family.judging.outcome``: the same answer preferred
  both times, a tie, orders that disagree, or no verdict).

Each writes a JSONL ledger beside the output (``OUT.grades.jsonl``, ``OUT.verdicts.jsonl``), one line
per answer (or pair) as soon as it is judged, keyed by what was judged — the row key, the sample
index and the answer's text — and stamped with the run id (the judge's sha256, the prompt, the
settings). A run killed at any moment is finished by the same command, judging each answer exactly
once; a ledger of another judging run is refused rather than mixed. A request that failed is not
written: the same command judges it again. Judging is greedy by default (``temperature`` 0, as
MT-Bench); a sampled judge seeds each reading from the key of what it judges, so what it says does
not depend on the order or batching of requests.

The judge is any instruct GGUF (or store name), or a model on an OpenAI-compatible server named by
URL (``runtime.remote``), whose URL and name then stand for the judge's sha256 in the run id; it is
opened through ``runtime.calibrate.open_calibrated`` (``open_judge``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localaug.augment.resolve import resolve_remote, resolve_style
from localaug.augment.settings import EngineSettings
from localaug.core.errors import JobError, UsageError, opt
from localaug.core.files import cached_sha256, read_json, refuse_overwriting_inputs, write_json_atomic
from localaug.core.progress import current
from localaug.family import judging
from localaug.family.styles import PromptStyle, render_messages
from localaug.jobs.dataio import chunked, training_examples
from localaug.jobs.ledger import Appender, iter_ledger, output_lock, parse_line, record_lines, repair_ledger
from localaug.jobs.paths import GRADES, VERDICTS, judged_path, lock_path, manifest_of, records_candidates, summary_path
from localaug.jobs.schema import Skipped
from localaug.runtime.backend import Backend, Request, rows_per_chunk
from localaug.runtime.calibrate import open_calibrated
from localaug.runtime.remote import RemoteModel, is_remote
from localaug.runtime.sampling import SamplingParams

MAX_REPLY_KEPT = 4000  # characters of each judge reply kept in the ledger
RESPONSES = "a localaug run respond output (JSON Lines of records with task respond, or a training file with its .ledger.jsonl)"
ledger_path = judged_path  # the name report.build imports (jobs.paths names every file of a job)


@dataclass(frozen=True)
class JudgeOptions:
    """How the judge runs: its model, reply length, sampling (greedy by default) and engine."""

    judge: str | os.PathLike[str]
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    aspect: str = "helpfulness"  # pairwise: what the verdict weighs (MT-Bench's own criteria by default)
    parallel: int | None = None
    threads: int | None = None
    n_ctx: int | None = None
    device: str = "auto"
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)  # (done, total)

    def check(self) -> None:
        if self.max_tokens < 1 or not 0.0 <= self.temperature <= 2.0 or (self.parallel is not None and self.parallel < 1):
            raise UsageError("the judge's longest reply must be at least 1 token, its temperature from 0 to 2 and "
                             f"{opt('parallel')} at least 1")
        if self.aspect not in judging.ASPECTS:
            raise UsageError(f"{opt('aspect')} {self.aspect!r}: use {', '.join(judging.ASPECTS)}")

    @property
    def engine(self) -> EngineSettings:
        """Where the judge runs: the engine settings a job and the server build, under the same names."""
        return EngineSettings(device=self.device, threads=self.threads, n_ctx=self.n_ctx, parallel=self.parallel)

    def settings(self) -> dict[str, Any]:
        """What a judging run's id hashes besides the judge and the prompt."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "seed": self.seed}


# --- what is judged ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One kept answer of a respond record."""

    source_id: str
    sample: int
    text: str
    question: str  # the user turn it answers (instruction and context)

    @property
    def key(self) -> str:
        return answer_key(self.source_id, self.sample, self.text)


def answer_key(source_id: str, sample: int, text: str) -> str:
    """What identifies a judged answer: its row, its sample and its text (an answer drawn again by a
    retried row is judged again)."""
    return hashlib.sha256(f"{source_id}\0{sample}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def pair_key(a: Answer, b: Answer) -> str:
    return hashlib.sha256(f"{a.key}\0{b.key}".encode()).hexdigest()[:32]


def answers_of(rec: dict[str, Any]) -> list[Answer]:
    """The kept answers of an ``ok`` respond record, by sample: its ``responses`` that are ``ok``, or
    its one ``response`` (sample 0)."""
    if rec.get("task") != "respond" or rec.get("status") != "ok":
        return []
    [ex] = training_examples(rec)
    responses = rec.get("responses")
    if isinstance(responses, list):
        return [Answer(rec["source_id"], a["sample"], a["text"], ex.user) for a in responses if a["status"] == "ok"]
    return [Answer(rec["source_id"], 0, rec["response"], ex.user)]


def pairs_of(answers: list[Answer]) -> list[tuple[Answer, Answer]]:
    """Every two answers of one instruction whose texts differ (i before j, by sample)."""
    return [(a, b) for i, a in enumerate(answers) for b in answers[i + 1:] if a.text != b.text]


def records_path(output: Path) -> Path:
    """The records behind an output as named: its manifest's ledger, ``OUT.ledger.jsonl`` beside a
    training file, or the output itself."""
    manifest = read_json(manifest_of(output))
    named = manifest.get("ledger") if isinstance(manifest, dict) else None
    for cand in ([Path(named)] if isinstance(named, str) and named else []) + records_candidates(output):
        if cand.is_file():
            return cand
    return output


def read_answers(output: Path) -> tuple[Path, list[list[Answer]]]:
    """(the records file, the kept answers of each ok respond record, in file order)."""
    path = records_path(output)
    if not path.is_file():
        raise UsageError(f"{output} does not exist: give {RESPONSES}")
    skipped, rows, tasks = Skipped(), [], set()
    try:
        for rec in iter_ledger(path, skipped=skipped):
            tasks.add(rec["task"])
            if answers := answers_of(rec):
                rows.append(answers)
    except OSError as e:
        raise JobError(f"cannot read {path}: {e.strerror or e}", path=str(path)) from None
    if tasks - {"respond"} or not tasks:
        found = f"found {', '.join(sorted(tasks))} records" if tasks else skipped.first or "no job records"
        raise UsageError(f"{path} is not answers to judge ({found}): give {RESPONSES}")
    return path, rows


# --- the ledger -------------------------------------------------------------------------------------


def read_judged(path: Path, run_id: str | None, valid: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, Any]]:
    """The judged lines of a ledger by key (``run_id``: refuse a ledger of another run; None: any
    one run). A torn last line (a kill mid-write) is left for ``repair_ledger``; any other line that
    is not a judged line refuses the file."""
    if not path.exists():
        return {}
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file: give a file path for the judge's ledger")
    done: dict[str, dict[str, Any]] = {}
    runs: set[str] = set()
    with open(path, "rb") as f:
        for lineno, _, line in record_lines(f):
            rec, why = parse_line(line)
            if why is None and not (isinstance(rec, dict) and isinstance(rec.get("run_id"), str)):
                why = "not a judged line"
            if why is not None:
                if line is not None and (not line.strip() or not line.endswith(b"\n")):
                    continue
                raise JobError(f"{path} is not a localaug judge ledger (line {lineno}: {why}): give another file",
                               path=str(path))
            runs.add(rec["run_id"])
            if (run_id is not None and rec["run_id"] != run_id) or len(runs) > 1:
                raise JobError(f"{path} holds judgements of another judging run (another judge, prompt or settings): "
                               "give another file, or remove it to judge again", path=str(path))
            if isinstance(rec.get("key"), str) and valid(rec):
                done[rec["key"]] = rec  # a damaged line is judged again
    return done


def _valid_grade(rec: dict[str, Any]) -> bool:
    score = rec.get("score")
    return score is None or (isinstance(score, (int, float)) and not isinstance(score, bool)
                             and judging.LOWEST <= score <= judging.HIGHEST)


def _valid_verdict(rec: dict[str, Any]) -> bool:
    return rec.get("outcome") in OUTCOMES


OUTCOMES = ("A", "B", "tie", "inconsistent", "no-verdict")


# --- the judge ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeModel:
    """A resolved judge: how to prompt it, what stands for it in the run id, the files it reads."""

    name: str
    path: Path | None  # None: a model on a server
    style: PromptStyle
    identity: str | dict[str, str]  # the GGUF's sha256, or the server's URL and the model's name
    remote: RemoteModel | None = None


def resolve_judge(judge: str | os.PathLike[str]) -> JudgeModel:
    if is_remote(judge):  # a model on a server: asked now, so a wrong URL or key fails before any work
        r = resolve_remote(str(judge), param="judge")
        return JudgeModel(str(r.model), None, r.style, r.model.identity(), r.model)
    m = resolve_style(judge)
    return JudgeModel(str(m.path), m.path, m.style, cached_sha256(m.path))


def open_judge(model: JudgeModel, opts: JudgeOptions) -> tuple[Backend, int]:
    """The backend that runs the judge's requests, and how many it runs at a time."""
    backend, chosen = open_calibrated(model.remote or model.path, opts.engine.options(), opts.parallel)  # type: ignore[arg-type]
    return backend, chosen.value


def _sampling(opts: JudgeOptions, key: str, k: int) -> SamplingParams:
    """Reading ``k`` of an item: seeded from its key, the same whatever the order or batch (the two
    orders of a pair are two readings, seeded apart)."""
    seed = (opts.seed + int(key[:8], 16) + k) % (1 << 31)
    return SamplingParams(temperature=opts.temperature, max_tokens=opts.max_tokens, seed=seed)


@dataclass(frozen=True)
class _Item:
    key: str
    conversations: tuple[list[dict[str, str]], ...]  # one per request (pairwise: both orders)
    line: Callable[[list[str]], dict[str, Any]]  # the ledger line from the replies


def _judge(items: list[_Item], model: JudgeModel, opts: JudgeOptions, out: Path, run_id: str,
           tick: Callable[[int], None], shown: tuple[str, int, int]) -> list[str]:
    """Judge ``items`` into the ledger ``out``; the errors of those whose request failed. ``shown``:
    what the phase is called, the items in all and those judged before (the display's counts)."""
    backend, chosen = open_judge(model, opts)
    appender = Appender(out)
    failures: list[str] = []
    finished = 0
    what, total, before = shown
    progress = current()  # after the judge has loaded: its load is a phase of its own
    progress.stage(what, total, what.split()[-1], done=before)
    try:
        for chunk in chunked(iter(items), rows_per_chunk(chosen)):  # type: ignore[arg-type]
            by_key = {item.key: item for item in chunk}
            requests = [Request(f"{item.key}|{k}", render_messages(model.style, conv), _sampling(opts, item.key, k),
                                model.style.stop) for item in chunk for k, conv in enumerate(item.conversations)]
            replies: dict[str, dict[int, str]] = {}
            errors: dict[str, str] = {}
            for result in backend.run(requests):
                key, k = result.id.rsplit("|", 1)
                if result.generation is None:
                    errors.setdefault(key, result.error or "no reply")
                replies.setdefault(key, {})[int(k)] = result.generation.text if result.generation else ""
                if len(replies[key]) < len(by_key[key].conversations):
                    continue
                if key in errors:
                    failures.append(errors[key])
                    progress.advance(1)  # a failed request is no longer to do in this run either
                    continue
                item = by_key[key]
                appender.write({"run_id": run_id, "key": key, **item.line([replies[key][i] for i in range(len(item.conversations))])})
                finished += 1
                tick(finished)
                progress.advance(1)
        progress.finish()
    finally:
        appender.close()
        backend.close()
    return failures


def _prepare(output: Path, ledger: Path | None, suffix: str, judge: str | os.PathLike[str]) -> tuple[Path, list[list[Answer]], Path, Path, JudgeModel]:
    records, rows = read_answers(output)
    out = ledger or judged_path(output, suffix)
    summary = summary_path(out)
    read = [records, manifest_of(output)]
    refuse_overwriting_inputs([out, summary], read + ([Path(judge)] if Path(judge).is_file() else []))
    model = resolve_judge(judge)
    if model.path is not None:
        refuse_overwriting_inputs([out, summary], [*read, model.path])
    return records, rows, out, summary, model


def _run(items: list[_Item], model: JudgeModel, opts: JudgeOptions, out: Path, run_id: str,
         valid: Callable[[dict[str, Any]], bool], what: str) -> tuple[dict[str, dict[str, Any]], int, list[str]]:
    """(every judged line of this run, judged now, failures) after judging what is not judged yet."""
    with output_lock(lock_path(out)):
        done = read_judged(out, run_id, valid)
        repair_ledger(out)
        Appender(out).close()  # the ledger exists from here on, even with nothing to judge
        todo = [item for item in items if item.key not in done]
        failures: list[str] = []
        if todo:
            total, before = len(items), len(items) - len(todo)
            failures = _judge(todo, model, opts, out, run_id,
                              lambda k: opts.progress(before + k, total) if opts.progress else None, (what, total, before))
        done = read_judged(out, run_id, valid)
    if failures and len(failures) == len(todo):
        raise JobError(f"no answer could be judged ({len(failures)} failed): {failures[0]}; run the same command "
                       "again to retry them", path=str(out))
    return done, len(todo) - len(failures), failures


# --- grades -----------------------------------------------------------------------------------------


@dataclass
class GradeSummary:
    output: str
    records: str
    judge: str
    ledger: str
    answers: int  # kept answers in the output
    graded: int  # of them, with a grade
    done_now: int
    failed: int  # requests that failed this run (the same command retries them)
    first_error: str | None  # why the first of them failed
    no_rating: int  # replies that gave no rating from 1 to 10
    distribution: dict[str, int]  # "1".."10" -> answers (a rating counts in the bin of its whole part)
    mean: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (what, value) lines, for the terminal."""
        mean = "—" if self.mean is None else f"{self.mean:.2f}"
        return [("judge", _shown(self.judge)), ("answers", str(self.answers)), ("graded", str(self.graded)),
                ("graded now", str(self.done_now)), ("no rating in the reply", str(self.no_rating)),
                ("mean rating", mean), ("ratings 1–10", " ".join(f"{k}:{v}" for k, v in self.distribution.items())),
                *([("requests that failed (rerun)", f"{self.failed}: {self.first_error}")] if self.failed else []),
                ("grades", self.ledger)]


def _shown(judge: str) -> str:
    """The judge as a summary line names it: a GGUF by its file name, a model on a server by URL#MODEL."""
    return judge if is_remote(judge) else Path(judge).name


def distribution(scores: list[float]) -> dict[str, int]:
    """How many ratings fall in each bin 1..10 (a rating counts in the bin of its whole part)."""
    counts = Counter(min(10, max(1, int(s))) for s in scores)
    return {str(k): counts.get(k, 0) for k in range(1, 11)}


def grade_run_id(model: JudgeModel, opts: JudgeOptions) -> str:
    config = {"kind": "grade", "judge": model.identity, **opts.settings(),
              "prompt": hashlib.sha256((judging.SINGLE_SYSTEM + judging.SINGLE_USER).encode()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def run_grade(output: str | os.PathLike[str], opts: JudgeOptions, *, ledger: str | os.PathLike[str] | None = None) -> GradeSummary:
    """Grade every kept answer of a respond output (see the module doc); resumable."""
    opts.check()
    output = Path(output)
    records, rows, out, summary_file, model = _prepare(output, Path(ledger) if ledger else None, GRADES, opts.judge)
    run_id = grade_run_id(model, opts)
    answers = {a.key: a for row in rows for a in row}

    def item(a: Answer) -> _Item:
        def line(replies: list[str]) -> dict[str, Any]:
            return {"source_id": a.source_id, "sample": a.sample, "score": judging.rating(replies[0]),
                    "reply": replies[0][:MAX_REPLY_KEPT]}
        return _Item(a.key, (judging.grade_messages(a.question, a.text),), line)

    done, now, failures = _run([item(a) for a in answers.values()], model, opts, out, run_id, _valid_grade, "grading answers")
    graded = [done[k] for k in answers if k in done]
    scores = [float(g["score"]) for g in graded if g["score"] is not None]
    summary = GradeSummary(str(output), str(records), model.name, str(out), len(answers), len(graded), now, len(failures),
                           failures[0] if failures else None, len(graded) - len(scores), distribution(scores),
                           sum(scores) / len(scores) if scores else None)
    write_json_atomic(summary_file, summary.to_json())
    return summary


# --- pairwise verdicts between the answers of one instruction ----------------------------------------


@dataclass
class VerdictSummary:
    output: str
    records: str
    judge: str
    ledger: str
    aspect: str
    pairs: int  # pairs of different answers to one instruction
    judged: int
    done_now: int
    failed: int
    first_error: str | None
    outcomes: dict[str, int]  # A (the earlier sample better), B, tie, inconsistent, no-verdict
    first_shown_preferred: int  # readings (of 2 per pair) that named the answer shown first
    decided_readings: int  # readings that named an answer (not a tie, not none)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        shown = f"{self.first_shown_preferred} of {self.decided_readings}" if self.decided_readings else "—"
        return [("judge", _shown(self.judge)), ("aspect", self.aspect), ("pairs of answers", str(self.pairs)),
                ("judged", str(self.judged)), ("judged now", str(self.done_now)),
                *((k, str(v)) for k, v in self.outcomes.items()), ("readings naming the answer shown first", shown),
                *([("requests that failed (rerun)", f"{self.failed}: {self.first_error}")] if self.failed else []),
                ("verdicts", self.ledger)]


def verdicts_run_id(model: JudgeModel, opts: JudgeOptions) -> str:
    config = {"kind": "pairwise", "judge": model.identity, **opts.settings(), "aspect": opts.aspect,
              "prompt": hashlib.sha256((judging.SYSTEM + judging.USER).encode()).hexdigest()[:16]}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def run_verdicts(output: str | os.PathLike[str], opts: JudgeOptions, *,
                 ledger: str | os.PathLike[str] | None = None) -> VerdictSummary:
    """Judge every two different answers of each instruction in both orders; resumable."""
    opts.check()
    output = Path(output)
    records, rows, out, summary_file, model = _prepare(output, Path(ledger) if ledger else None, VERDICTS, opts.judge)
    run_id = verdicts_run_id(model, opts)
    pairs = {pair_key(a, b): (a, b) for row in rows for a, b in pairs_of(row)}

    def item(a: Answer, b: Answer) -> _Item:
        def line(replies: list[str]) -> dict[str, Any]:
            first, second = judging.verdict(replies[0]), judging.verdict(replies[1])
            return {"source_id": a.source_id, "samples": [a.sample, b.sample], "first": first, "second": second,
                    "outcome": judging.outcome(first, second), "reply_first": replies[0][:MAX_REPLY_KEPT],
                    "reply_second": replies[1][:MAX_REPLY_KEPT]}
        return _Item(pair_key(a, b), (judging.messages(opts.aspect, a.question, a.text, b.text),
                                      judging.messages(opts.aspect, a.question, b.text, a.text)), line)

    done, now, failures = _run([item(a, b) for a, b in pairs.values()], model, opts, out, run_id, _valid_verdict, "judging pairs")
    judged = [done[k] for k in pairs if k in done]
    readings = [r for v in judged for r in (v["first"], v["second"]) if r in ("A", "B")]
    summary = VerdictSummary(str(output), str(records), model.name, str(out), opts.aspect, len(pairs), len(judged), now,
                             len(failures), failures[0] if failures else None,
                             {o: sum(v["outcome"] == o for v in judged) for o in OUTCOMES},
                             readings.count("A"), len(readings))
    write_json_atomic(summary_file, summary.to_json())
    return summary


def judged_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The judged lines of a grades or verdicts ledger (one run's), for exports and reports."""
    yield from read_judged(path, None, lambda rec: _valid_grade(rec) if "score" in rec else _valid_verdict(rec)).values()
