"""Figures for evaluation results: label-fraction curves, t-SNE / UMAP of embeddings, retrieval P@K
bars, retrieval galleries and saliency overlays.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed, safe in
threads and on headless servers); files are written atomically.
"""

from __future__ import annotations

import os
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
    return _scatter_by_category(xy, lab, names, path, title or f"t-SNE of {len(x)} embeddings (seed {seed})")


def plot_umap(emb: Any, labels: Any, names: Sequence[str], path: str | Path, seed: int = 0,
              title: str | None = None, n_neighbors: int = 15, min_dist: float = 0.1) -> Path | None:
    """2-D UMAP of embeddings coloured by category, like :func:`plot_tsne`; ``None`` without umap-learn.

    umap-learn is an optional extra (it pulls numba/llvmlite), so when it is not importable nothing
    is written and ``None`` is returned; callers fall back to t-SNE.
    """
    try:
        import umap
    except ImportError:
        return None
    x = as_numpy(emb).astype(np.float32)
    lab = as_numpy(labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(lab) or len(x) < 3:
        raise DataError(f"UMAP needs (n >= 3, dim) embeddings and n labels, got {x.shape} and {lab.shape}")
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(x) - 1)), min_dist=min_dist,
                        random_state=seed)
    xy = np.asarray(reducer.fit_transform(x))
    return _scatter_by_category(xy, lab, names, path, title or f"UMAP of {len(x)} embeddings (seed {seed})")


def _scatter_by_category(xy: np.ndarray, lab: np.ndarray, names: Sequence[str], path: str | Path,
                         title: str) -> Path:
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    for j in sorted(set(lab.tolist())):
        sel = lab == j
        name = names[j] if 0 <= j < len(names) else "other"
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, label=f"{name} ({int(sel.sum())})",
                   color="lightgray" if j < 0 else None)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
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


