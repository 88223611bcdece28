"""Zero-shot classification: score each image against text prompts per class, no training.

Definitions (stated because papers differ):

* Similarity is the cosine of L2-normalised embeddings (a zero vector scores 0).
* Prompt ensembling per class: ``"mean"`` averages the class's L2-normalised prompt embeddings and
  re-normalises the mean (CLIP's prompt ensembling; one class vector); ``"max"`` takes the largest
  cosine over the class's prompts (what GLoRIA's ``zero_shot_classification`` does).
* GLoRIA then z-scores every class column over the test images before the argmax; we do not, so a
  prediction never depends on which other images are in the test set.
* ``multiclass`` (one class per image, e.g. CheXpert 5x200): prediction = argmax of the scores
  (ties: the lower class index). Per-class one-vs-rest AUROC uses the **raw** scores of that class
  column, not a softmax: AUROC is invariant only to monotone transforms of a column, and a
  softmax is not one (it mixes in the other classes' scores), so its AUROC would change with the
  softmax temperature, which is a free choice rather than a property of the model. Raw scores also
  make the multiclass and multi-label numbers the same quantity.
* ``multilabel`` / ``binary`` (0/1 target per class): per-class AUROC and AUPRC on the raw cosine.

All metric values come from scikit-learn. As in :mod:`convirt.evaluation.metrics`, a class whose
test column holds a single class (no positives, or only positives) has AUROC/AUPRC ``None`` and is
left out of the macro means.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from convirt.errors import ConfigError, DataError
from convirt.evaluation.metrics import _as_2d, _defined, as_numpy, bootstrap_ci, macro_auroc

ENSEMBLES = ("mean", "max")
TASKS = ("multiclass", "multilabel", "binary")


# ---------------------------------------------------------------------------------------------- prompts
def _clean(text: str) -> str:
    return " ".join(text.split())


def _combinations(name: str, parts: Mapping[str, Any]) -> list[str]:
    if not parts:
        raise DataError(f"prompts for class {name!r}: no parts (expected e.g. severity/subtype/location lists)")
    lists = []
    for part, values in parts.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise DataError(f"prompts for class {name!r}: part {part!r} must be a non-empty list of strings")
        lists.append(values)
    return [" ".join(combo) for combo in itertools.product(*lists)]


def load_prompts(path_or_dict: str | Path | Mapping[str, Any], n_per_class: int | None = None,
                 seed: int = 0) -> dict[str, list[str]]:
    """Class name -> prompt strings, from ``{class: [prompt, ...]}`` or GLoRIA-style part lists.

    GLoRIA-style: ``{class: {"severity": [...], "subtype": [...], "location": [...]}}`` (any part
    names, any number of parts). Prompts are the cartesian product of the parts in the order the
    file lists them (as GLoRIA does: for "Pleural Effusion" the file lists location before
    subtype), joined with single spaces; whitespace is collapsed and stripped because a part may
    be ``""``. Identical prompts are kept once (first occurrence): the shipped file repeats
    "bilateral pleural effusion", and a duplicate would only weight that prompt twice.

    ``n_per_class``: where a class has more prompts, draw that many without replacement and
    return them in combination order. The draw uses ``numpy.random.default_rng([seed,
    crc32(class name)])``, so it is deterministic and a class's prompts do not depend on which
    other classes the file holds. GLoRIA instead calls ``random.sample(prompts, n)`` on Python's
    global generator (seeded by the caller, if at all), keeps duplicates and does not strip, so
    the exact prompts differ from GLoRIA's even for the same ``n``; the distribution (uniform
    without replacement over the combinations) is the same.
    """
    if n_per_class is not None and (isinstance(n_per_class, bool) or not isinstance(n_per_class, int)
                                    or n_per_class < 1):
        raise ConfigError(f"n_per_class must be a positive integer or None, got {n_per_class!r}")
    if isinstance(path_or_dict, Mapping):
        raw, source = path_or_dict, "prompts"
    elif not isinstance(path_or_dict, (str, os.PathLike)):
        raise DataError(f"prompts must be a JSON file path or a dict of class -> prompts, "
                        f"got {type(path_or_dict).__name__}")
    else:
        path = Path(path_or_dict)
        if not path.is_file():
            raise DataError(f"prompt file not found: {path}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not valid JSON: {err}") from err
        source = str(path)
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(f"{source}: expected a non-empty JSON object mapping class name -> prompts")
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                raise DataError(f"{source}: class {name!r} must have a non-empty list of prompt strings")
            prompts = list(value)
        elif isinstance(value, Mapping):
            prompts = _combinations(str(name), value)
        else:
            raise DataError(f"{source}: class {name!r} must map to a list of prompts or to a dict of part lists, "
                            f"got {type(value).__name__}")
        prompts = list(dict.fromkeys(_clean(p) for p in prompts))
        if "" in prompts:
            raise DataError(f"{source}: class {name!r} has an empty prompt (all of its parts are blank)")
        if n_per_class is not None and len(prompts) > n_per_class:
            rng = np.random.default_rng([int(seed), zlib.crc32(str(name).encode("utf-8"))])
            keep = np.sort(rng.choice(len(prompts), size=n_per_class, replace=False))
            prompts = [prompts[i] for i in keep]
        out[str(name)] = prompts
    return out


# ---------------------------------------------------------------------------------------------- scores
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_scores(image_emb: Any, prompt_emb: Mapping[str, Any], ensemble: str = "mean") -> tuple[list[str], np.ndarray]:
    """(class names in ``prompt_emb`` order, cosine scores ``(n_images, n_classes)``).

    ``prompt_emb``: class name -> ``(n_prompts, D)`` embeddings (numpy or torch; a ``(D,)`` vector
    is one prompt). ``ensemble``: ``"mean"`` (CLIP-style: mean of unit prompt vectors,
    re-normalised) or ``"max"`` (GLoRIA-style: max cosine over the prompts).
    """
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    img = as_numpy(image_emb).astype(np.float64)
    if img.ndim != 2 or len(img) == 0:
        raise DataError(f"image_emb must be a non-empty (n_images, dim) array, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise DataError("image_emb has NaN or infinite values")
    if not prompt_emb:
        raise DataError("prompt_emb is empty: no classes to score")
    img = _unit(img)
    names, columns = [], []
    for name, emb in prompt_emb.items():
        p = as_numpy(emb).astype(np.float64)
        if p.ndim == 1:
            p = p[None, :]
        if p.ndim != 2 or len(p) == 0 or p.shape[1] != img.shape[1]:
            raise DataError(f"prompt embeddings of class {name!r} must be (n_prompts >= 1, {img.shape[1]}), "
                            f"got shape {p.shape}")
        if not np.isfinite(p).all():
            raise DataError(f"prompt embeddings of class {name!r} have NaN or infinite values")
        p = _unit(p)
        columns.append(img @ _unit(p.mean(axis=0)) if ensemble == "mean" else (img @ p.T).max(axis=1))
        names.append(str(name))
    return names, np.stack(columns, axis=1)


# ---------------------------------------------------------------------------------------------- metrics
def _multiclass_targets(y_true: Any, n: int, n_classes: int) -> np.ndarray:
    y = as_numpy(y_true)
    if y.ndim == 2:  # one-hot
        if y.shape != (n, n_classes) or not np.isin(y, (0, 1)).all() or (y.sum(axis=1) != 1).any():
            raise DataError(f"multiclass y_true as a matrix must be one-hot of shape {(n, n_classes)}")
        return y.argmax(axis=1).astype(np.int64)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"multiclass y_true must be {n} class indices (or a one-hot matrix), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and
                                                    np.isfinite(y).all() and (y == np.round(y)).all())):
        raise DataError("multiclass y_true must hold integer class indices")
    y = y.astype(np.int64)
    if (y < 0).any() or (y >= n_classes).any():
        raise DataError(f"multiclass y_true has class indices outside [0, {n_classes})")
    return y


def _accuracy_of_argmax(t: np.ndarray, s: np.ndarray) -> float:
    return float(accuracy_score(t, s.argmax(axis=1)))


def _ci(t: np.ndarray, s: np.ndarray, fn, n_boot: int, seed: int, alpha: float) -> dict | None:
    return bootstrap_ci(t, s, fn, n_boot=n_boot, seed=seed, alpha=alpha) if n_boot > 0 else None


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def zero_shot_metrics(scores: Any, y_true: Any, class_names: Sequence[str], task: str, n_boot: int = 1000,
                      seed: int = 0, alpha: float = 0.05) -> dict:
    """Metrics of zero-shot class scores (JSON-serialisable dict); see the module docstring for definitions.

    ``multiclass``: ``y_true`` = class index per image (or one-hot). Reports ``accuracy``
    (headline), ``macro_f1`` (scikit-learn's macro F1 over the classes present in the targets or
    the predictions), per-class F1 and one-vs-rest AUROC on the raw scores, ``macro_auroc``.
    ``multilabel`` / ``binary``: ``y_true`` = 0/1 ``(n_images, n_classes)`` (``binary`` also takes
    a 1-D vector for a single class). Reports per-class and macro AUROC (headline) and AUPRC.

    ``ci[headline]`` is a percentile bootstrap over images (:func:`metrics.bootstrap_ci`,
    ``n_boot`` resamples, deterministic for ``seed``); ``n_boot=0`` skips it.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    names = [str(c) for c in class_names]
    s = as_numpy(scores).astype(np.float64)
    if task == "binary" and s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] != len(names):
        raise DataError(f"scores must be (n_images >= 1, {len(names)} classes), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise DataError("scores have NaN or infinite values")
    notes: list[str] = []
    if task == "multiclass":
        if len(names) < 2:
            raise DataError("multiclass zero-shot needs at least 2 classes")
        t = _multiclass_targets(y_true, len(s), len(names))
        pred = s.argmax(axis=1)
        f1 = f1_score(t, pred, labels=np.arange(len(names)), average=None, zero_division=np.nan)
        per_class: dict[str, dict[str, Any]] = {}
        undefined = []
        for j, name in enumerate(names):
            col = (t == j).astype(np.int64)
            row: dict[str, Any] = {"n_positive": int(col.sum()), "n_predicted": int((pred == j).sum()),
                                   "f1": None if math.isnan(f1[j]) else float(f1[j])}
            if _defined(col):
                row["auroc"] = float(roc_auc_score(col, s[:, j]))
            else:
                row["auroc"] = None
                undefined.append(name)
            per_class[name] = row
        aurocs = [r["auroc"] for r in per_class.values() if r["auroc"] is not None]
        out = {"task": task, "headline": "accuracy", "n": len(t), "accuracy": _accuracy_of_argmax(t, s),
               "macro_f1": float(f1_score(t, pred, average="macro", zero_division=0.0)),
               "macro_auroc": _mean_or_none(aurocs), "n_classes_macro": len(aurocs), "per_class": per_class,
               "undefined_classes": undefined,
               "ci": {"accuracy": _ci(t, s, _accuracy_of_argmax, n_boot, seed, alpha)} if n_boot else None}
        absent = [n for n in names if per_class[n]["f1"] is None]
        if absent:
            notes.append(f"class(es) neither present nor predicted, left out of macro F1: {', '.join(absent)}")
        notes.append("prediction = argmax of the scores (ties: lower class index); AUROC is one-vs-rest on the "
                     "raw score of each class (not a softmax)")
    else:
        y = as_numpy(y_true)
        if task == "binary" and y.ndim == 1:
            y = y[:, None]
        t, s = _as_2d(y, s)
        per_class, undefined = {}, []
        for j, name in enumerate(names):
            row = {"n_positive": int(t[:, j].sum())}
            if _defined(t[:, j]):
                row["auroc"] = float(roc_auc_score(t[:, j], s[:, j]))
                row["auprc"] = float(average_precision_score(t[:, j], s[:, j]))
            else:
                row["auroc"] = row["auprc"] = None
                undefined.append(name)
            per_class[name] = row
        used = [n for n in names if n not in undefined]
        out = {"task": task, "headline": "macro_auroc", "n": len(t),
               "macro_auroc": _mean_or_none([per_class[n]["auroc"] for n in used]),
               "macro_auprc": _mean_or_none([per_class[n]["auprc"] for n in used]),
               "n_classes_macro": len(used), "per_class": per_class, "undefined_classes": undefined,
               "ci": {"macro_auroc": _ci(t, s, macro_auroc, n_boot, seed, alpha)} if n_boot else None}
        notes.append("AUROC/AUPRC per class on the raw cosine similarity")
    if undefined:
        notes.append(f"{len(undefined)} class(es) have a single class in the test set, so AUROC"
                     f"{'' if task == 'multiclass' else '/AUPRC'} is undefined; reported as null and left out of "
                     f"the macro means: {', '.join(undefined)}")
    out["notes"] = notes
    return out
