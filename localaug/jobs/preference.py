"""Keeping only good answers, and making preference pairs: what a training file takes from judged
answers (``jobs.grade``'s grades and verdicts).

SFT files (alpaca, sharegpt, messages) take one answer per instruction: the first kept one, or,
when the answers are graded, the best-graded one (the earlier sample of equals). With a minimum
score only instructions whose chosen answer is graded at least that are kept.

Preference files (dpo) take one pair per instruction, by one of two rules:

- ``scores``: chosen = the best-graded answer, rejected = the worst-graded (the earlier sample of
  equals for the chosen, the later for the rejected, among the answers whose text differs from the
  chosen one), kept when the two grades differ by at least
  the margin (default 1: on MT-Bench's 1–10 whole-number scale, any strict preference of the
  judge; raise it for a noisy judge, since a difference of one point from a small judge is often
  noise — the manifest and ``localaug report`` show the grades to choose from);
- ``pairwise``: every two different answers judged in both orders; an answer preferred in both
  orders beats the other, and ties, orders that disagree (position bias) or a reply with no verdict
  decide nothing. chosen = the answer with the most wins less losses (the earlier sample of
  equals), rejected = the weakest answer it beat itself; an instruction with no decided pair gives
  none.

Either way an instruction with fewer than two different kept answers gives no pair, and with a
minimum score the chosen answer must be graded at least that. Every instruction left out is
counted by reason (``Tally``); the rule, margin and counts go into the manifest.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localaug.core.errors import UsageError, opt
from localaug.core.files import read_json, refuse_overwriting_inputs, write_json_atomic
from localaug.family import judging
from localaug.jobs import PREFERENCE_RULES, dataio
from localaug.jobs.exports import PREFERENCE_FORMATS, Preference, preference_shape
from localaug.jobs.grade import Answer, answers_of, judged_lines, pair_key, pairs_of, read_answers
from localaug.jobs.ledger import iter_ledger
from localaug.jobs.paths import GRADES, VERDICTS, judged_path, manifest_of

RULES = PREFERENCE_RULES
DEFAULT_MARGIN = 1.0

# why an instruction is left out of a training file
NO_ANSWER = "no answer kept (the row failed, or every answer was filtered)"
ONE_ANSWER = "fewer than two different answers"
NOT_GRADED = "not graded"
BELOW_MARGIN = "grades differ by less than the margin"
BELOW_MIN = "chosen answer graded below the minimum score"
NOT_JUDGED = "not judged pairwise"
UNDECIDED = {"tie": "a tie in both orders", "inconsistent": "the two orders disagree", "no-verdict": "no verdict in a reply"}


@dataclass(frozen=True)
class Selection:
    """Which answers an export keeps: the preference rule and margin, the minimum score."""

    rule: str = "scores"
    margin: float = DEFAULT_MARGIN
    min_score: float | None = None

    def check(self) -> None:
        if self.rule not in RULES:
            raise UsageError(f"{opt('rule')} {self.rule!r}: use {', '.join(RULES)}")
        if not 0 <= self.margin <= judging.HIGHEST - judging.LOWEST:
            raise UsageError(f"{opt('margin')} must be from 0 to 9 (grades are 1 to 10)")
        if self.min_score is not None and not judging.LOWEST <= self.min_score <= judging.HIGHEST:
            raise UsageError(f"{opt('min_score')} must be from 1 to 10 (grades are 1 to 10)")

    def needs(self, fmt: str) -> tuple[bool, bool]:
        """(grades, verdicts): what exporting ``fmt`` with this selection reads."""
        if fmt in PREFERENCE_FORMATS:
            return self.rule == "scores" or self.min_score is not None, self.rule == "pairwise"
        return True, False

    def manifest(self, fmt: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"min_score": self.min_score}
        if fmt in PREFERENCE_FORMATS:
            fields.update(rule=self.rule, margin=self.margin if self.rule == "scores" else None)
        else:
            fields["answer"] = "the best-graded kept answer (the earlier sample of equals)"
        return fields


@dataclass
class Judged:
    """What a judge said: grades by answer key, pairwise outcomes by pair key."""

    scores: dict[str, float | None] = field(default_factory=dict)  # None: graded, but no rating in the reply
    outcomes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, grades: Path | None, verdicts: Path | None) -> Judged:
        judged = cls()
        for line in judged_lines(grades) if grades is not None else ():
            judged.scores[line["key"]] = line["score"]
        for line in judged_lines(verdicts) if verdicts is not None else ():
            judged.outcomes[line["key"]] = line["outcome"]
        return judged


@dataclass
class Tally:
    """Instructions kept, and those left out by reason."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


