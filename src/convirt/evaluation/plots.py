"""Figures for evaluation results: label-fraction curves, t-SNE of embeddings, retrieval P@K bars.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed, safe in
threads and on headless servers); files are written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convirt.atomic import atomic_path
from convirt.errors import DataError
from convirt.evaluation.metrics import as_numpy


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    return path


def plot_label_fraction_curves(summary: Mapping[str, Mapping[str, Any]], path: str | Path,
                               metric: str = "macro_auroc", title: str | None = None) -> Path:
    """``metric`` vs label fraction (log x axis), one line per method, error bars = std over seeds.

    ``summary`` maps method name -> the ``summary`` of :func:`linear_probe_over_fractions`.
    """
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    all_fractions: set[float] = set()
    for method, per_fraction in summary.items():
        rows = sorted((float(f), v[metric]) for f, v in per_fraction.items() if v[metric]["mean"] is not None)
        if not rows:
            continue
        x = [f for f, _ in rows]
        y = [m["mean"] for _, m in rows]
        err = [m["std"] or 0.0 for _, m in rows]
        all_fractions.update(x)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=method)
    if not all_fractions:
        raise DataError(f"no {metric} values to plot")
    ax.set_xscale("log")
    ticks = sorted(all_fractions)
    ax.set_xticks(ticks, [f"{100 * f:g}%" for f in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fraction of training labels (log scale)")
    ax.set_ylabel(metric.replace("_", " ").replace("auroc", "AUROC").replace("auprc", "AUPRC"))
    ax.set_title(title or "Linear probe: mean ± std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_tsne(emb: Any, labels: Any, names: Sequence[str], path: str | Path, seed: int = 0,
              title: str | None = None, perplexity: float = 30.0) -> Path:
    """2-D t-SNE of embeddings coloured by category (``labels``: index per point, -1 = no category)."""
    from sklearn.manifold import TSNE

    x = as_numpy(emb).astype(np.float32)
    lab = as_numpy(labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(lab) or len(x) < 3:
        raise DataError(f"t-SNE needs (n >= 3, dim) embeddings and n labels, got {x.shape} and {lab.shape}")
    perplexity = min(perplexity, (len(x) - 1) / 3)  # t-SNE requires perplexity < n
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    for j in sorted(set(lab.tolist())):
        sel = lab == j
        name = names[j] if 0 <= j < len(names) else "other"
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, label=f"{name} ({int(sel.sum())})",
                   color="lightgray" if j < 0 else None)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(x)} embeddings (seed {seed})")
    ax.legend(markerscale=2, fontsize=8, loc="best")
    return _save(fig, path)


def plot_bar_precision(results: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Grouped bars of P@K per category (and the mean), one panel per K, one bar colour per method.

    ``results``: method name -> output of :func:`text_to_image_precision` /
    :func:`image_to_image_precision`, or one such output on its own.
    """
    if "per_category" in results:
        results = {"": results}
    if not results:
        raise DataError("no retrieval results to plot")
    first = next(iter(results.values()))
    ks, categories = first["ks"], list(first["per_category"])
    groups = categories + ["mean"]
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) + 2), 2.6 * len(ks)))
    axes = fig.subplots(len(ks), 1, squeeze=False)[:, 0]
    width = 0.8 / len(results)
    for ax, k in zip(axes, ks):
        for i, (method, r) in enumerate(results.items()):
            vals = [r["per_category"].get(c, {}).get(f"P@{k}", np.nan) for c in categories] + [r["mean"][f"P@{k}"]]
            ax.bar(np.arange(len(groups)) + (i - (len(results) - 1) / 2) * width, vals, width, label=method or None)
        ax.set_ylabel(f"P@{k}")
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.axvline(len(categories) - 0.5, color="gray", lw=0.8, ls=":")
        ax.grid(True, axis="y", alpha=0.3)
    if any(results):
        axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title(title or "Retrieval precision@K per category")
    fig.tight_layout()
    return _save(fig, path)