# ------------------------------------------------------------------------------------------ image grids
def _gray(item: Any, name: str, strict_range: bool) -> np.ndarray:
    """One image as a 2-D float array: a file path (via ``load_image``), or an ``(H, W)`` / ``(1, H, W)`` array."""
    if isinstance(item, (str, os.PathLike)):
        from convirt.data.images import load_image

        return load_image(item)
    a = as_numpy(item).astype(np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or min(a.shape) == 0:
        raise DataError(f"{name}: expected a 2-D grayscale image (H, W) or a file path, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{name}: image has NaN or infinite values")
    if strict_range and (a.min() < 0 or a.max() > 1):
        raise DataError(f"{name}: pixel values must be in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return a


def _image_list(images: Any) -> list:
    """A batch as a list of items: a sequence, or an array/tensor (B, H, W) / (B, 1, H, W)."""
    if isinstance(images, (str, os.PathLike)):
        raise DataError("expected a sequence of images, got a single path")
    if hasattr(images, "shape") and len(images.shape) in (3, 4):
        return [images[i] for i in range(images.shape[0])]
    return list(images)


def plot_retrieval_gallery(query_images: Any, candidate_images: Sequence[Any], relevant: Any, path: str | Path,
                           query_titles: Sequence[str] | None = None, max_queries: int = 8) -> Path:
    """One row per query: the query image, then its ranked candidates framed green (relevant) or red.

    Images are 2-D arrays in [0, 1] (or ``(1, H, W)``) or file paths read with
    :func:`convirt.data.images.load_image`. ``candidate_images[i]``: query i's top-K candidates in
    rank order; ``relevant[i][r]``: whether candidate r of query i is relevant. Only the first
    ``max_queries`` queries are drawn (the title says so).
    """
    if max_queries < 1:
        raise DataError(f"max_queries must be >= 1, got {max_queries}")
    queries = _image_list(query_images)
    cands = list(candidate_images)
    rel = [list(np.asarray(as_numpy(r)).reshape(-1)) for r in relevant]
    if not queries:
        raise DataError("no query images to plot")
    if len(cands) != len(queries) or len(rel) != len(queries):
        raise DataError(f"{len(queries)} queries but {len(cands)} candidate lists and {len(rel)} relevance rows")
    if query_titles is not None and len(query_titles) != len(queries):
        raise DataError(f"{len(query_titles)} query titles for {len(queries)} queries")
    n_rows = min(len(queries), max_queries)
    rows = []
    for i in range(n_rows):
        row = _image_list(cands[i])
        if len(row) != len(rel[i]):
            raise DataError(f"query {i}: {len(row)} candidate images but {len(rel[i])} relevance flags")
        if not all(v in (0, 1, True, False) for v in rel[i]):
            raise DataError(f"query {i}: relevance flags must be 0/1 or booleans")
        rows.append(([_gray(c, f"candidate {r} of query {i}", True) for r, c in enumerate(row)],
                     [bool(v) for v in rel[i]]))
    k = max(len(r[0]) for r in rows)
    if k == 0:
        raise DataError("no candidate images to plot")
    fig = Figure(figsize=(1.7 * (k + 1), 1.9 * n_rows))
    axes = fig.subplots(n_rows, k + 1, squeeze=False)
    for i, (imgs, flags) in enumerate(rows):
        ax = axes[i, 0]
        ax.imshow(_gray(queries[i], f"query {i}", True), cmap="gray", vmin=0, vmax=1)
        ax.set_title(str(query_titles[i]) if query_titles is not None else f"query {i}", fontsize=8, weight="bold")
        for r in range(k):
            ax = axes[i, r + 1]
            if r >= len(imgs):
                ax.axis("off")
                continue
            ax.imshow(imgs[r], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"#{r + 1}", fontsize=8)
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if flags[r] else "tab:red")
                spine.set_linewidth(4)
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
    shown = f" (first {n_rows} of {len(queries)} queries)" if n_rows < len(queries) else ""
    fig.suptitle(f"Top-{k} retrieved per query: green = relevant, red = not relevant{shown}", fontsize=9)
    return _save(fig, path)


def plot_saliency(images: Any, maps: Any, path: str | Path, titles: Sequence[str] | None = None,
                  alpha: float = 0.45, max_cols: int = 4) -> Path:
    """Each image (top) and its saliency map overlaid as a heatmap (below), ``max_cols`` pairs per row.

    ``images``: (B, H, W) / (B, 1, H, W) arrays or tensors, or a sequence of 2-D arrays / paths;
    each is min-max scaled for display, so network-normalised inputs are fine. ``maps``: (B, H, W)
    in [0, 1] (e.g. :func:`convirt.evaluation.saliency.grad_cam`), same H, W as the images.
    """
    imgs = _image_list(images)
    heat = _image_list(maps)
    if not imgs:
        raise DataError("no images to plot")
    if len(heat) != len(imgs):
        raise DataError(f"{len(imgs)} images but {len(heat)} saliency maps")
    if titles is not None and len(titles) != len(imgs):
        raise DataError(f"{len(titles)} titles for {len(imgs)} images")
    n_cols = min(len(imgs), max(1, max_cols))
    n_rows = -(-len(imgs) // n_cols)
    fig = Figure(figsize=(2.4 * n_cols, 4.6 * n_rows))
    axes = fig.subplots(2 * n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for b, (item, m) in enumerate(zip(imgs, heat)):
        img = _gray(item, f"image {b}", False)
        hm = _gray(m, f"saliency map {b}", True)
        if hm.shape != img.shape:
            raise DataError(f"image {b} is {img.shape} but its saliency map is {hm.shape}: pass the image the map "
                            "was computed on (after resizing/cropping)")
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        top, bottom = axes[2 * (b // n_cols), b % n_cols], axes[2 * (b // n_cols) + 1, b % n_cols]
        top.imshow(img, cmap="gray", vmin=0, vmax=1)
        top.set_title(str(titles[b]) if titles is not None else f"image {b}", fontsize=8)
        bottom.imshow(img, cmap="gray", vmin=0, vmax=1)
        bottom.imshow(hm, cmap="jet", vmin=0, vmax=1, alpha=alpha)
    return _save(fig, path)
