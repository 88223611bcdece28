"""Precision@K for image-to-image and text-to-image retrieval by cosine similarity.

Definitions (stated because papers differ):

* Similarity is the cosine: embeddings are L2-normalised here (a zero vector scores 0).
* Ranking is by decreasing similarity; **ties are broken by the lower candidate index first**
  (a stable sort), so results do not depend on the search backend or the thread count.
* P@K = (relevant candidates among the top K) / K. When K exceeds the number of candidates the
  denominator is still K (the standard definition; the score is then capped below 1).
* Queries with no relevant candidate are kept (they score 0) and counted in the result.

Search: a float32 shortlist (a torch matmul + ``topk`` for small candidate sets, FAISS
``IndexFlatIP`` from ``FAISS_MIN_CANDIDATES`` candidates up) is re-scored exactly in float64 and
re-ranked with the tie rule above. The shortlist is widened until nothing outside it could reach
the K-th score within float32 error, so both backends return identical rankings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from convirt.errors import ConfigError, DataError
from convirt.evaluation.metrics import as_numpy

FAISS_MIN_CANDIDATES = 50_000
_CHUNK_ELEMENTS = 1 << 24  # bound on the floats held at once by a chunk of the similarity matrix
Shortlister = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _normalise(x: Any, name: str) -> np.ndarray:
    x = as_numpy(x).astype(np.float64)
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-D (n, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{name} has NaN or infinite values")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _torch_shortlister(cand: np.ndarray) -> Shortlister:
    c = torch.from_numpy(np.ascontiguousarray(cand, dtype=np.float32))

    def search(q: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        step = max(1, _CHUNK_ELEMENTS // max(1, len(c)))
        vals, idx = [], []
        for s in range(0, len(qt), step):
            v, i = torch.topk(qt[s:s + step] @ c.T, m, dim=1, largest=True, sorted=True)
            vals.append(v.numpy()), idx.append(i.numpy())
        return np.concatenate(vals).astype(np.float64), np.concatenate(idx).astype(np.int64)

    return search


def _faiss_shortlister(cand: np.ndarray) -> Shortlister:
    import faiss  # imported lazily: only large candidate sets need it

    index = faiss.IndexFlatIP(cand.shape[1])
    index.add(np.ascontiguousarray(cand, dtype=np.float32))

    def search(q: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        d, i = index.search(np.ascontiguousarray(q, dtype=np.float32), m)
        return d.astype(np.float64), i.astype(np.int64)

    return search


def ranked_topk(query: np.ndarray, cand: np.ndarray, k: int, backend: str = "auto") -> np.ndarray:
    """Indices (n_queries, min(k, n_candidates)) of the top candidates of L2-normalised float64 inputs.

    Order: decreasing float64 cosine, then increasing candidate index. ``backend`` is ``"torch"``,
    ``"faiss"`` or ``"auto"`` (FAISS from ``FAISS_MIN_CANDIDATES`` candidates).
    """
    n_c = len(cand)
    if n_c == 0 or len(query) == 0:
        raise DataError(f"retrieval needs at least one query and one candidate (got {len(query)}, {n_c})")
    if query.shape[1] != cand.shape[1]:
        raise DataError(f"query dim {query.shape[1]} != candidate dim {cand.shape[1]}")
    if backend == "auto":
        backend = "faiss" if n_c >= FAISS_MIN_CANDIDATES else "torch"
    if backend not in ("torch", "faiss"):
        raise ConfigError(f"retrieval backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    search = (_faiss_shortlister if backend == "faiss" else _torch_shortlister)(cand)
    k = min(int(k), n_c)
    # |float32 score - float64 score| <= delta for unit vectors (rounding of inputs and of d products).
    delta = 4.0 * (cand.shape[1] + 4) * float(np.finfo(np.float32).eps)
    out = np.empty((len(query), k), dtype=np.int64)
    pending = np.arange(len(query))
    m = min(n_c, 2 * k + 16)
    while len(pending):
        approx, idx = search(query[pending], m)
        step = max(1, _CHUNK_ELEMENTS // (m * query.shape[1]))
        exact = np.concatenate([(cand[idx[s:s + step]] * query[pending[s:s + step], None, :]).sum(-1)
                                for s in range(0, len(pending), step)])
        order = np.lexsort((idx, -exact), axis=1)[:, :k]  # last key is primary: score, then index
        top = np.take_along_axis(idx, order, axis=1)
        kth = np.take_along_axis(exact, order[:, -1:], axis=1)[:, 0]
        done = np.ones(len(pending), bool) if m == n_c else approx[:, -1] + delta < kth
        out[pending[done]] = top[done]
        pending = pending[~done]
        m = min(n_c, 2 * m)
    return out


def _precision_from_hits(hits: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per-query P@K from a (n_queries, k_max) 0/1 matrix of ranked hits; the denominator is K."""
    return {k: hits[:, :k].sum(axis=1) / k for k in ks}


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"K values must be positive integers, got {ks}")
    return ks