def _drop(tally: Tally, reason: str) -> None:
    tally.dropped[reason] += 1


def best_answer(answers: list[Answer], judged: Judged) -> tuple[Answer, float | None]:
    """The answer an SFT file takes: the best-graded (the earlier sample of equals), else the first."""
    graded = [(s, a) for a in answers if (s := judged.scores.get(a.key)) is not None]
    if not graded:
        return answers[0], None
    score, answer = max(graded, key=lambda sa: (sa[0], -sa[1].sample))
    return answer, score


def choose(rec: dict[str, Any], judged: Judged, sel: Selection, tally: Tally) -> dict[str, Any] | None:
    """The record an SFT file takes for ``rec``: with its chosen answer as ``response``, or None
    (left out, counted in ``tally``). Records that are not answers pass as they are."""
    answers = answers_of(rec)
    if not answers:
        if rec.get("task") == "respond":
            _drop(tally, NO_ANSWER)
        return rec  # it holds no example, or examples that are not answers (pairs)
    answer, score = best_answer(answers, judged)
    if sel.min_score is not None and (score is None or score < sel.min_score):
        _drop(tally, NOT_GRADED if score is None else BELOW_MIN)
        return None
    tally.kept += 1
    return {**rec, "response": answer.text}


def by_scores(answers: list[Answer], judged: Judged, sel: Selection, tally: Tally) -> tuple[Answer, Answer] | None:
    graded = [(s, a) for a in answers if (s := judged.scores.get(a.key)) is not None]
    if len({a.text for _, a in graded}) < 2:
        _drop(tally, NOT_GRADED if len({a.text for a in answers}) > 1 else ONE_ANSWER)
        return None
    top, chosen = max(graded, key=lambda sa: (sa[0], -sa[1].sample))
    low, rejected = min(((s, a) for s, a in graded if a.text != chosen.text), key=lambda sa: (sa[0], -sa[1].sample))
    if top - low < sel.margin:
        _drop(tally, BELOW_MARGIN)
        return None
    return chosen, rejected


def by_verdicts(answers: list[Answer], judged: Judged, tally: Tally) -> tuple[Answer, Answer] | None:
    pairs = pairs_of(answers)
    if not pairs:
        _drop(tally, ONE_ANSWER)
        return None
    outcomes = [(a, b, judged.outcomes.get(pair_key(a, b))) for a, b in pairs]
    beat: list[tuple[Answer, Answer]] = [(a, b) if o == "A" else (b, a) for a, b, o in outcomes if o in ("A", "B")]
    if not beat:
        undecided = [o for _, _, o in outcomes if o is not None]
        _drop(tally, NOT_JUDGED if not undecided else UNDECIDED[Counter(undecided).most_common(1)[0][0]])
        return None
    net = Counter[int]()
    for winner, loser in beat:
        net[winner.sample] += 1
        net[loser.sample] -= 1
    rank = sorted(answers, key=lambda a: (-net[a.sample], a.sample))
    chosen = rank[0]
    beaten = [loser for winner, loser in beat if winner.sample == chosen.sample]
    if not beaten:
        _drop(tally, UNDECIDED["inconsistent"])
        return None
    return chosen, max(beaten, key=rank.index)


