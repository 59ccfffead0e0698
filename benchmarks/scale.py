"""Resume, dedup and input reading at dataset scale: the previous code and the current one, side by
side in one run, on a synthetic input and ledger (no model: the stages a resumed `localaug run`
goes through before its first new row are timed directly).

    python benchmarks/scale.py [--rows 100000] [--items 3] [--sizes 1000,10000,100000] [--dedup both]

The input is ROWS done rows then ROWS/100 new ones (JSON Lines); the ledger holds an expand record
with ITEMS new instructions for each done row, keyed as `localaug run` keys them. Reported:

- input read + key: one pass of the reader keying every row (the counting pass), the previous
  text-mode reader vs the current byte reader, and how many passes a resumed run makes before its
  first new row (before: the counting pass, then a second pass from the start to the first row to
  do; now: the counting pass, then the row read again from its place);
- resume to the first new row, by stage: read the ledger (the same code both sides), count and
  key the input, fill the job-wide duplicate index (before: every accepted text of the ledger
  checked one by one; now: the index saved beside the ledger, and, apart, a rebuild in bulk when
  there is none), reach the first row to do;
- MinHash check + add, microseconds a text, with 1k / 10k / 100k texts indexed: the previous index
  (kept in this script verbatim as the baseline), the current one filled text by text, and the
  current one loaded in bulk (as a resumed run holds it).

The previous implementations live in this script (OldMinHashIndex, old_jsonl_rows, old_remember),
so one run measures both sides on the same machine; the load average is printed beside the
figures (`os.getloadavg`). Writes benchmarks/out/scale.json. Expect minutes at 100k rows: the
previous MinHash index rebuilds 300k texts at about 1 ms each on a slow core.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localaug.augment.filters import ExactIndex, MinHashIndex, lsh_bands, normalize, shingles  # noqa: E402
from localaug.augment.resolve import default_sampling  # noqa: E402
from localaug.jobs import dataio  # noqa: E402
from localaug.jobs.config import JobConfig  # noqa: E402
from localaug.jobs.dataio import InputRow, json_line  # noqa: E402
from localaug.jobs.keys import KeysMet, RowKeys, select_rows  # noqa: E402
from localaug.jobs.ledger import accepted_texts, iter_ledger, scan_ledger  # noqa: E402
from localaug.jobs.pending import PendingRows  # noqa: E402
from localaug.jobs.readers import Loads, invalid_text  # noqa: E402
from localaug.jobs.seen import SeenBook, index_paths  # noqa: E402

RUN_ID = "b" * 64
_MERSENNE = (1 << 61) - 1


# --- the previous code, verbatim where it matters -------------------------------------------------------


class OldMinHashIndex:
    """The MinHash index before: blake2b per shingle, one (a*x + b) mod p matrix per text with a
    division, band keys as bytes in dicts, candidates compared one at a time."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, _MERSENNE, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, _MERSENNE, num_perm, dtype=np.uint64)
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._sigs: list[np.ndarray] = []
        self._exact: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sigs)

    def signature(self, text: str) -> np.ndarray:
        sh = shingles(text)
        if not sh:
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint64)
        x = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in sh],
                     dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = (self._a[:, None] * x[None, :] + self._b[:, None]) % np.uint64(_MERSENNE)
        return (h & np.uint64(0xFFFFFFFF)).min(axis=1)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    def check(self, text: str, add: bool = True) -> str | None:
        key = hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()
        if key in self._exact:
            return "duplicate"
        sig = self.signature(text)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        seen: set[int] = set()
        for band, k in zip(self._buckets, keys):
            for j in band.get(k, ()):
                if j not in seen:
                    seen.add(j)
                    if self.similarity(sig, self._sigs[j]) >= self.threshold:
                        return "near-duplicate"
        if add:
            self._exact.add(key)
            idx = len(self._sigs)
            self._sigs.append(sig)
            for band, k in zip(self._buckets, keys):
                band.setdefault(k, []).append(idx)
        return None


def old_remember(seen: Any, ledger: Path) -> None:
    """The resumed run's index before: every accepted text of the latest records, checked one by one."""
    for rec in iter_ledger(ledger):
        for text in accepted_texts(rec):
            seen.check(text)


def old_jsonl_rows(path: Path) -> Iterator[InputRow]:
    """The JSON Lines reader before: a text-mode file, a line at a time."""
    limit, loads = 64 << 20, Loads()
    with open(path, "rb") as raw:
        f = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")
        i = lineno = 0
        while line := f.readline(limit + 1):
            lineno += 1
            if not line.strip():
                continue
            rec, _ = loads(line)
            why = invalid_text(rec)
            yield InputRow(i, {}, why, raw=line.rstrip("\n")) if why else InputRow(i, rec)
            i += 1


# --- data ------------------------------------------------------------------------------------------------

TEMPLATES = ["Write a short story about {} and {} set in {}.", "Explain how {} works to a {} in simple terms, with {} examples.",
             "Create a travel guide for {} covering {}, {} and local food.", "List five ways to improve {} when {} is {}.",
             "Compare {} with {} for a team that cares about {}.", "Plan a {} weekend in {} for people who like {}."]


