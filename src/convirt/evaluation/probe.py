"""Linear probe on frozen features: the paper's "linear classification" protocol, over label fractions.

One L2-regularised logistic regression per label on standardised features (scikit-learn
``StandardScaler`` + ``LogisticRegression``, lbfgs), the inverse regularisation strength ``C``
chosen once per task (all labels share it) by macro AUROC on the validation split, and the model
trained on the training (sub)set only is scored on the test split.

Why it is fast enough for 9 seeds x fractions on 2 cores: features are cached arrays; the scaler
is fit once per subset and shared by all labels and all ``C``; for each label the ``C`` values
are fit in ascending order with warm starts (the next solution starts from the previous one);
identical subsets (e.g. 100% drawn with several seeds) are fit once; and BLAS runs single-threaded
during the fits: lbfgs does thousands of small matrix-vector products, for which multi-threaded
OpenBLAS mostly spins (measured ~10x slower on a busy 2-core machine). Parallelism, if wanted, is
over labels (``n_jobs``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from convirt.errors import ConfigError, DataError
from convirt.evaluation.metrics import as_numpy, bootstrap_ci, classification_metrics, macro_auroc, multiclass_metrics
from convirt.evaluation.splits import indices_checksum

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
VALID_SPLIT_NAMES = ("valid", "val", "validation")


class _Constant:
    """Stand-in for a label whose training column has one class: predicts that class's rate."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = np.full(len(x), self.rate)
        return np.stack([1 - p, p], axis=1)


@dataclass
class LinearProbe:
    """A fitted probe: one pipeline (scaler + logistic regression) per label at the selected ``C``."""

    label_names: list[str]
    C: float
    val_auroc: dict[str, float | None]  # macro validation AUROC for every C tried (str(C) keys: JSON)
    models: list[Any]
    notes: list[str] = field(default_factory=list)

    def predict_scores(self, x: Any) -> np.ndarray:
        """Probability of the positive class, shape (n, n_labels)."""
        x = _features(x, "x")
        return np.stack([m.predict_proba(x)[:, 1] for m in self.models], axis=1)


def _features(x: Any, name: str) -> np.ndarray:
    x = as_numpy(x)
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-D (n_samples, n_features) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{name} has NaN or infinite values (check the encoder output)")
    return np.ascontiguousarray(x, dtype=np.float64)