def preference(rec: dict[str, Any], judged: Judged, sel: Selection, tally: Tally) -> Preference | None:
    """The preference pair of one respond record by the selection's rule, or None (counted)."""
    answers = answers_of(rec)
    if not answers:
        _drop(tally, NO_ANSWER)
        return None
    pair = by_scores(answers, judged, sel, tally) if sel.rule == "scores" else by_verdicts(answers, judged, tally)
    if pair is None:
        return None
    chosen, rejected = pair
    if sel.min_score is not None:
        score = judged.scores.get(chosen.key)
        if score is None or score < sel.min_score:
            _drop(tally, NOT_GRADED if score is None else BELOW_MIN)
            return None
    tally.kept += 1
    [ex] = dataio.training_examples(rec)
    return Preference(ex, chosen.text, rejected.text)


def write_export(records: Iterable[dict[str, Any]], fmt: str, path: Path, judged: Judged, sel: Selection) -> tuple[int, Tally]:
    """Write the training file ``path`` from respond records with this selection, and its
    ``dataset_info.json`` entry; (examples written, the tally)."""
    tally = Tally()
    if fmt not in PREFERENCE_FORMATS:
        return dataio.write_records(records, fmt, path, choose=lambda rec: choose(rec, judged, sel, tally)), tally

    def rows() -> Iterator[dict[str, Any]]:
        for rec in records:
            pair = preference(rec, judged, sel, tally)
            if pair is not None:
                yield preference_shape(pair)

    n = dataio.write_rows(rows(), path)
    dataio.write_dataset_info(path, fmt)
    return n, tally


# --- localaug export ----------------------------------------------------------------------------------


@dataclass
class ExportSummary:
    output: Path
    manifest: Path
    records: Path
    fmt: str
    written: int
    tally: Tally
    selection: dict[str, Any]


def export_output(output: str | os.PathLike[str], dest: str | os.PathLike[str], fmt: str, sel: Selection, *,
                  grades: str | os.PathLike[str] | None = None, verdicts: str | os.PathLike[str] | None = None) -> ExportSummary:
    """Write the training file ``dest`` from a respond output and its judgements (the grades and
    verdicts ledgers beside it unless given), with ``dest.manifest.json`` saying how it was chosen."""
    sel.check()
    if fmt not in dataio.RESPONSE_FORMATS:
        raise UsageError(f"{opt('fmt')} {fmt!r}: export writes {', '.join(dataio.RESPONSE_FORMATS)}")
    src, out = Path(output), Path(dest)
    records, _ = read_answers(src)  # a file that holds no respond records is refused here
    want_grades, want_verdicts = sel.needs(fmt)
    grades_file = Path(grades) if grades else judged_path(src, GRADES)
    verdicts_file = Path(verdicts) if verdicts else judged_path(src, VERDICTS)
    for wanted, given, path, how in ((want_grades, grades, grades_file, "localaug grade OUT --judge MODEL"),
                                     (want_verdicts, verdicts, verdicts_file, "localaug grade OUT --judge MODEL --pairwise")):
        if wanted and not path.is_file() and (given or fmt in PREFERENCE_FORMATS or sel.min_score is not None):
            raise UsageError(f"{path} does not exist: judge the answers first ({how})")
    manifest = manifest_of(out)
    written = [out, manifest, out.parent / "dataset_info.json"]  # every format export writes has an entry
    refuse_overwriting_inputs(written, [src, records, grades_file, verdicts_file, manifest_of(src)])
    judged = Judged.load(grades_file if want_grades and grades_file.is_file() else None,
                         verdicts_file if want_verdicts and verdicts_file.is_file() else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    n, tally = write_export(iter_ledger(records), fmt, out, judged, sel)
    fields = selection_fields(fmt, sel, tally, grades_file if judged.scores else None, verdicts_file if judged.outcomes else None)
    source = read_json(manifest_of(src)) or {}
    write_json_atomic(manifest, {"source": str(records), "source_run_id": source.get("run_id"), "answered_by": source.get("model"),
                                 "output": str(out), "format": fmt, "written": n, "selection": fields,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return ExportSummary(out, manifest, records, fmt, n, tally, fields)


def selection_fields(fmt: str, sel: Selection, tally: Tally, grades: Path | None, verdicts: Path | None) -> dict[str, Any]:
    """What a manifest says of how a training file's answers were chosen."""
    return {**sel.manifest(fmt), **tally.to_json(), "grades": str(grades) if grades else None,
            "verdicts": str(verdicts) if verdicts else None}
