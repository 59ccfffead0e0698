"""``localaug report``: a finished job's records -> figures (PNG files) and one HTML page.

The 2-D map is t-SNE (scikit-learn, PCA initialisation, fixed ``seed``): it keeps neighbourhoods,
which is what "the new instructions cover more ground" is about, it is deterministic with a seed,
and it needs no compiled extra (UMAP pulls numba). Texts are embedded with a GGUF through
llama.cpp's own embedding mode (``runtime.embed``): the job's model by default, or ``embed_model``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from localaug.augment.filters import DEFAULT_ROUGE_L, REASONS
from localaug.augment.resolve import resolve_model
from localaug.core.errors import UsageError, opt
from localaug.core.files import write_json_atomic
from localaug.report import metrics
from localaug.report.records import Collected, collect
from localaug.runtime.embed import embed
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


def need_extra() -> None:
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("matplotlib", "sklearn")):
        raise UsageError("localaug report draws with matplotlib and scikit-learn: pip install 'localaug[report]'")


def project(vectors: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D points: t-SNE, or PCA when there are too few texts for t-SNE's neighbourhoods."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2)), "none (one text)"
    if n < 12:
        return PCA(n_components=2, random_state=seed).fit_transform(vectors), "PCA (fewer than 12 texts)"
    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed, max_iter=750)
    return tsne.fit_transform(vectors), "t-SNE"


def make_report(output: str | os.PathLike[str], html_path: str | os.PathLike[str] | None = None,
                embed_model: str | os.PathLike[str] | None = None, *, max_rows: int = 2000, seed: int = 0,
                threads: int | None = None, judge: str | os.PathLike[str] | None = None) -> Report:
    """Build the report of ``output``; returns where it went and the figures it holds."""
    from localaug.report import figures, page

    need_extra()
    data = collect(output, max_rows, seed)
    model = embed_model or data.model
    if not model:
        raise UsageError(f"the job's manifest names no model: give {opt('embed_model')} (any GGUF)")
    try:
        path, _ = resolve_model(model)
    except UsageError as e:
        raise UsageError(f"{e} (the texts are embedded with the job's model; give {opt('embed_model')})") from None
    html = Path(html_path) if html_path else Path(str(data.path) + ".report.html")
    fig_dir = html.with_suffix("").with_name(html.with_suffix("").name + "_figures")
    sources, outputs = data.sources, data.outputs
    with Engine(path, EngineOptions(threads=threads), context=False) as engine:
        vecs = embed(engine, [*sources, *outputs])
        tok_src = [len(engine.tokenize(t, special=False)) for t in sources]
        tok_new = [len(engine.tokenize(t, special=False)) for t in outputs]
    src_vecs, new_vecs = vecs[:len(sources)], vecs[len(sources):]
    points, method = project(vecs, seed)
    nn = metrics.nearest_rouge(outputs, [*sources, *outputs], seed)
    diversity = metrics.summary(sources, outputs, src_vecs, new_vecs, nn)
    reasons = data.counts.get("rejected_by_reason") or {}
    pngs = {
        "map": figures.diversity_map(points, [False] * len(sources) + [True] * len(outputs), f"{method} of sources and new texts"),
        "lengths-characters": figures.lengths([len(t) for t in sources], [len(t) for t in outputs], "characters"),
        "lengths-tokens": figures.lengths(tok_src, tok_new, "tokens"),
        "rejections": figures.rejections(reasons),
        "nearest-rouge-l": figures.nearest_rouge(nn, DEFAULT_ROUGE_L),
    }
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, png in pngs.items():
        files[name] = fig_dir / f"{name}.png"
        files[name].write_bytes(png)
    verdicts = json.loads(Path(judge).read_text(encoding="utf-8")) if judge else None
    report = Report(html, files, data, diversity, method, str(path), verdicts)
    if data.sampled:
        report.notes.append(f"{len(data.rows)} of {data.total_rows} rows, sampled with seed {seed}.")
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(_page(report, pngs, page), encoding="utf-8")
    write_json_atomic(html.with_suffix(".json"), {"diversity": diversity, "counts": data.counts, "projection": method,
                                                  "embed_model": str(path), "rows": len(data.rows),
                                                  "total_rows": data.total_rows, "figures": {k: str(v) for k, v in files.items()}})
    return report


def _page(r: Report, pngs: dict[str, bytes], page: Any) -> str:
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
    if r.judge:
        j = r.judge
        sections.append((f"Judge: {j.get('aspect', '')}", page.table(
            ["A", "B", "wins (B)", "ties", "losses (B)", "n", "B's score", "95% interval"],
            [[j.get("a", ""), j.get("b", ""), j["wins"], j["ties"], j["losses"], j["n"], j["score"],
              f"{j['interval'][0]:.3f} – {j['interval'][1]:.3f}"]])))
    return page.page(f"localaug report: {d.path.name}", sections)
