"""The report's figures as PNG bytes (matplotlib, headless). Each takes plain data."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

SOURCE, NEW = "#4C72B0", "#DD8452"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def diversity_map(points: np.ndarray, is_new: Sequence[bool], title: str) -> bytes:
    """Sources and new texts on the 2-D projection."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    mask = np.asarray(is_new, dtype=bool)
    ax.scatter(points[~mask, 0], points[~mask, 1], s=14, c=SOURCE, alpha=0.8, label=f"sources ({int((~mask).sum())})")
    ax.scatter(points[mask, 0], points[mask, 1], s=14, c=NEW, alpha=0.6, label=f"new ({int(mask.sum())})")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best")
    return _png(fig)


def lengths(before: Sequence[int], after: Sequence[int], unit: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    top = max([*before, *after, 1])
    bins = np.linspace(0, top, 30)
    ax.hist(before, bins=bins, alpha=0.6, color=SOURCE, label=f"sources (median {np.median(before) if before else 0:.0f})")
    ax.hist(after, bins=bins, alpha=0.6, color=NEW, label=f"new (median {np.median(after) if after else 0:.0f})")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel("texts")
    ax.legend()
    return _png(fig)


def rejections(reasons: dict[str, int]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.4 * max(len(reasons), 1)))
    items = sorted(reasons.items(), key=lambda kv: kv[1]) or [("none", 0)]
    ax.barh([k for k, _ in items], [v for _, v in items], color=NEW)
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v}", va="center")
    ax.set_xlabel("samples rejected")
    return _png(fig)


def nearest_rouge(values: Sequence[float], threshold: float) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(values, bins=np.linspace(0, 1, 21), color=NEW, alpha=0.8)
    ax.axvline(threshold, color="black", linestyle="--", label=f"near duplicate ≥ {threshold}")
    ax.set_xlabel("ROUGE-L to the nearest other text")
    ax.set_ylabel("new texts")
    ax.legend()
    return _png(fig)


def grades(distribution: dict[str, int]) -> bytes:
    """How many answers the judge rated 1, 2, ... 10."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ratings, counts = list(distribution), list(distribution.values())
    ax.bar(ratings, counts, color=NEW)
    for x, v in zip(ratings, counts):
        if v:
            ax.text(x, v, f"{v}", ha="center", va="bottom")
    ax.set_xlabel("rating (1-10)")
    ax.set_ylabel("answers")
    return _png(fig)