def precision_at_k(query_emb: Any, cand_emb: Any, relevance: Any, ks: Sequence[int] = (5, 10, 50),
                   backend: str = "auto") -> dict:
    """Mean and per-query P@K given a (n_queries, n_candidates) 0/1 relevance matrix.

    Returns ``{"P@5": mean, ..., "per_query": {"P@5": [...]}, "n_queries", "n_candidates",
    "n_queries_without_relevant", "notes"}`` (JSON-serialisable).
    """
    ks = _check_ks(ks)
    q, c = _normalise(query_emb, "query_emb"), _normalise(cand_emb, "cand_emb")
    rel = as_numpy(relevance)
    if rel.shape != (len(q), len(c)):
        raise DataError(f"relevance must have shape (n_queries, n_candidates) = {(len(q), len(c))}, got {rel.shape}")
    if not np.isin(rel, (0, 1)).all():
        raise DataError("relevance must be a 0/1 matrix")
    rel = rel.astype(np.int64)
    top = ranked_topk(q, c, max(ks), backend)  # fewer than max(ks) columns when K > n_candidates
    hits = np.take_along_axis(rel, top, axis=1)
    per_query = _precision_from_hits(hits, ks)
    out: dict[str, Any] = {f"P@{k}": float(v.mean()) for k, v in per_query.items()}
    out.update(per_query={f"P@{k}": v.tolist() for k, v in per_query.items()}, n_queries=len(q),
               n_candidates=len(c), n_queries_without_relevant=int((rel.sum(axis=1) == 0).sum()),
               notes=_notes(ks, len(c)))
    return out


def _notes(ks: Sequence[int], n_c: int) -> list[str]:
    big = [k for k in ks if k > n_c]
    return [f"K={big} exceed the {n_c} candidates: P@K still divides by K"] if big else []


def _query_categories(labels: Any, n_categories: int, name: str) -> np.ndarray:
    """Category index per query from a 1-D index vector or a one-hot (n_queries, n_categories) matrix."""
    y = as_numpy(labels)
    if y.ndim == 2:
        if y.shape[1] != n_categories or not np.isin(y, (0, 1)).all() or (y.sum(axis=1) != 1).any():
            raise DataError(f"{name} as a matrix must be one-hot with {n_categories} columns (one category per query)")
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= n_categories).any():
        raise DataError(f"{name} must be category indices in [0, {n_categories}) or a one-hot matrix")
    return y.astype(np.int64)


def _category_precision(query_emb: Any, query_labels: Any, cand_emb: Any, cand_labels: Any, ks: Sequence[int],
                        category_names: Sequence[str] | None, backend: str, exclude: Any = None) -> dict:
    ks = _check_ks(ks)
    cand_y = as_numpy(cand_labels)
    if cand_y.ndim != 2 or not np.isin(cand_y, (0, 1)).all():
        raise DataError("candidate labels must be a 0/1 (n_candidates, n_categories) matrix")
    n_cat = cand_y.shape[1]
    names = list(category_names) if category_names is not None else [str(j) for j in range(n_cat)]
    if len(names) != n_cat:
        raise DataError(f"{len(names)} category names for {n_cat} label columns")
    q, c = _normalise(query_emb, "query embeddings"), _normalise(cand_emb, "candidate embeddings")
    cat = _query_categories(query_labels, n_cat, "query labels")
    if len(cat) != len(q) or len(cand_y) != len(c):
        raise DataError(f"{len(q)} queries with {len(cat)} labels, {len(c)} candidates with {len(cand_y)} labels")
    ex = np.full(len(q), -1, dtype=np.int64) if exclude is None else as_numpy(exclude).astype(np.int64)
    if ex.shape != (len(q),) or (ex >= len(c)).any():
        raise DataError(f"exclude must hold one candidate index (or -1) per query, got shape {ex.shape}")
    k_max = max(ks)
    ranked = ranked_topk(q, c, k_max + int((ex >= 0).any()), backend)
    top = np.full((len(q), k_max), -1, dtype=np.int64)  # -1: no candidate left at this rank
    for i, row in enumerate(ranked):  # drop each query's excluded entry, keeping the order
        row = row[row != ex[i]][:k_max]
        top[i, :len(row)] = row
    hits = np.where(top >= 0, cand_y[np.maximum(top, 0), cat[:, None]], 0).astype(np.int64)
    n_relevant = cand_y.sum(axis=0)[cat] - np.where(ex >= 0, cand_y[np.maximum(ex, 0), cat], 0)
    per_query = _precision_from_hits(hits, ks)
    per_category: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        sel = cat == j
        if sel.any():
            per_category[name] = {f"P@{k}": float(per_query[k][sel].mean()) for k in ks}
            per_category[name]["n_queries"] = int(sel.sum())
    mean = {f"P@{k}": float(np.mean([v[f"P@{k}"] for v in per_category.values()])) for k in ks}
    return {"per_category": per_category, "mean": mean, "ks": ks, "n_queries": len(q), "n_candidates": len(c),
            "n_queries_without_relevant": int((n_relevant == 0).sum()),
            "averaging": "mean over categories of the mean over that category's queries",
            "notes": _notes(ks, len(c) - int((ex >= 0).any()))}


