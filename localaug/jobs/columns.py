"""The columns a job reads, checked before any model work.

A ``field`` (or pairs' response field) that no row has, or that holds no text in any row that has
it, would make every row a failed record after the model has loaded and run: ``check_columns``
reads the input's rows until it has met a text value in each column the job needs (one row, for
a good input) and otherwise refuses the job, naming the column and the columns the rows do have.
Rows that cannot be read at all (invalid JSON, not UTF-8) are left to fail alone, unless no row of
the input can be read. Duplicate column names are refused by the readers themselves
(``dataio``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from localaug.core.errors import UsageError, opt
from localaug.jobs import dataio
from localaug.jobs.dataio import InputRow
from localaug.jobs.schema import kind

MAX_NAMES = 20  # column names listed in a message


@dataclass
class _Column:
    """What the rows hold at one path."""

    path: str
    param: str  # the setting that names it
    found_text: bool = False
    kinds: Counter[str] = field(default_factory=Counter)  # kinds of the non-text values met

    def see(self, record: dict[str, object]) -> None:
        try:
            value = dataio.get_field(record, self.path)
        except KeyError:
            return
        if isinstance(value, str):
            self.found_text = True
        else:
            self.kinds[_plural(kind(value))] += 1


def _plural(k: str) -> str:
    return {"a number": "numbers", "an array": "arrays", "an object": "objects", "true/false": "true/false values",
            "null": "nulls"}.get(k, k)


def check_columns(rows: Iterable[InputRow], task: str, field_name: str, response_field: str | None, name: str) -> None:
    """Refuse (UsageError) a job whose rows cannot give the text it needs; see the module doc."""
    text = [_Column(field_name, "field")]
    responses: list[_Column] = []
    if task == "pairs":
        responses = [_Column(response_field, "response_field")] if response_field else [
            _Column("response", "response_field"), _Column("output", "response_field")]
    names: dict[str, None] = {}
    readable, first_error, total = 0, None, 0
    for row in rows:
        total += 1
        if row.error is not None:
            first_error = first_error or row.error
            continue
        readable += 1
        if len(names) < MAX_NAMES + 1:
            names.update(dict.fromkeys(str(k) for k in list(row.record)[:MAX_NAMES + 1]))
        for col in (*text, *responses):
            col.see(row.record)
        if text[0].found_text and (not responses or any(c.found_text for c in responses)):
            return
    if not total:
        return  # an empty input is an empty job
    if not readable:
        raise UsageError(f"no row of {name} can be read ({total} row{'s' if total > 1 else ''}; the first: {first_error}): "
                         "fix the rows, or give JSON Lines, a JSON array, CSV or Parquet, as the file's name says")
    columns = ", ".join(list(names)[:MAX_NAMES]) + (", …" if len(names) > MAX_NAMES else "") or "none"
    for cols in ([text[0]], responses):
        if not cols or any(c.found_text for c in cols):
            continue
        shown = " or ".join(repr(c.path) for c in cols)
        held = Counter[str]()
        for c in cols:
            held.update(c.kinds)
        if held:
            kinds = [k for k, _ in held.most_common()]
            what = ", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0]
            raise UsageError(f"column {shown} of {name} holds {what}, not text, in every row that has it: give the text "
                             f"column with {opt(cols[0].param)} (the columns: {columns})")
        raise UsageError(f"no row of {name} has a column {shown}: give the text column with {opt(cols[0].param)} "
                         f"(the columns: {columns})")