CLAUSES = ["Include details about {} and {}.", "Keep it under {} words, for readers new to {}.",
           "Mention {} at least once, and end with a tip about {}.", "Use a friendly tone and compare it with {} and {}."]


class Texts:
    """Instruction-like texts of 10 to 60 words: templates and added clauses filled with words of a
    5000-word vocabulary; one in five a near duplicate of an earlier text (a word added)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = [f"w{i}" for i in range(5000)]
        self.made: list[str] = []

    def _fill(self, template: str) -> str:
        return template.format(*(" ".join(self.rng.choices(self.words, k=self.rng.randint(1, 3)))
                                 for _ in range(template.count("{}"))))

    def __call__(self) -> str:
        if self.made and self.rng.random() < 0.2:  # a near duplicate of an earlier text
            return self.rng.choice(self.made) + " " + self.rng.choice(self.words)
        parts = [self.rng.choice(TEMPLATES)] + self.rng.choices(CLAUSES, k=self.rng.randint(0, 4))
        text = " ".join(self._fill(t) for t in parts)
        if len(self.made) < 50_000:
            self.made.append(text)
        return text


def build(work: Path, rows: int, items: int, cfg: JobConfig) -> tuple[Path, Path, int]:
    """input.jsonl (rows done + rows/100 new) and out.jsonl (an ok expand record per done row)."""
    texts = Texts(1)
    new = max(10, rows // 100)
    src, ledger = work / "input.jsonl", work / "out.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(rows + new):
            f.write(json_line({"id": i, "instruction": f"Seed task {i}: " + texts(), "meta": {"lang": "en"}}) + "\n")
    keys = RowKeys(cfg, RUN_ID)
    with open(ledger, "w", encoding="utf-8") as f:
        for row in dataio.read_rows(src):
            if row.index >= rows:
                break
            rec = {**row.record, "outputs": [texts() for _ in range(items)], "samples": items, "rejected": {}, "shortfall": 0,
                   "task": "expand", "model": "bench", "seed": 0, "status": "ok", "error": None, "finish_reason": "stop",
                   "source_id": keys.key(row), "row": row.index, "prompt_tokens": 40, "completion_tokens": 30 * items}
            f.write(json_line(rec) + "\n")
    return src, ledger, new


# --- stages ---------------------------------------------------------------------------------------------------


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def count_old(src: Path, cfg: JobConfig, statuses: dict[str, str]) -> int:
    """The counting pass before: text-mode reader, every row keyed; rows to do not kept."""
    todo = 0
    for row in select_rows(old_jsonl_rows(src), cfg, RUN_ID, None, None, KeysMet(statuses)):
        todo += row.key not in statuses
    return todo


def first_pending_old(src: Path, cfg: JobConfig, statuses: dict[str, str]) -> InputRow:
    """The second pass before: from the start, keying again, to the first row to do."""
    return next(r for r in select_rows(old_jsonl_rows(src), cfg, RUN_ID) if r.key not in statuses)


def count_new(src: Path, cfg: JobConfig, statuses: dict[str, str]) -> PendingRows:
    store = PendingRows(src)
    for row in select_rows(dataio.read_rows(src), cfg, RUN_ID, None, None, KeysMet(statuses)):
        if row.key not in statuses:
            store.add(row)
    return store


def resume(args: argparse.Namespace, src: Path, ledger: Path, cfg: JobConfig, mode: str) -> dict[str, Any]:
    """The stages of a resumed run before its first new row, before and now."""
    t_scan, (statuses, _) = timed(lambda: scan_ledger(ledger))
    t_count_old, todo = timed(lambda: count_old(src, cfg, statuses))
    t_first_old, first_old = timed(lambda: first_pending_old(src, cfg, statuses))
    old_index = OldMinHashIndex() if mode == "minhash" else ExactIndex()  # the exact index's check is unchanged
    t_index_old, _ = timed(lambda: old_remember(old_index, ledger))
    t_count_new, store = timed(lambda: count_new(src, cfg, statuses))
    t_first_new, first_new = timed(lambda: next(iter(store.rows(lambda: iter(())))))
    assert (first_new.key, first_new.record) == (first_old.key, first_old.record) and len(store) == todo

    def new_index() -> Any:
        return MinHashIndex() if mode == "minhash" else ExactIndex()

    for p in index_paths(ledger):
        p.unlink(missing_ok=True)
    rebuild = SeenBook(ledger, RUN_ID, new_index())
    t_rebuild, loaded = timed(rebuild.load)
    rebuild.close()
    assert loaded.rebuilt and len(rebuild.index) == len(old_index), (len(rebuild.index), len(old_index))
    saved = SeenBook(ledger, RUN_ID, new_index())
    t_saved, loaded = timed(saved.load)
    saved.close()
    assert loaded.saved == len(old_index) and not loaded.rebuilt
    before = t_scan + t_count_old + t_index_old + t_first_old
    return {"dedup": mode, "texts_indexed": len(old_index), "rows_to_do": todo,
            "read_ledger_s": t_scan, "count_and_key_s": {"before": t_count_old, "now": t_count_new},
            "index_s": {"before": t_index_old, "now_saved": t_saved, "now_rebuilt_in_bulk": t_rebuild},
            "to_first_row_s": {"before": t_first_old, "now": t_first_new},
            "total_s": {"before": before, "now": t_scan + t_count_new + t_saved + t_first_new,
                        "now_without_saved_index": t_scan + t_count_new + t_rebuild + t_first_new}}


def minhash_speed(sizes: list[int], probes: int) -> list[dict[str, Any]]:
    """check + add, us a text, with ``size`` texts indexed: before, now (filled one by one), now (loaded in bulk)."""
    texts = Texts(7)
    old, new = OldMinHashIndex(), MinHashIndex()
    fill: list[str] = []
    out = []
    for size in sorted(sizes):
        more = [texts() for _ in range(size - len(fill))]
        for t in more:
            old.check(t)
            new.check(t)
        fill += more
        bulk = MinHashIndex()
        bulk.extend(*bulk.encode(fill))
        batch = [texts() for _ in range(probes)]
        row: dict[str, Any] = {"indexed": size}
        for name, index in (("before", old), ("now", new), ("now_bulk_loaded", bulk)):
            # on copies of the decisions: every side sees the same batch against the same texts
            t, decisions = timed(lambda index=index: [index.check(t) for t in batch])
            row[name + "_us"] = t / probes * 1e6
            row.setdefault("decisions", decisions)
            assert decisions == row["decisions"], name
        fill += [t for t, d in zip(batch, row.pop("decisions")) if d is None]
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="done rows in the input and records in the ledger")
    ap.add_argument("--items", type=int, default=3, help="new instructions a record holds")
    ap.add_argument("--sizes", default="1000,10000,100000", help="texts indexed for the MinHash figures (capped at rows x items)")
    ap.add_argument("--probes", type=int, default=2000, help="texts checked and added at each size")
    ap.add_argument("--dedup", choices=("minhash", "exact", "both"), default="both")
    ap.add_argument("--work", type=Path, default=None, help="folder for the synthetic files (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "scale.json")
    args = ap.parse_args()
    load0 = os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="localaug-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = JobConfig("expand", default_sampling(None), "instruction", None, args.items, "bench", dedup="minhash")
    try:
        t_build, (src, ledger, new) = timed(lambda: build(work, args.rows, args.items, cfg))
        print(f"built {args.rows} + {new} input rows and {args.rows} records x {args.items} items in {t_build:.1f} s "
              f"({src.stat().st_size >> 20} MiB input, {ledger.stat().st_size >> 20} MiB ledger)", flush=True)
        modes = ["minhash", "exact"] if args.dedup == "both" else [args.dedup]
        stages = []
        for mode in modes:
            stages.append(resume(args, src, ledger, cfg, mode))
            print(f"resume ({mode}) measured", flush=True)
        cap = args.rows * args.items
        sizes = sorted({min(int(s), cap) for s in args.sizes.split(",")})
        speed = minhash_speed(sizes, args.probes)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {"rows": args.rows, "items": args.items, "new_rows": new, "resume": stages, "minhash": speed,
              "loadavg_start": load0, "loadavg_end": os.getloadavg(), "cpu": platform.processor() or platform.machine(),
              "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))


def report(r: dict[str, Any]) -> str:
    lines = [f"## {r['rows']} rows x {r['items']} items, {r['new_rows']} new rows; load average "
             f"{' '.join(f'{x:.2f}' for x in r['loadavg_start'])} at the start, "
             f"{' '.join(f'{x:.2f}' for x in r['loadavg_end'])} at the end", ""]
    for s in r["resume"]:
        c, ix, f, t = s["count_and_key_s"], s["index_s"], s["to_first_row_s"], s["total_s"]
        lines += [f"### resume to the first new row, --dedup {s['dedup']} ({s['texts_indexed']} texts indexed)", "",
                  "| stage | before | now |", "|---|---|---|",
                  f"| read the ledger (same code) | {s['read_ledger_s']:.2f} s | {s['read_ledger_s']:.2f} s |",
                  f"| input read + key: one pass | {c['before']:.2f} s | {c['now']:.2f} s |",
                  f"| passes over the input before the first new row | 2 | 1 |",
                  f"| duplicate index | {ix['before']:.2f} s (checked text by text) | {ix['now_saved']:.2f} s saved "
                  f"({ix['now_rebuilt_in_bulk']:.2f} s rebuilt in bulk) |",
                  f"| to the first row to do | {f['before']:.2f} s (second pass) | {f['now'] * 1e3:.1f} ms (its place) |",
                  f"| **total** | **{t['before']:.1f} s** | **{t['now']:.1f} s** ({t['now_without_saved_index']:.1f} s "
                  "without a saved index) |", ""]
    lines += ["### MinHash check + add, us a text", "", "| texts indexed | before | now | now, loaded in bulk |", "|---|---|---|---|"]
    lines += [f"| {m['indexed']} | {m['before_us']:.0f} | {m['now_us']:.0f} | {m['now_bulk_loaded_us']:.0f} |" for m in r["minhash"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