def text_to_image_precision(text_emb: Any, text_labels: Any, image_emb: Any, image_labels: Any,
                            ks: Sequence[int] = (5, 10, 50), category_names: Sequence[str] | None = None,
                            backend: str = "auto") -> dict:
    """P@K of text queries retrieving images: an image is relevant when positive for the query's category.

    ``text_labels``: category index per query, or a one-hot (n_queries, n_categories) matrix;
    ``image_labels``: 0/1 (n_images, n_categories). Returns per-category and mean P@K.
    """
    return _category_precision(text_emb, text_labels, image_emb, image_labels, ks, category_names, backend)


def image_to_image_precision(query_emb: Any, query_labels: Any, cand_emb: Any, cand_labels: Any,
                             ks: Sequence[int] = (5, 10, 50), category_names: Sequence[str] | None = None,
                             exclude: Any = None, backend: str = "auto") -> dict:
    """P@K of query images retrieving candidate images, relevance as in :func:`text_to_image_precision`.

    When queries are drawn from the candidate pool, pass ``exclude`` (per query, its own candidate
    index, or -1) so a query never retrieves itself.
    """
    return _category_precision(query_emb, query_labels, cand_emb, cand_labels, ks, category_names, backend, exclude)


@dataclass(frozen=True)
class RetrievalBenchmark:
    """Row positions of a CheXpert 8x200-style benchmark: images positive for exactly one category."""

    category_names: list[str]
    candidates: np.ndarray  # row positions, grouped by category in ``category_names`` order
    candidate_category: np.ndarray
    queries: np.ndarray  # disjoint from ``candidates``; empty unless queries were asked for
    query_category: np.ndarray

    def candidate_labels(self) -> np.ndarray:
        """One-hot (n_candidates, n_categories) relevance labels."""
        return np.eye(len(self.category_names), dtype=np.int64)[self.candidate_category]

    def to_dict(self) -> dict:
        return {"category_names": self.category_names, "candidates": self.candidates.tolist(),
                "candidate_category": self.candidate_category.tolist(), "queries": self.queries.tolist(),
                "query_category": self.query_category.tolist()}


def build_retrieval_benchmark(df: pd.DataFrame, label_columns: Sequence[str], n_per_category: int, seed: int = 0,
                              n_queries_per_category: int = 0) -> RetrievalBenchmark:
    """Draw ``n_per_category`` candidates (and optional disjoint queries) per category, deterministically.

    Eligible rows are 1 for the category and 0 (or blank) for every other listed category, so an
    uncertain (-1) finding anywhere makes a row ineligible. Categories with too few eligible rows
    keep all of them, with a warning.
    """
    cols = list(label_columns)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"manifest lacks label column(s) {missing}")
    if n_per_category < 1 or n_queries_per_category < 0:
        raise ConfigError("n_per_category must be >= 1 and n_queries_per_category >= 0")
    y = df[cols].to_numpy(dtype=np.float64)
    negative = np.isnan(y) | (y == 0)
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"c": [], "cc": [], "q": [], "qc": []}
    for j, name in enumerate(cols):
        others = np.delete(negative, j, axis=1).all(axis=1)
        eligible = np.flatnonzero((y[:, j] == 1) & others)
        want = n_per_category + n_queries_per_category
        if len(eligible) < want:
            warnings.warn(f"category {name!r}: only {len(eligible)} rows positive for exactly this category "
                          f"(asked for {want})", stacklevel=2)
        picked = rng.permutation(eligible)
        cand = np.sort(picked[:n_per_category])
        query = np.sort(picked[n_per_category:want])
        parts["c"].append(cand), parts["cc"].append(np.full(len(cand), j))
        parts["q"].append(query), parts["qc"].append(np.full(len(query), j))
    cat = lambda key: np.concatenate(parts[key]).astype(np.int64)  # noqa: E731
    return RetrievalBenchmark(cols, cat("c"), cat("cc"), cat("q"), cat("qc"))
