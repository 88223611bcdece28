"""Image -> report retrieval: rank candidate reports for each image by cosine similarity.

The CXR-RePaiR setting: an image embedding queries a corpus of report embeddings. Two scores:

* **Recall@K** (paired): the fraction of images whose own report (``paired[i]``, the report's row
  index; ``-1`` = no paired report in the corpus) is among the top K. Images without a pair are
  left out of the mean and counted. With K >= the number of reports R@K is 1 by construction.
* **Precision@K** (label agreement): (top-K reports whose label vector agrees with the image's)
  / K, the denominator staying K when K exceeds the number of reports, as in
  :mod:`convirt.evaluation.retrieval`. Labels are 0/1 per finding (e.g. CheXpert labels of the
  image's study and of each report); **blank (NaN) and uncertain (-1) count as 0** (negative),
  so agreement is on positive findings only. ``agreement="exact"``: identical 0/1 vectors over
  all label columns. ``agreement="any"``: at least one shared positive label, **and an image
  with no positive label agrees with a report with no positive label** (and only with those),
  so normal studies can retrieve normal reports.

Ranking and ties are those of :func:`convirt.evaluation.retrieval.ranked_topk` (decreasing
float64 cosine, then lower report index), so results do not depend on the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convirt.errors import ConfigError, DataError
from convirt.evaluation.metrics import as_numpy
from convirt.evaluation.retrieval import _check_ks, _normalise, ranked_topk

AGREEMENTS = ("exact", "any")


def _binary_labels(labels: Any, name: str) -> np.ndarray:
    """0/1 int matrix; NaN and -1 (uncertain) become 0; anything else but 0/1 is an error."""
    y = as_numpy(labels)
    try:
        y = y.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} must be numeric (0/1, -1 or blank), got dtype {y.dtype}") from err
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise DataError(f"{name} must be a (n, n_labels) matrix, got shape {y.shape}")
    y = np.where(np.isnan(y) | (y == -1), 0.0, y)
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"{name} must hold 0, 1, -1 (uncertain) or blank (NaN) only")
    return y.astype(np.int64)


def _agrees(a: np.ndarray, b: np.ndarray, agreement: str) -> np.ndarray:
    """Element-wise agreement of label rows ``a[..., L]`` and ``b[..., L]`` (broadcasting)."""
    if agreement == "exact":
        return (a == b).all(axis=-1)
    shared = ((a & b) == 1).any(axis=-1)
    return shared | ((a.sum(axis=-1) == 0) & (b.sum(axis=-1) == 0))


def _n_relevant(img_y: np.ndarray, rep_y: np.ndarray, agreement: str) -> np.ndarray:
    """Per image, how many reports agree with it; computed on distinct label vectors (few) not all pairs."""
    u_img, inv = np.unique(img_y, axis=0, return_inverse=True)
    u_rep, counts = np.unique(rep_y, axis=0, return_counts=True)
    per_pattern = (_agrees(u_img[:, None, :], u_rep[None, :, :], agreement) * counts[None, :]).sum(axis=1)
    return per_pattern[np.asarray(inv).reshape(-1)]


def image_to_report_retrieval(image_emb: Any, report_emb: Any, ks: Sequence[int] = (1, 5, 10), paired: Any = None,
                              image_labels: Any = None, report_labels: Any = None, agreement: str = "exact",
                              backend: str = "auto", return_topk: bool = False, scores: Any = None) -> dict:
    """Recall@K (with ``paired``) and Precision@K by label agreement (with both label matrices).

    ``paired[i]``: row of image i's own report in ``report_emb``, or -1 if it has none.
    ``image_labels`` ``(n_images, L)`` and ``report_labels`` ``(n_reports, L)``: 0/1 with -1/NaN
    read as 0. Returns a JSON-serialisable dict with ``R@K`` / ``P@K`` means (``None`` when not
    computed), ``per_query`` lists (R@K is ``None`` for unpaired images), ``n_images``,
    ``n_reports``, ``n_recall_queries``, ``n_unpaired_images``, ``n_queries_without_relevant``,
    ``agreement``, ``notes`` and, with ``return_topk``, the ranked report rows per image.
    ``scores`` ``(n_images, n_reports)``, when given, ranks instead of the embeddings' cosine (GLoRIA's
    global + local similarity, :mod:`convirt.evaluation.local_similarity`); ties go to the lower index.
    """
    ks = _check_ks(ks)
    if agreement not in AGREEMENTS:
        raise ConfigError(f"agreement must be one of {AGREEMENTS}, got {agreement!r}")
    if (image_labels is None) != (report_labels is None):
        raise ConfigError("Precision@K needs both image_labels and report_labels (or neither)")
    if paired is None and image_labels is None:
        raise ConfigError("nothing to compute: give paired (Recall@K) and/or image_labels + report_labels "
                          "(Precision@K)")
    q, c = _normalise(image_emb, "image_emb"), _normalise(report_emb, "report_emb")
    n_i, n_r = len(q), len(c)
    pair = None
    if paired is not None:
        p = as_numpy(paired)
        if p.shape != (n_i,) or not np.issubdtype(p.dtype, np.integer):
            raise DataError(f"paired must be {n_i} integer report indices (-1 = none), got {p.dtype} {p.shape}")
        if (p < -1).any() or (p >= n_r).any():
            raise DataError(f"paired holds indices outside [-1, {n_r})")
        pair = p.astype(np.int64)
    img_y = rep_y = None
    if image_labels is not None:
        img_y, rep_y = _binary_labels(image_labels, "image_labels"), _binary_labels(report_labels, "report_labels")
        if len(img_y) != n_i or len(rep_y) != n_r:
            raise DataError(f"{len(img_y)} image label rows for {n_i} images, {len(rep_y)} report label rows "
                            f"for {n_r} reports")
        if img_y.shape[1] != rep_y.shape[1]:
            raise DataError(f"image_labels have {img_y.shape[1]} columns, report_labels {rep_y.shape[1]}")

    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (n_i, n_r) or not np.isfinite(scores).all():
            raise DataError(f"scores must be finite and ({n_i}, {n_r}), got shape {scores.shape}")
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(max(ks), n_r)]
    else:
        top = ranked_topk(q, c, max(ks), backend)  # (n_i, min(max K, n_r))
    out: dict[str, Any] = {"ks": ks, "n_images": n_i, "n_reports": n_r, "agreement": agreement}
    per_query: dict[str, list] = {}
    notes: list[str] = []
    if pair is not None:
        has = pair >= 0
        rank_hit = top == pair[:, None]  # at most one True per row
        for k in ks:
            found = rank_hit[:, :k].any(axis=1)
            out[f"R@{k}"] = float(found[has].mean()) if has.any() else None
            per_query[f"R@{k}"] = [bool(f) if h else None for f, h in zip(found, has)]
        out["n_recall_queries"], out["n_unpaired_images"] = int(has.sum()), int((~has).sum())
        if (~has).any():
            notes.append(f"{int((~has).sum())} image(s) have no paired report (-1) and are left out of R@K")
        if not has.any():
            notes.append("no image has a paired report: R@K is undefined")
    else:
        out.update({f"R@{k}": None for k in ks}, n_recall_queries=0, n_unpaired_images=None)
    if img_y is not None:
        hits = _agrees(img_y[:, None, :], rep_y[top], agreement).astype(np.int64)  # (n_i, n_ranked)
        for k in ks:
            prec = hits[:, :k].sum(axis=1) / k
            out[f"P@{k}"] = float(prec.mean())
            per_query[f"P@{k}"] = prec.tolist()
        out["n_queries_without_relevant"] = int((_n_relevant(img_y, rep_y, agreement) == 0).sum())
        notes.append("labels: blank (NaN) and uncertain (-1) read as negative (0)")
        if agreement == "any":
            notes.append("agreement 'any': an image without positive labels agrees only with reports without "
                         "positive labels")
        big = [k for k in ks if k > n_r]
        if big:
            notes.append(f"K={big} exceed the {n_r} reports: P@K still divides by K")
    else:
        out.update({f"P@{k}": None for k in ks}, n_queries_without_relevant=None)
    out["per_query"] = per_query
    out["notes"] = notes
    if return_topk:
        out["topk"] = top.tolist()
    return out
