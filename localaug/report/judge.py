"""``localaug judge A B --judge M``: which of two response files answers better, by a judge model.

A and B are ``localaug run respond`` outputs (records with ``instruction`` and ``response``), paired
by the input row they come from: ``origin.row`` (+ ``origin.item``) when the instructions came from
a refine or expand output, else ``row`` — so answers to the original seeds (A) meet the answers to
their refined versions (B). The question the judge sees is A's instruction. Every pair is judged
twice, A shown first and then B shown first, greedily; the two readings agree on a winner or the
pair is a tie (``family.judging.combine``), which cancels the judge's position bias. The judge is a
GGUF run here, or a model on an OpenAI-compatible server named by URL (``runtime.remote``), whose
URL and name then stand for the judge's sha256 in the run. A pair whose request failed (after the
retries, for a server) is not recorded: the summary counts it and the same command judges it again.

Per-pair verdicts are appended to a JSONL ledger (default ``B.judge-<aspect>.jsonl``), keyed by the
run (the files' sha256, the judge's, the aspect and the settings): a run killed at any moment is
finished by the same command, never counting a pair twice. The summary (``…summary.json``) has
wins (B better), ties, losses, n, B's score (wins + ties / 2) / n and its 95% interval (normal
approximation over the per-pair scores 1, ½, 0).
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localaug.augment.resolve import resolve_remote, resolve_style
from localaug.core.errors import JobError, UsageError, opt
from localaug.core.files import (
    cached_sha256,
    read_bounded,
    refuse_overwriting_inputs,
    sha256_file,
    write_atomic,
    write_json_atomic,
)
from localaug.family import judging
from localaug.family.styles import PromptStyle, render_messages
from localaug.jobs import paths
from localaug.jobs.dataio import chunked
from localaug.jobs.ledger import Appender, iter_ledger, lock_path, output_lock, parse_line, record_lines, repair_ledger
from localaug.jobs.schema import Skipped
from localaug.runtime.backend import Request, rows_per_chunk
from localaug.runtime.calibrate import open_calibrated
from localaug.runtime.engine import EngineOptions
from localaug.runtime.remote import RemoteModel, is_remote
from localaug.runtime.sampling import SamplingParams

MAX_REPLY_KEPT = 4000  # characters of each judge reply kept in the ledger


@dataclass
class JudgeSummary:
    a: str
    b: str
    judge: str
    aspect: str
    wins: int
    ties: int
    losses: int
    n: int
    score: float
    interval: tuple[float, float]
    no_verdict: int  # judge replies that named no verdict (counted in ties)
    done_now: int
    verdicts: str  # the ledger
    missing: int  # rows answered in only one of A and B (not judged)
    failed: int = 0  # pairs whose judge request failed this run (not recorded: the same command retries them)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (what, value) lines, for the terminal and the page (``table_rows``)."""
        return table_rows(self.to_json())


