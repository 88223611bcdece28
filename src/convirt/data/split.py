"""Patient-grouped train / valid / test splits for prepared data sets, pinned by seed and checksum.

Why grouped: a patient's studies look alike, so one patient in two splits leaks the test set into
training. Why pinned: every method must be compared on the same test rows, so the assignment is
written beside the manifest (``splits.json``) with a sha256 over ``(row id, split)`` that changes
whenever any row moves.

Official splits (CheXpert's validation set, MIMIC-CXR's split file) are kept; the remaining rows
are drawn over the splits no row officially has, in proportion to their fractions. The draw is
stratified: patients are ordered by systematic sampling of rows within their stratum (e.g. their
label), so every split gets each stratum's rows in proportion (the scheme of
:mod:`convirt.evaluation.splits`, weighted by rows per patient). Only ``numpy.random.default_rng(seed)`` and stable sorts over
sorted ids are used, so the result is identical across runs, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.atomic import atomic_write_text
from convirt.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
FORMAT = "convirt.prepared_splits"
VERSION = 1
_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validate": "valid", "validation": "valid",
            "val": "valid", "dev": "valid", "test": "test", "testing": "test", "": ""}


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` (train, valid, test) -> a tuple that sums to 1, train > 0."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"split fractions must be three numbers like 0.8,0.1,0.1; got {text!r}") from None
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values) or values[0] <= 0:
        raise ConfigError(f"split fractions must be three numbers >= 0 (train > 0) for train,valid,test; got {text!r}")
    if abs(sum(values) - 1) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1 (train,valid,test); got {text!r} (sum {sum(values):g})")
    return tuple(values)  # type: ignore[return-value]


def normalize_split(value) -> str:
    """An official split name as written by a data set (``validate``, ``val``, ...) -> train/valid/test or ''."""
    key = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip().lower()
    if key not in _ALIASES:
        raise DataError(f"unknown split name {value!r}: expected one of train, valid (validate, val), test")
    return _ALIASES[key]


def assign_splits(patients: Sequence, official: Sequence | None = None, fractions=DEFAULT_FRACTIONS, seed: int = 0,
                  strata: Sequence | None = None) -> np.ndarray:
    """The split of every row: official where given, otherwise drawn by patient.

    A patient with official rows gets its other rows in its (most common) official split. The rest
    are drawn over the splits that no row officially has (all three when none or all do), with
    ``fractions`` renormalised over those; ``strata`` (one value per row, e.g. the label) spreads
    every stratum over the splits in proportion. A patient's stratum is its most common value.
    """
    fractions = parse_fractions(fractions)
    patients = np.asarray([str(p) for p in patients])
    n = len(patients)
    official_arr = np.asarray([normalize_split(v) for v in official] if official is not None else [""] * n, dtype=object)
    strata_arr = np.asarray(["" if s is None else str(s) for s in strata] if strata is not None else [""] * n)
    if len(official_arr) != n or len(strata_arr) != n:
        raise DataError("patients, official splits and strata must have one value per row")
    out = official_arr.copy()

    # patients that already have an official split keep all their rows there
    open_rows = out == ""
    if open_rows.any() and (~open_rows).any():
        home = {}
        for patient, split in zip(patients[~open_rows], out[~open_rows]):
            home.setdefault(patient, Counter())[split] += 1
        for i in np.flatnonzero(open_rows):
            if patients[i] in home:
                counts = home[patients[i]]
                out[i] = max(SPLITS, key=lambda s: (counts.get(s, 0), -SPLITS.index(s)))
        open_rows = out == ""
    if not open_rows.any():
        return out.astype(str)

    used = set(official_arr[official_arr != ""])
    targets = [s for s in SPLITS if s not in used] or list(SPLITS)
    weights = np.asarray([fractions[SPLITS.index(s)] for s in targets])
    if weights.sum() == 0:
        targets, weights = list(SPLITS), np.asarray(fractions)
    weights = weights / weights.sum()

    groups, inverse = np.unique(patients[open_rows], return_inverse=True)  # sorted ids
    sizes = np.bincount(inverse, minlength=len(groups))
    group_strata = _group_strata(inverse, strata_arr[open_rows], len(groups))
    order = _stratified_order(group_strata, sizes, np.random.default_rng(seed))
    cum = np.cumsum(sizes[order])
    middle = (cum - sizes[order] / 2) / cum[-1]
    bounds = np.cumsum(weights)[:-1]
    chosen = np.empty(len(groups), dtype=object)
    chosen[order] = np.asarray(targets, dtype=object)[np.searchsorted(bounds, middle, side="right")]
    out[np.flatnonzero(open_rows)] = chosen[inverse]
    return out.astype(str)


def _group_strata(inverse: np.ndarray, strata: np.ndarray, n_groups: int) -> np.ndarray:
    counts: list[Counter] = [Counter() for _ in range(n_groups)]
    for g, s in zip(inverse, strata):
        counts[g][s] += 1
    return np.asarray([min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for c in counts])


def _stratified_order(group_strata: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """All groups in an order whose every stretch holds each stratum's rows in proportion to its size.

    Systematic stratified sampling by row mass: the groups of a stratum are shuffled and laid end
    to end on [0, 1) by their row counts; a group's key is the point ``u`` of the way into its own
    stretch, with one uniform ``u`` per stratum. Sorting by key interleaves the strata.
    """
    keys = np.empty(len(group_strata))
    for stratum in np.unique(group_strata):  # sorted: the generator is consumed in a fixed order
        perm = rng.permutation(np.flatnonzero(group_strata == stratum))
        mass = sizes[perm].astype(float)
        keys[perm] = (np.cumsum(mass) - mass + rng.random() * mass) / mass.sum()
    return np.argsort(keys, kind="stable")


def assignment_checksum(ids: Sequence, splits: Sequence) -> str:
    """sha256 over the ``id<TAB>split`` lines sorted by id: independent of the row order."""
    lines = sorted(f"{i}\t{s}" for i, s in zip(map(str, ids), map(str, splits)))
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def split_counts(df: pd.DataFrame, group_column: str = "patient_id") -> dict:
    return {s: {"rows": int((df["split"] == s).sum()), "patients": int(df.loc[df["split"] == s, group_column].nunique())}
            for s in SPLITS}


def straddling_patients(df: pd.DataFrame, group_column: str = "patient_id") -> list[str]:
    """Patients whose rows are in more than one split (only an official split can cause this)."""
    n = df.groupby(group_column)["split"].nunique()
    return sorted(map(str, n[n > 1].index))


def write_splits(path: str | Path, df: pd.DataFrame, seed: int, fractions, stratify: str | None,
                 n_official: int, redrawn: bool, group_column: str = "patient_id") -> dict:
    """Write ``splits.json`` for a manifest frame with ``id``, ``split`` and ``group_column``."""
    doc = {
        "format": FORMAT, "version": VERSION, "seed": int(seed),
        "fractions": dict(zip(SPLITS, map(float, parse_fractions(fractions)))),
        "group_column": group_column, "stratify": stratify,
        "official_rows": int(n_official), "official_redrawn": bool(redrawn),
        "n_rows": int(len(df)), "counts": split_counts(df, group_column),
        "patients_in_several_splits": straddling_patients(df, group_column),
        "sha256": assignment_checksum(df["id"], df["split"]),
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc


def verify_splits(manifest: str | Path, splits_json: str | Path | None = None) -> dict:
    """Check that a manifest's ``split`` column is the one pinned in ``splits.json``; returns the document."""
    from convirt.data.manifest import read_manifest

    manifest = Path(manifest)
    splits_json = Path(splits_json) if splits_json else manifest.parent / "splits.json"
    try:
        doc = json.loads(splits_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {splits_json}: {err}") from None
    if doc.get("format") != FORMAT:
        raise DataError(f"{splits_json} is not a splits file written by `convirt data prepare`")
    df = read_manifest(manifest)
    if "id" not in df.columns or "split" not in df.columns:
        raise DataError(f"{manifest} has no 'id' and 'split' columns to check against {splits_json}")
    if assignment_checksum(df["id"], df["split"]) != doc["sha256"]:
        raise DataError(f"{manifest}: the split column differs from the assignment pinned in {splits_json} "
                        "(rows added, removed or moved): re-run `convirt data prepare` or restore the manifest")
    return doc
