"""Row keys: what identifies a row of a run, so that a restart skips what is done and shards split an
input with no coordination.

A row's key hashes the run id (``config.run_id_of``) with the row's text (or seed pair) and its
occurrence number, so repeated texts stay distinct rows. ``select_rows`` keys an input's rows in
order and picks those of a shard and a limit; ``localaug run`` and the Ray path both use it, so
their outputs merge key for key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Protocol

from localaug.core.errors import UsageError, opt
from localaug.family.prompts import Pair, user_text
from localaug.jobs import dataio
from localaug.jobs.config import JobConfig
from localaug.jobs.dataio import InputRow


def row_payload(cfg: JobConfig, row: InputRow) -> str | list[Pair]:
    """The text (or seed pair) of a row; raises ValueError with the reason it cannot be used."""
    if row.error:
        raise ValueError(row.error)
    try:
        text = dataio.get_field(row.record, cfg.field)
    except KeyError:
        raise ValueError(f"no field {cfg.field!r} in this row") from None
    if not isinstance(text, str):
        raise ValueError(f"field {cfg.field!r} is not text")
    if not text.strip():
        raise ValueError("empty text")
    text = user_text(text, row_context(cfg, row))
    if cfg.task != "pairs":
        return text
    names = [cfg.response_field] if cfg.response_field else ["response", "output"]
    for name in names:
        with contextlib.suppress(KeyError):
            response = dataio.get_field(row.record, name)
            if isinstance(response, str) and response.strip():
                return [Pair(text, response)]
    raise ValueError(f"pairs needs a response: no non-empty {' or '.join(repr(n) for n in names)} field")


def row_context(cfg: JobConfig, row: InputRow) -> str:
    """The row's context (``cfg.input_field``, Alpaca's ``input``): "" when not asked for, absent,
    null or blank; raises ValueError when it is there but not text."""
    if cfg.input_field is None:
        return ""
    try:
        value = dataio.get_field(row.record, cfg.input_field)
    except KeyError:
        return ""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {cfg.input_field!r} is not text")
    return value if value.strip() else ""


def row_identity(cfg: JobConfig, row: InputRow) -> str:
    try:
        payload = row_payload(cfg, row)
    except ValueError:
        return "bad:" + (row.raw if row.raw is not None else json.dumps(row.record, sort_keys=True, ensure_ascii=False, default=str))
    return payload if isinstance(payload, str) else f"{payload[0].instruction}\0{payload[0].response}"


def make_key(run_id: str, identity: str, occurrence: int) -> str:
    # surrogatepass: text that is not valid Unicode still has a key (its row then fails, alone)
    return hashlib.sha256(f"{run_id}\0{identity}\0{occurrence}".encode("utf-8", "surrogatepass")).hexdigest()


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None or isinstance(shard, tuple):
        return shard
    i, sep, n = shard.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise UsageError(f"{opt('shard')} {shard!r}: give i/N with 0 <= i < N, e.g. 0/4")
    return int(i), int(n)


class Meet(Protocol):
    """Told the key of every row of the whole input (``select_rows``), whether this run selects
    it or not; ``done`` once it needs no more."""

    done: bool

    def __call__(self, key: str) -> None: ...


class KeysMet:
    """Which of an output's row keys the input still has (a ``Meet``): the whole input is keyed,
    rows outside a run's shard or limit included, until every key of the output is met."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses
        self.met: set[str] = set()
        self.done = not statuses

    def __call__(self, key: str) -> None:
        if key in self.statuses and key not in self.met:
            self.met.add(key)
            self.done = len(self.met) == len(self.statuses)

    def stale(self) -> set[str]:
        """The keys of rows that are no longer in the input (a row edited or removed since)."""
        return set(self.statuses) - self.met


def select_rows(rows: Iterable[InputRow], cfg: JobConfig, run_id: str, shard: tuple[int, int] | None = None,
                limit: int | None = None, meet: Meet | None = None) -> Iterator[InputRow]:
    """The rows (all of an input, in order) this run covers, each with its key; shared by
    ``run_job`` and ``localaug.jobs.on_ray``. With ``meet``, every row of the input is keyed and
    shown to it, past ``limit`` too, until it is ``done``."""
    keys = RowKeys(cfg, run_id)
    taken = 0
    for row in rows:
        key = keys.key(row)
        if meet is not None:
            meet(key)
        if limit is not None and taken >= limit:
            if meet is None or meet.done:
                return
            continue
        if shard is not None and shard_of(key, shard[1]) != shard[0]:
            continue
        taken += 1
        row.key = key
        yield row


class RowKeys:
    """Row keys given in input order: the occurrences of a repeated text are counted over the
    whole input (16 bytes a distinct text), so repeated texts stay distinct rows."""

    def __init__(self, cfg: JobConfig, run_id: str) -> None:
        self.cfg, self.run_id = cfg, run_id
        self.seen: dict[bytes, int] = {}

    def key(self, row: InputRow) -> str:
        ident = row_identity(self.cfg, row)
        digest = hashlib.blake2b(ident.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        self.seen[digest] = self.seen.get(digest, 0) + 1
        return make_key(self.run_id, ident, self.seen[digest])


def shard_of(key: str, shards: int) -> int:
    """The shard of a row key: its hash modulo the shard count (stable when the input is reordered)."""
    return int(key[:16], 16) % shards
