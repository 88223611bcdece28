"""Classification metrics for binary / multi-label probes, and bootstrap confidence intervals.

All metric values come from scikit-learn; this module only decides which labels are defined and
how they are aggregated. A label whose test column holds a single class has no AUROC (and no
meaningful AUPRC), so it is reported as ``None`` (JSON-safe, unlike NaN) and left out of every
macro mean; the result says which labels were left out and why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from convirt.errors import DataError

METRICS = ("auroc", "auprc", "accuracy", "f1")


def as_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device) or nested list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_2d(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return (n, L) int targets and float scores; a 1-D input is one label."""
    t, s = as_numpy(y_true), as_numpy(y_score).astype(np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim != 2 or t.shape != s.shape:
        raise DataError(f"y_true {t.shape} and y_score {s.shape} must have the same shape (n_samples, n_labels)")
    if t.shape[0] == 0:
        raise DataError("no test samples: cannot compute metrics")
    if not np.isin(t, (0, 1)).all():
        raise DataError("y_true must be 0/1 (binary or multi-label indicator matrix)")
    if not np.isfinite(s).all():
        bad = [int(j) for j in np.flatnonzero(~np.isfinite(s).all(axis=0))]
        raise DataError(f"y_score has NaN or infinite values in label column(s) {bad}")
    return t.astype(np.int64), s


def _defined(column: np.ndarray) -> bool:
    """A ranking metric needs both classes in the test column."""
    return 0 < int(column.sum()) < len(column)


def classification_metrics(y_true: Any, y_score: Any, label_names: Sequence[str], threshold: float = 0.5) -> dict:
    """Per-label and macro AUROC, AUPRC (average precision), accuracy and F1.

    ``y_score`` are probabilities (accuracy and F1 threshold them at ``threshold``). Returns a
    JSON-serialisable dict: ``per_label[name][metric]`` (``None`` where undefined), ``macro[metric]``
    (mean over the defined labels, ``None`` if there are none), ``n_labels_macro``,
    ``undefined_labels`` and ``notes``. Macro means of all four metrics use the same label set so
    that they describe the same task.
    """
    t, s = _as_2d(y_true, y_score)
    names = list(label_names)
    if len(names) != t.shape[1]:
        raise DataError(f"{len(names)} label names for {t.shape[1]} label columns")
    per_label: dict[str, dict[str, Any]] = {}
    undefined: list[str] = []
    for j, name in enumerate(names):
        yt, ys = t[:, j], s[:, j]
        pred = (ys >= threshold).astype(np.int64)
        row: dict[str, Any] = {"n": int(len(yt)), "n_positive": int(yt.sum())}
        if _defined(yt):
            row["auroc"] = float(roc_auc_score(yt, ys))
            row["auprc"] = float(average_precision_score(yt, ys))
        else:
            row["auroc"] = row["auprc"] = None
            undefined.append(name)
        row["accuracy"] = float(accuracy_score(yt, pred))
        row["f1"] = float(f1_score(yt, pred, zero_division=0.0))
        per_label[name] = row
    used = [n for n in names if n not in undefined]
    macro = {m: (float(np.mean([per_label[n][m] for n in used])) if used else None) for m in METRICS}
    notes = []
    if undefined:
        notes.append(f"{len(undefined)} label(s) have a single class in the test set, so AUROC/AUPRC are undefined; "
                     f"they are reported as null and left out of the macro means: {', '.join(undefined)}")
    return {"per_label": per_label, "macro": macro, "n_labels_macro": len(used), "undefined_labels": undefined,
            "threshold": float(threshold), "notes": notes}


def multiclass_metrics(y_true: Any, y_score: Any) -> dict:
    """Accuracy and macro F1 of the argmax prediction for one-hot ``y_true`` (one class per row)."""
    t, s = _as_2d(y_true, y_score)
    if (t.sum(axis=1) != 1).any():
        raise DataError("multi-class metrics need exactly one positive label per row")
    truth, pred = t.argmax(axis=1), s.argmax(axis=1)
    return {"accuracy": float(accuracy_score(truth, pred)),
            "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0.0))}


def macro_auroc(y_true: Any, y_score: Any) -> float:
    """Macro AUROC over the labels with both classes present; NaN if none has (a metric_fn for bootstrap)."""
    t, s = _as_2d(y_true, y_score)
    values = [roc_auc_score(t[:, j], s[:, j]) for j in range(t.shape[1]) if _defined(t[:, j])]
    return float(np.mean(values)) if values else math.nan


def bootstrap_ci(y_true: Any, y_score: Any, metric_fn: Callable[[np.ndarray, np.ndarray], float | None],
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap interval of ``metric_fn(y_true, y_score)`` over resampled test rows.

    Resamples where the metric is undefined (it raises ``ValueError``, or returns None/NaN, e.g. a
    resample with one class) are skipped and counted, so the interval is conditional on the
    metric being defined. Deterministic for a given ``seed``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    t, s = as_numpy(y_true), as_numpy(y_score)
    if len(t) != len(s) or len(t) == 0:
        raise DataError(f"y_true ({len(t)}) and y_score ({len(s)}) must have the same, non-zero number of rows")
    estimate = _safe(metric_fn, t, s)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(t), len(t))
        v = _safe(metric_fn, t[idx], s[idx])
        if v is not None:
            values.append(v)
    out = {"estimate": estimate, "low": None, "high": None, "alpha": alpha, "n_boot": n_boot,
           "n_valid": len(values), "n_skipped": n_boot - len(values)}
    if values:
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        out["low"], out["high"] = float(low), float(high)
    return out


def _safe(metric_fn: Callable, t: np.ndarray, s: np.ndarray) -> float | None:
    """The metric as a float, or None where it is undefined on this sample."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = metric_fn(t, s)
    except (ValueError, DataError):
        return None
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