def table_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The judge table, (what, value) lines, from a summary (``JudgeSummary.to_json``, or a
    ``….summary.json`` read back): the one table the terminal, ``judge --html`` and the report page
    show. An undefined score (no pair judged: NaN, or null once written) shows as —."""
    score, (lo, hi) = s.get("score"), s.get("interval") or (None, None)
    defined = isinstance(score, (int, float)) and not math.isnan(score) and None not in (lo, hi)
    shown = f"{score:.3f}  (95% interval {lo:.3f}–{hi:.3f})" if defined else "—"
    judge = str(s.get("judge", ""))
    failed = s.get("failed") or 0
    return [("aspect", str(s.get("aspect", ""))), ("judge", judge if is_remote(judge) else Path(judge).name),
            ("pairs judged", str(s["n"])),
            *([("pairs whose request failed (rerun to judge them)", str(failed))] if failed else []),
            ("B better (wins)", str(s["wins"])), ("ties", str(s["ties"])), ("A better (losses)", str(s["losses"])),
            ("B's score (wins + ties/2) / n", shown), ("replies with no verdict (ties)", str(s.get("no_verdict", 0))),
            ("rows in only one file", str(s.get("missing", 0))), ("verdicts", str(s.get("verdicts", "")))]


def _position(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pair_key(rec: dict[str, Any]) -> str | None:
    """The input row (and item) a respond record answers: ``origin`` when its instruction came from
    a refine or expand output, else its ``row``; None when it names none."""
    origin = rec.get("origin")
    if isinstance(origin, dict) and _position(origin.get("row")):
        item = origin.get("item")
        return f"{origin['row']}:{item if _position(item) else 0}"
    return f"{rec['row']}:0" if _position(rec.get("row")) else None


RESPONSES = "a localaug run respond output (JSON Lines of records with task respond, status ok, instruction and response)"


def responses(path: Path) -> dict[str, tuple[str, str]]:
    """key -> (instruction, response) of the ok respond records of ``path``."""
    if not path.is_file():
        raise UsageError(f"{path} does not exist: give {RESPONSES}")
    out = {}
    skipped = Skipped()
    unplaced = 0  # ok respond records that name no input row
    try:
        for rec in iter_ledger(path, skipped=skipped):
            if rec["task"] == "respond" and rec["status"] == "ok":
                key = pair_key(rec)
                if key is None:
                    unplaced += 1
                else:
                    out[key] = (rec["instruction"], rec["response"])
    except OSError as e:
        raise JobError(f"cannot read {path}: {e.strerror or e}", path=str(path)) from None
    if not out:
        why = (f" ({unplaced} answered, none naming its input row in row or origin.row)" if unplaced
               else f" ({skipped.first})" if skipped.first else "")
        raise UsageError(f"{path} holds no answered instructions{why}: give {RESPONSES}")
    return out


def score(verdicts: list[str]) -> tuple[float, tuple[float, float]]:
    """B's mean score over pairs (B 1, tie ½, A 0) and its 95% interval (NaN with no pair: the
    summary file says null)."""
    n = len(verdicts)
    if not n:
        return float("nan"), (float("nan"), float("nan"))
    values = [{"B": 1.0, "tie": 0.5, "A": 0.0}[v] for v in verdicts]
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return mean, (max(0.0, mean - half), min(1.0, mean + half))


def run_judge(a: str | os.PathLike[str], b: str | os.PathLike[str], judge: str | os.PathLike[str], *,
              aspect: str = "detail", output: str | os.PathLike[str] | None = None, threads: int | None = None,
              parallel: int | None = None, max_tokens: int = 512, n_ctx: int | None = None, device: str = "auto",
              progress: Callable[[int, int], None] | None = None,
              html: str | os.PathLike[str] | None = None) -> JudgeSummary:
    """Judge B against A (see the module doc); with ``html``, the table is added to that report
    page (or a page of its own is written)."""
    if aspect not in judging.ASPECTS:
        raise UsageError(f"{opt('aspect')} {aspect!r}: use {', '.join(judging.ASPECTS)}")
    pa, pb = Path(a), Path(b)
    left, right = responses(pa), responses(pb)
    keys = sorted(set(left) & set(right), key=lambda k: tuple(int(x) for x in k.split(":")))
    if not keys:
        raise UsageError(f"{pa} and {pb} share no rows: judge answers to the same inputs (e.g. the seeds and their refined versions)")
    out = Path(output) if output else paths.judge_ledger(pb, aspect)
    summary_path = paths.judge_summary(out)
    page_path = Path(html) if html is not None else None

    def refuse_inputs(read: list[Path]) -> None:
        refuse_overwriting_inputs([out, summary_path], read)
        if page_path is not None:
            refuse_overwriting_inputs(page_path, [*read, out, summary_path], "html")

    remote = is_remote(judge)
    # before the judge is resolved (or pulled): a path given as the judge (file or folder) is an
    # input; a store name or a URL is no file, skipped
    refuse_inputs([pa, pb] if remote else [pa, pb, Path(judge)])
    if page_path is not None:
        _page_text(page_path)  # an existing file that is not a page is refused now, not after the judging
    model: Path | RemoteModel
    if remote:  # a model on a server: its URL and name stand for the file's sha256
        r = resolve_remote(str(judge), param="judge")
        model, style, identity = r.model, r.style, r.model.identity()
    else:
        m = resolve_style(judge)
        refuse_inputs([pa, pb, m.path])
        model, style, identity = m.path, m.style, cached_sha256(m.path)
    config = {"a": sha256_file(pa), "b": sha256_file(pb), "judge": identity, "aspect": aspect,
              "max_tokens": max_tokens, "prompt": hashlib.sha256(judging.SYSTEM.encode()).hexdigest()[:16]}
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    with output_lock(lock_path(out)):
        done = _done(out, run_id)
        todo = [k for k in keys if k not in done]
        failures: list[str] = []
        if todo:
            failures = _judge(todo, left, right, model, style, aspect, out, run_id,
                              EngineOptions(device=device, threads=threads, n_ctx=n_ctx),  # type: ignore[arg-type]
                              parallel, max_tokens, lambda k: progress(len(keys) - len(todo) + k, len(keys)) if progress else None)
        done = _done(out, run_id)
    verdicts = [done[k]["verdict"] for k in keys if k in done]
    mean, interval = score(verdicts)
    summary = JudgeSummary(str(pa), str(pb), str(model), aspect, verdicts.count("B"), verdicts.count("tie"),
                           verdicts.count("A"), len(verdicts), mean, interval,
                           sum(1 for k in keys if k in done and None in (done[k]["first"], done[k]["second"])),
                           len(todo) - len(failures), str(out), len(set(left) ^ set(right)), len(failures))
    write_json_atomic(summary_path, summary.to_json())  # strict JSON: no pair judged is a null score
    if failures and len(failures) == len(todo):
        raise JobError(f"no pair could be judged ({len(failures)} failed): {failures[0]}; run the same command again "
                       "to retry them", path=str(out))
    if page_path is not None:
        add_to_page(page_path, summary)
    return summary


VERDICTS = ("A", "B", "tie")
READINGS = ("A", "B", "C", None)


def _done(out: Path, run_id: str) -> dict[str, dict[str, Any]]:
    """The verdicts of this run already in the ledger ``out``, by pair key."""
    if not out.exists():
        return {}
    if not out.is_file():
        raise UsageError(f"{opt('output')} {out} is not a regular file: give a file path")
    done = {}
    with open(out, "rb") as f:  # checked whole before anything is cut or appended
        for lineno, _, line in record_lines(f):
            rec, why = parse_line(line)
            if why is None and not (isinstance(rec, dict) and isinstance(rec.get("run_id"), str)):
                why = "not a verdict record"
            if why is not None:
                if line is not None and (not line.strip() or not line.endswith(b"\n")):
                    continue  # a blank line, or a torn last line (a kill mid-write): cut below
                raise JobError(f"{out} is not a localaug judge ledger (line {lineno}: {why}): give another {opt('output')}",
                               path=str(out))
            if rec["run_id"] != run_id:
                raise JobError(f"{out} holds verdicts of another judging run (other files, judge or settings): give another "
                               f"{opt('output')}", path=str(out))
            if isinstance(rec.get("key"), str) and rec.get("verdict") in VERDICTS and rec.get("first") in READINGS \
                    and rec.get("second") in READINGS:
                done[rec["key"]] = rec  # a damaged verdict is judged again
    repair_ledger(out)
    return done


MAX_PAGE_BYTES = 256 << 20


def _page_text(path: Path) -> str | None:
    """The report page at ``path`` (None: there is none yet); a file there that is not an HTML page
    is refused rather than written into."""
    if not path.exists():
        return None
    if not path.is_file():
        raise UsageError(f"{opt('html')} {path} is not a regular file: give a report page or a new file name")
    try:
        text = read_bounded(path, MAX_PAGE_BYTES)
    except (OSError, ValueError):
        text = ""
    if "</body>" not in text:
        raise UsageError(f"{opt('html')} {path} is not an HTML page (no </body>): give a page made by localaug report, "
                         "or a new file name")
    return text


def add_to_page(path: Path, summary: JudgeSummary) -> None:
    """Add the judge table to a report page (before its end), or write a page with it alone;
    either way the file is replaced whole (temporary file, then rename)."""
    rows = "".join(f"<tr><th>{html_lib.escape(k)}</th><td>{html_lib.escape(v)}</td></tr>" for k, v in summary.rows())
    section = f"<h2>Judge: {html_lib.escape(summary.aspect)}</h2><table>{rows}</table>"
    text = _page_text(path)
    if text is None:
        text = f"<!doctype html><html><head><meta charset='utf-8'><title>localaug judge</title></head><body>{section}</body></html>\n"
    else:
        text = text.replace("</body>", section + "</body>", 1)
    write_atomic(path, text, "html")


def _judge(todo: list[str], left: dict[str, tuple[str, str]], right: dict[str, tuple[str, str]], model: Path | RemoteModel,
           style: PromptStyle, aspect: str, out: Path, run_id: str, options: EngineOptions, parallel: int | None,
           max_tokens: int, tick: Callable[[int], Any]) -> list[str]:
    """Judge the pairs ``todo`` into the ledger; the errors of the pairs whose request failed (not
    written, so that the same command judges them again)."""
    backend, chosen = open_calibrated(model, options, parallel)  # a remote model: requests in flight
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
    appender = Appender(out)
    finished = 0
    failures: list[str] = []
    try:
        for chunk in chunked(iter(todo), rows_per_chunk(chosen.value)):  # type: ignore[arg-type]
            requests = []
            for key in chunk:
                question, ans_a = left[key]
                ans_b = right[key][1]
                requests.append(Request(f"{key}|AB", render_messages(style, judging.messages(aspect, question, ans_a, ans_b)), greedy, style.stop))
                requests.append(Request(f"{key}|BA", render_messages(style, judging.messages(aspect, question, ans_b, ans_a)), greedy, style.stop))
            replies: dict[str, dict[str, str | None]] = {}
            errors: dict[str, str] = {}
            for result in backend.run(requests):
                key, order = result.id.rsplit("|", 1)
                replies.setdefault(key, {})[order] = result.generation.text if result.generation is not None else None
                if result.generation is None:
                    errors.setdefault(key, result.error or "no reply")
                if len(replies[key]) < 2:
                    continue
                if key in errors:
                    failures.append(errors[key])
                    tick(finished + len(failures))
                    continue
                ab, ba = replies[key]["AB"] or "", replies[key]["BA"] or ""
                first, second = judging.verdict(ab), judging.verdict(ba)
                appender.write({"run_id": run_id, "key": key, "aspect": aspect, "first": first, "second": second,
                                "verdict": judging.combine(first, second), "reply_first": ab[:MAX_REPLY_KEPT],
                                "reply_second": ba[:MAX_REPLY_KEPT]})
                finished += 1
                tick(finished + len(failures))
    finally:
        appender.close()
        backend.close()
    return failures