def _targets(y: Any, n: int, name: str) -> np.ndarray:
    y = as_numpy(y)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or len(y) != n:
        raise DataError(f"{name} must have shape (n_samples={n}, n_labels), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"{name} must be 0/1")
    return y.astype(np.int64)


def _fit_label_path(xs: np.ndarray, y: np.ndarray, vs: np.ndarray, Cs: Sequence[float], max_iter: int,
                    tol: float) -> tuple[list[Any], list[np.ndarray]]:
    """Fit one label for every C (ascending, warm-started); return models and validation scores."""
    if y.min() == y.max():
        model = _Constant(y.mean())
        return [model] * len(Cs), [model.predict_proba(vs)[:, 1]] * len(Cs)
    lr = LogisticRegression(C=Cs[0], solver="lbfgs", max_iter=max_iter, tol=tol, warm_start=True)
    models, scores = [], []
    for C in Cs:
        lr.set_params(C=C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr.fit(xs, y)
        models.append(copy.deepcopy(lr))
        scores.append(lr.decision_function(vs))
    return models, scores


def fit_linear_probe(train_x: Any, train_y: Any, val_x: Any, val_y: Any, Cs: Sequence[float] = DEFAULT_CS,
                     label_names: Sequence[str] | None = None, max_iter: int = 1000, tol: float = 1e-6,
                     n_jobs: int = 1) -> LinearProbe:
    """Fit per-label logistic regressions; pick the ``C`` with the best macro validation AUROC.

    Ties go to the smaller ``C`` (stronger regularisation). Validation labels with a single class
    are left out of the macro AUROC; if none is defined, the ``C`` closest to 1 is used (noted).
    ``tol`` is tighter than scikit-learn's default because its loss is averaged over samples, which
    otherwise stops warm-started fits at large ``C`` before they move.
    """
    Cs = sorted(float(c) for c in Cs)
    if not Cs or any(c <= 0 for c in Cs):
        raise ConfigError(f"Cs must be positive numbers, got {Cs}")
    tx, vx = _features(train_x, "train_x"), _features(val_x, "val_x")
    ty, vy = _targets(train_y, len(tx), "train_y"), _targets(val_y, len(vx), "val_y")
    if tx.shape[1] != vx.shape[1] or ty.shape[1] != vy.shape[1]:
        raise DataError(f"train/val disagree: features {tx.shape[1]} vs {vx.shape[1]}, "
                        f"labels {ty.shape[1]} vs {vy.shape[1]}")
    names = list(label_names) if label_names is not None else [str(j) for j in range(ty.shape[1])]
    if len(names) != ty.shape[1]:
        raise DataError(f"{len(names)} label names for {ty.shape[1]} label columns")

    scaler = StandardScaler().fit(tx)
    xs, vs = scaler.transform(tx), scaler.transform(vx)
    with threadpool_limits(limits=1, user_api="blas"):  # see module docstring
        paths = Parallel(n_jobs=n_jobs, prefer="threads")(
            delayed(_fit_label_path)(xs, ty[:, j], vs, Cs, max_iter, tol) for j in range(ty.shape[1]))

    notes = [f"label {names[j]!r} has a single class in the training subset: predicted as a constant"
             for j in range(ty.shape[1]) if ty[:, j].min() == ty[:, j].max()]
    defined = [j for j in range(vy.shape[1]) if 0 < vy[:, j].sum() < len(vy)]
    val_auroc: dict[str, float | None] = {}
    for i, C in enumerate(Cs):
        values = [roc_auc_score(vy[:, j], paths[j][1][i]) for j in defined]
        val_auroc[repr(C)] = float(np.mean(values)) if values else None
    if defined:
        best = max(range(len(Cs)), key=lambda i: (val_auroc[repr(Cs[i])], -i))  # ties: first = smallest C
        if len(Cs) > 1 and best in (0, len(Cs) - 1):
            notes.append(f"selected C={Cs[best]} is at the edge of the grid {Cs}: a wider grid may score higher")
    else:
        best = int(np.argmin([abs(math.log10(c)) for c in Cs]))
        notes.append(f"no validation label has both classes: C={Cs[best]} used without selection")
    models = [m if isinstance(m, _Constant) else Pipeline([("scale", scaler), ("logreg", m)])
              for m in (paths[j][0][best] for j in range(ty.shape[1]))]
    return LinearProbe(label_names=names, C=Cs[best], val_auroc=val_auroc, models=models, notes=notes)


def _split(d: Mapping[str, Any], names: Sequence[str], what: str) -> Any:
    for n in names:
        if n in d:
            return d[n]
    raise DataError(f"{what} has no {names[0]!r} split (keys: {sorted(d)})")


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) over seeds; None where undefined."""
    v = [x for x in values if x is not None]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": values}


def linear_probe_over_fractions(features: Mapping[str, Any], labels: Mapping[str, Any],
                                subsets: Mapping[tuple[float, int], np.ndarray], label_names: Sequence[str],
                                Cs: Sequence[float] = DEFAULT_CS, n_jobs: int = 1, max_iter: int = 1000,
                                tol: float = 1e-6, n_boot: int = 0, multiclass: bool = False) -> dict:
    """Fit a probe on every (fraction, seed) training subset and score it on the test split.

    ``features``/``labels`` map split names (``train``, ``valid`` or ``val``, ``test``) to arrays;
    subset indices are row positions in the ``train`` arrays. The full validation split is used for
    choosing ``C`` at every fraction. Returns a JSON-serialisable dict: ``runs`` (every seed's
    numbers) and ``summary[str(fraction)]`` with mean and sample std over seeds. ``n_boot > 0`` adds
    a percentile bootstrap interval of each run's test macro AUROC (``test_macro_auroc_ci``);
    ``multiclass`` adds argmax accuracy / macro F1 for one-hot labels (one-vs-rest probes).
    """
    names = list(label_names)
    train_x, train_y = _split(features, ("train",), "features"), _split(labels, ("train",), "labels")
    val_x, val_y = _split(features, VALID_SPLIT_NAMES, "features"), _split(labels, VALID_SPLIT_NAMES, "labels")
    test_x, test_y = _split(features, ("test",), "features"), _split(labels, ("test",), "labels")
    train_x = _features(train_x, "train features")
    train_y = _targets(train_y, len(train_x), "train labels")
    cache: dict[str, dict] = {}
    runs = []
    for (fraction, seed), idx in sorted(subsets.items()):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(train_x):
            raise DataError(f"subset ({fraction}, {seed}) has indices outside the {len(train_x)} training rows")
        key = indices_checksum(idx)
        if key not in cache:
            t0 = time.perf_counter()
            probe = fit_linear_probe(train_x[idx], train_y[idx], val_x, val_y, Cs, names, max_iter, tol, n_jobs)
            scores = probe.predict_scores(test_x)
            test = classification_metrics(test_y, scores, names)
            if multiclass:
                test["multiclass"] = multiclass_metrics(test_y, scores)
            if n_boot:
                test["macro_auroc_ci"] = bootstrap_ci(test_y, scores, macro_auroc, n_boot=n_boot, seed=int(seed))
            cache[key] = {"n_train": int(len(idx)),
                          "n_train_positive": dict(zip(names, (int(v) for v in train_y[idx].sum(axis=0)))),
                          "C": probe.C, "val_macro_auroc": probe.val_auroc[repr(probe.C)],
                          "val_auroc_by_C": probe.val_auroc,
                          "test": test, "notes": probe.notes, "fit_seconds": time.perf_counter() - t0}
        runs.append({"fraction": float(fraction), "seed": int(seed), **cache[key]})
    return {"protocol": {"model": "StandardScaler + LogisticRegression(L2, lbfgs), one per label",
                         "Cs": sorted(float(c) for c in Cs), "selection": "macro AUROC on the full validation split",
                         "std": "sample standard deviation over seeds (ddof=1)"},
            "label_names": names, "runs": runs, "summary": summarize_runs(runs, names)}


def summarize_runs(runs: list[dict], label_names: Sequence[str]) -> dict[str, dict]:
    """Mean ± std over seeds per fraction; keys are ``repr(fraction)`` strings (JSON-safe)."""
    out: dict[str, dict] = {}
    for fraction in sorted({r["fraction"] for r in runs}):
        rs = [r for r in runs if r["fraction"] == fraction]
        entry: dict[str, Any] = {"fraction": fraction, "seeds": [r["seed"] for r in rs],
                                 "n_train_mean": float(np.mean([r["n_train"] for r in rs]))}
        for m in ("auroc", "auprc", "accuracy", "f1"):
            entry[f"macro_{m}"] = _mean_std([r["test"]["macro"][m] for r in rs])
        if all("multiclass" in r["test"] for r in rs):
            for m in ("accuracy", "macro_f1"):
                entry[f"multiclass_{m}"] = _mean_std([r["test"]["multiclass"][m] for r in rs])
        entry["per_label_auroc"] = {n: _mean_std([r["test"]["per_label"][n]["auroc"] for r in rs]) for n in label_names}
        out[repr(float(fraction))] = entry
    return out
