"""``localaug report``: a finished job's records -> figures (PNG files) and one HTML page.

The 2-D map is t-SNE (openTSNE: Barnes-Hut or FFT-interpolated gradients, PCA initialisation,
fixed ``seed``): it keeps neighbourhoods, which is what "the new instructions cover more ground" is
about, it is deterministic with a seed, and it needs no numba (UMAP does). Texts are embedded with
a GGUF through llama.cpp's own embedding mode (``runtime.embed``): the job's model by default, or
``embed_model``. The heavy libraries (matplotlib, openTSNE, scikit-learn, rapidfuzz) are imported
when their phase starts, so a usage error comes back at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from localaug.augment.filters import DEFAULT_ROUGE_L, REASONS
from localaug.augment.resolve import resolve_model
from localaug.core.errors import UsageError, opt
from localaug.core.files import read_bounded, refuse_overwriting_inputs, write_atomic, write_json_atomic
from localaug.core.progress import PhaseProgress, Phases
from localaug.core.install import extra_hint
from localaug.jobs.grade import GRADES, distribution, judged_lines, ledger_path
from localaug.report import metrics
from localaug.report.judge import table_rows
from localaug.report.records import Collected, collect
from localaug.runtime.embed import embed_texts
from localaug.runtime.engine import Engine, EngineOptions

SAMPLE_ROWS = 6  # rows shown source -> new in the page


@dataclass
class Report:
    html: Path
    figures: dict[str, Path]
    collected: Collected
    diversity: dict[str, dict[str, float]]
    projection: str
    embed_model: str
    judge: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    grades: dict[str, Any] | None = None  # the judge's grades of the answers, when the output has them


def need_extra() -> None:
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("matplotlib", "sklearn", "openTSNE", "rapidfuzz")):
        raise UsageError(f"localaug report draws with matplotlib, scikit-learn, openTSNE and rapidfuzz: {extra_hint('report')}")


def project(vectors: np.ndarray, seed: int, threads: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, str]:
    """2-D points: t-SNE (openTSNE: its Barnes-Hut or FFT gradients, 250 early-exaggeration and 500
    more iterations, PCA start, fixed seed), or PCA when there are too few texts for t-SNE's
    neighbourhoods. ``progress(iterations done, all)`` every 25 iterations. One thread unless
    ``threads`` says more: openTSNE's threads wait by spinning, and on a busy machine two of them
    took longer than one (321 s against 185 s for 5,800 points at load 13 on 2 cores)."""
    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2)), "none (one text)"
    if n < 12:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors), "PCA (fewer than 12 texts)"
    from openTSNE import TSNE

    total, every, done = TSNE_ITERATIONS, 25, [0]

    def tick(*_: Any) -> bool:
        done[0] = min(total, done[0] + every)
        if progress:
            progress(done[0], total)
        return False  # go on

    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), initialization="pca", random_state=seed,
                n_jobs=threads or 1, early_exaggeration_iter=250, n_iter=total - 250,
                callbacks=tick, callbacks_every_iters=every)
    return np.asarray(tsne.fit(np.asarray(vectors, dtype=np.float64))), "t-SNE"


TSNE_ITERATIONS = 750  # as many as scikit-learn's t-SNE made before (max_iter 750)


def make_report(output: str | os.PathLike[str], html_path: str | os.PathLike[str] | None = None,
                embed_model: str | os.PathLike[str] | None = None, *, max_rows: int = 2000, seed: int = 0,
                threads: int | None = None, judge: str | os.PathLike[str] | None = None,
                progress: PhaseProgress | None = None) -> Report:
    """Build the report of ``output``; returns where it went and the figures it holds. ``progress``
    hears each phase: reading, embeddings, ROUGE-L neighbours, map, charts, page (None: the display
    a command installed, ``core.progress.current()``)."""
    shown = Phases(PHASE_UNITS) if progress is None else None
    try:
        return _make_report(output, html_path, embed_model, max_rows, seed, threads, judge, progress or shown)  # type: ignore[arg-type]
    finally:
        if shown is not None:
            shown.close()


PHASE_UNITS = {"reading": "rows", "embeddings": "texts", "ROUGE-L neighbours": "texts", "map": "iterations",
               "charts": "figures", "page": "files"}


def _make_report(output: str | os.PathLike[str], html_path: str | os.PathLike[str] | None,
                 embed_model: str | os.PathLike[str] | None, max_rows: int, seed: int, threads: int | None,
                 judge: str | os.PathLike[str] | None, progress: PhaseProgress) -> Report:
    need_extra()
    progress("reading", 0, 1)
    data = collect(output, max_rows, seed)
    progress("reading", len(data.rows), len(data.rows))
    model = embed_model or data.model
    if not model:
        raise UsageError(f"the job's manifest names no model: give {opt('embed_model')} (any GGUF)")
    try:
        path, _ = resolve_model(model)
    except UsageError as e:
        raise UsageError(f"{e} (the texts are embedded with the job's model; give {opt('embed_model')})") from None
    html = Path(html_path) if html_path else Path(str(data.path) + ".report.html")
    fig_dir = html.with_suffix("").with_name(html.with_suffix("").name + "_figures")
    summary_path = html.with_suffix(".json")
    written = [html, summary_path, *(fig_dir / f"{name}.png" for name in FIGURES)]
    read = [*_files(Path(output)), *_files(data.path), *data.read, path, *([Path(judge)] if judge else []),
            ledger_path(Path(output), GRADES)]
    if html.resolve() == summary_path.resolve():
        raise UsageError(f"{opt('html')} {html} would be both the page and its JSON summary: give a name ending in .html")
    refuse_overwriting_inputs(written, read, "html")
    if fig_dir.exists() and not fig_dir.is_dir():
        raise UsageError(f"{fig_dir} (where the figures go) is a file: move it, or give another {opt('html')}")
    verdicts = read_judge_summary(Path(judge)) if judge else None
    graded = read_grades(Path(output))
    sources, outputs = data.sources, data.outputs
    texts = [*sources, *outputs]
    progress("embeddings", 0, len(texts))
    with Engine(path, EngineOptions(threads=threads), context=False) as engine:
        embedded = embed_texts(engine, texts, progress=lambda k: progress("embeddings", k, len(texts)))
    vecs, tok = embedded.vectors, embedded.tokens
    progress("ROUGE-L neighbours", 0, len(outputs))
    nn = metrics.nearest_rouge(outputs, texts, seed, threads=threads,
                               progress=lambda k: progress("ROUGE-L neighbours", k, len(outputs)))
    progress("ROUGE-L neighbours", len(outputs), len(outputs))
    progress("map", 0, TSNE_ITERATIONS)
    points, method = project(vecs, seed, threads, lambda k, total: progress("map", k, total))
    progress("map", TSNE_ITERATIONS, TSNE_ITERATIONS)
    diversity = metrics.summary(sources, outputs, vecs[:len(sources)], vecs[len(sources):], nn)
    pngs = _figures(data, points, method, tok, nn, graded, progress)
    html.parent.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, png in pngs.items():
        files[name] = fig_dir / f"{name}.png"
        write_atomic(files[name], png, "html")
    report = Report(html, files, data, diversity, method, str(path), verdicts, grades=graded)
    if data.sampled:
        report.notes.append(f"{len(data.rows)} of {data.total_rows} rows, sampled with seed {seed}.")
    if data.skipped.count:
        report.notes.append(f"{data.skipped.count} lines of {data.path.name} are not job records and were left out "
                            f"({data.skipped.first}).")
    progress("page", 0, 1)
    write_atomic(html, _page(report, pngs), "html")
    # strict JSON: a metric that is undefined here (a cosine over one text) is null
    write_json_atomic(summary_path, {"diversity": diversity, "counts": data.counts, "projection": method,
                                     "embed_model": str(path), "rows": len(data.rows), "total_rows": data.total_rows,
                                     "figures": {k: str(v) for k, v in files.items()}, "grades": graded}, "html")
    progress("page", 1, 1)
    return report


def _figures(data: Collected, points: np.ndarray, method: str, tok: list[int], nn: list[float],
             graded: dict[str, Any] | None, progress: PhaseProgress) -> dict[str, bytes]:
    """The PNGs, by name (matplotlib is imported here, when the first one is drawn)."""
    from localaug.report import figures

    sources, outputs = data.sources, data.outputs
    ns = len(sources)
    draw: dict[str, Callable[[], bytes]] = {
        "map": lambda: figures.diversity_map(points, [False] * ns + [True] * len(outputs), f"{method} of sources and new texts"),
        "lengths-characters": lambda: figures.lengths([len(t) for t in sources], [len(t) for t in outputs], "characters"),
        "lengths-tokens": lambda: figures.lengths(tok[:ns], tok[ns:], "tokens"),
        "rejections": lambda: figures.rejections(data.counts.get("rejected_by_reason") or {}),
        "nearest-rouge-l": lambda: figures.nearest_rouge(nn, DEFAULT_ROUGE_L),
    }
    if graded is not None:
        draw["grades"] = lambda: figures.grades(graded["distribution"])
    pngs = {}
    for k, (name, fn) in enumerate(draw.items()):
        progress("charts", k, len(draw))
        pngs[name] = fn()
    progress("charts", len(draw), len(draw))
    return pngs


FIGURES = ("map", "lengths-characters", "lengths-tokens", "rejections", "nearest-rouge-l", "grades")


def read_grades(output: Path) -> dict[str, Any] | None:
    """The judge's grades of an output's answers (``localaug grade``, or ``run --judge``): how many
    answers got each rating 1..10, how many replies gave none, the mean; None when there are none."""
    ledger = ledger_path(output, GRADES)
    if not ledger.is_file():
        return None
    scores: list[float | None] = [line["score"] for line in judged_lines(ledger)]
    rated = [float(s) for s in scores if s is not None]
    return {"ledger": str(ledger), "graded": len(scores), "no_rating": len(scores) - len(rated),
            "mean": sum(rated) / len(rated) if rated else None, "distribution": distribution(rated)}
MAX_SUMMARY_BYTES = 1 << 20


def _files(path: Path) -> list[Path]:
    """``path``, or the files in it when it is a folder."""
    return [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]


def read_judge_summary(path: Path) -> dict[str, Any]:
    """A ``localaug judge`` summary (``….summary.json``), checked field by field."""
    expected = ("a localaug judge summary (….summary.json: wins, ties, losses, n, score and interval)")
    try:
        data = json.loads(read_bounded(path, MAX_SUMMARY_BYTES))
    except FileNotFoundError:
        raise UsageError(f"{opt('judge')} {path} does not exist: give {expected}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"{opt('judge')} {path} is not {expected} ({type(e).__name__}: {e})") from None
    counts = ("wins", "ties", "losses", "n")
    if not (isinstance(data, dict) and all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) for k in counts)):
        raise UsageError(f"{opt('judge')} {path} is not {expected}")
    interval = data.get("interval")
    if not (isinstance(interval, list) and len(interval) == 2 and all(_number(v) for v in interval)):
        interval = [None, None]  # undefined (no pair judged): shown as —
    score = data.get("score") if _number(data.get("score")) else None
    return {**data, "interval": interval, "score": score, "a": str(data.get("a", "")), "b": str(data.get("b", "")),
            "aspect": str(data.get("aspect", ""))}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _page(r: Report, pngs: dict[str, bytes]) -> str:
    from localaug.report import page

    d, c = r.collected, r.collected.counts
    sections = [("Summary", page.paragraph(
        f"{d.task} output {d.path.name}: {c['rows']} rows (ok {c['ok']}, filtered {c['filtered']}, failed {c['failed']}), "
        f"{c['items']} new texts. Embeddings: {Path(r.embed_model).name} (llama.cpp, mean pooling). "
        f"Map: {r.projection}.") + "".join(page.paragraph(n, note=True) for n in r.notes))]
    sections.append(("Diversity", page.table(["", "sources", "new"], [
        [k, r.diversity["sources"].get(k, float("nan")), v] for k, v in r.diversity["new"].items()])))
    sections.append(("Where the new texts are", page.figure(pngs["map"], "2-D map of sources and new texts", "map.png")))
    sections.append(("Lengths", page.figure(pngs["lengths-characters"], "lengths in characters", "lengths-characters.png")
                     + page.figure(pngs["lengths-tokens"], "lengths in tokens", "lengths-tokens.png")))
    reasons = c.get("rejected_by_reason") or {}
    sections.append(("Rejected samples", page.figure(pngs["rejections"], "rejections by reason", "rejections.png")
                     + page.table(["reason", "samples", "meaning"], [[k, v, REASONS.get(k, "")] for k, v in sorted(reasons.items())])))
    sections.append(("Nearest neighbour", page.figure(pngs["nearest-rouge-l"], "ROUGE-L to the nearest neighbour",
                                                      "nearest-rouge-l.png")))
    shown = [(s, new) for s, new in d.rows if new][:SAMPLE_ROWS]
    sections.append(("Samples", page.table(["source", "new"], [[s, "\n\n".join(new)] for s, new in shown])))
    if r.grades:
        g = r.grades
        mean = "—" if g["mean"] is None else f"{g['mean']:.2f}"
        sections.append(("Grades", page.paragraph(
            f"{g['graded']} answers graded 1–10 by the judge (MT-Bench's single-answer prompt), mean {mean}; "
            f"{g['no_rating']} replies gave no rating.") + page.figure(pngs["grades"], "answers by rating", "grades.png")
            + page.table(["rating", "answers"], [[k, v] for k, v in g["distribution"].items()])))
    if r.judge:  # the judge's own table (report.judge.table_rows), with the two files it compared
        j = r.judge
        sections.append((f"Judge: {j.get('aspect', '')}", page.table(
            ["", ""], [["A", j["a"]], ["B", j["b"]], *map(list, table_rows(j))])))
    return page.page(f"localaug report: {d.path.name}", sections)
