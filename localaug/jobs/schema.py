"""What a localaug job record is, checked wherever a file of records is read back.

``localaug report``, ``judge``, ``merge``, a resumed run and ``run respond`` over a refine or expand
output all read JSON Lines that may not be what they expect: a file localaug did not write, a
hand-edited ledger, a truncated or binary file. Each line is checked here before any field of it
is used: a line that is not a job record is skipped and counted (``Skipped``), and a file with no
record at all is a one-line error that says what was expected, never a traceback from a field of
the wrong type.

Only the fields localaug sets are checked (an input column carried into a record may hold
anything): ``source_id`` (text), ``task``, ``status``, ``row`` (a position), ``error``,
``rejected`` and ``shortfall``, ``responses`` (respond with several answers: a list of ``{text,
sample, status, ...}``) and the result of an ``ok`` record: ``output`` (refine), ``outputs``
(expand), ``pairs`` (pairs), ``instruction`` and ``response`` (respond).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localaug.family.registry import TASKS

STATUSES = ("ok", "filtered", "failed")
EXPECTED = ("JSON Lines of localaug job records (one object a line with source_id, task and status, as "
            "localaug run writes)")


def kind(value: Any) -> str:
    """A JSON value's kind in words ("a number", "an array", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _pairs(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, dict) and isinstance(p.get("instruction"), str) and isinstance(p.get("response"), str) for p in value)


def _answers(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(a, dict) and isinstance(a.get("text"), str) and _count(a.get("sample")) and a.get("status") in STATUSES
        for a in value)


# the result an ok record of each task holds: (field, check, what it must be)
RESULTS: dict[str, tuple[tuple[str, Any, str], ...]] = {
    "refine": (("output", lambda v: isinstance(v, str), "text"),),
    "expand": (("outputs", _texts, "a list of texts"),),
    "pairs": (("pairs", _pairs, "a list of {instruction, response} texts"),),
    "respond": (("instruction", lambda v: isinstance(v, str), "text"), ("response", lambda v: isinstance(v, str), "text")),
}


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` (a parsed JSON line) is not a localaug job record; None when it is one."""
    if not isinstance(rec, dict):
        return f"{kind(rec)}, not an object"
    if not isinstance(rec.get("source_id"), str) or not rec["source_id"]:
        return "no source_id (the row key)"
    task, status = rec.get("task"), rec.get("status")
    if not isinstance(task, str) or task not in TASKS:
        return f"task is {kind(task) if not isinstance(task, str) else repr(task[:40])}, not one of {', '.join(TASKS)}"
    if not isinstance(status, str) or status not in STATUSES:
        return f"status is {kind(status) if not isinstance(status, str) else repr(status[:40])}, not one of {', '.join(STATUSES)}"
    if rec.get("row") is not None and not _count(rec["row"]):
        return f"row is {kind(rec['row'])}, not a row number"
    if rec.get("error") is not None and not isinstance(rec["error"], str):
        return f"error is {kind(rec['error'])}, not text"
    rejected = rec.get("rejected")
    if rejected is not None and not (isinstance(rejected, dict) and all(_count(v) for v in rejected.values())):
        return "rejected is not an object of counts"
    if rec.get("shortfall") is not None and not _count(rec["shortfall"]):
        return f"shortfall is {kind(rec['shortfall'])}, not a count"
    if rec.get("responses") is not None and not _answers(rec["responses"]):
        return "responses is not a list of answers ({text, sample, status})"
    if status == "ok":
        for name, check, what in RESULTS[task]:
            if not check(rec.get(name)):
                return f"an ok {task} record whose {name} is {kind(rec.get(name))}, not {what}"
    return None


@dataclass
class Skipped:
    """Lines of a records file that were not job records: how many, and the first one's reason."""

    count: int = 0
    first: str | None = None  # "line 3: an array, not an object"

    def add(self, line: int, why: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"line {line}: {why}"

    def note(self) -> str:
        """" (2 lines skipped; line 3: ...)" or ""."""
        if not self.count:
            return ""
        return f" ({self.count} line{'s' if self.count > 1 else ''} that {'are' if self.count > 1 else 'is'} not a job record; {self.first})"
