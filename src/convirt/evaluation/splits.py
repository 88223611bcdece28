"""Label-fraction training subsets (1% / 10% / 100%) that every method is measured on.

Why this is careful: with 1% of the labels the result depends heavily on *which* 1% is drawn, so
(a) each seed is a separate draw and results are averaged over seeds, (b) a patient's images are
all in or all out (no near-duplicate leakage between subsets and no patient split), (c) the draw is
stratified by label so rare findings are represented, (d) a draw in which some label has no
positive (or no negative) is redrawn, because a logistic probe cannot be fit on it, and (e) the
draws are saved with checksums so another method is scored on exactly the same images.

Determinism: only ``numpy.random.default_rng(seed)`` and stable sorts over sorted group ids are
used (never ``hash()``), so the indices are identical across runs, machines and Python versions.
For one seed, the subsets of different fractions are prefixes of the same patient ordering, hence
nested (1% subset inside the 10% one), unless a redraw was needed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.atomic import atomic_write_text
from convirt.errors import ConfigError, DataError

FORMAT = "convirt.label_fraction_subsets"
VERSION = 1
MAX_DRAWS = 200

Subsets = dict[tuple[float, int], np.ndarray]


def label_fraction_subsets(df: pd.DataFrame, fractions: Sequence[float] = (0.01, 0.1, 1.0),
                           seeds: Sequence[int] = (0, 1, 2), label_columns: Sequence[str] | None = None,
                           group_column: str | None = "patient_id", min_positives: int = 1) -> Subsets:
    """Row positions (``iloc``, sorted) of the training subset for every ``(fraction, seed)``.

    A subset holds about ``fraction * len(df)`` rows (whole patients, so the size is approximate;
    at least one patient). ``fraction == 1.0`` is all rows. ``group_column=None`` treats every row as
    its own patient. Labels are 0/1 (NaN counts as 0; map uncertain labels before calling).
    Every label gets at least ``min_positives`` positives and negatives wherever the full table
    allows it: the draw is repeated (from the same seeded generator) up to ``MAX_DRAWS`` times,
    then the missing labels are seeded with a randomly chosen patient each, which may make a tiny
    subset a little larger than asked. Labels for which it is impossible are warned about.
    """
    if not label_columns:
        raise ConfigError("label_columns must name at least one label column")
    label_columns = list(label_columns)
    missing = [c for c in label_columns + ([group_column] if group_column else []) if c not in df.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {missing}; present: {list(df.columns)}")
    if len(df) == 0:
        raise DataError("empty table: no rows to draw label-fraction subsets from")
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise ConfigError(f"label fractions must be in (0, 1], got {f}")
    if min_positives < 0:
        raise ConfigError(f"min_positives must be >= 0, got {min_positives}")

    y = df[label_columns].fillna(0).to_numpy(dtype=np.float64)
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"label columns {label_columns} must be 0/1 (map uncertain labels first)")
    y = y.astype(np.int64)
    groups = _GroupTable(df[group_column].to_numpy() if group_column else np.arange(len(df)), y)
    feasible = _feasible_labels(y, min_positives, label_columns)

    out: Subsets = {}
    for fraction in fractions:
        fraction = float(fraction)
        for seed in seeds:
            seed = int(seed)
            if fraction == 1.0:
                out[(fraction, seed)] = np.arange(len(df), dtype=np.int64)
                continue
            out[(fraction, seed)] = _draw(groups, y, fraction, seed, feasible, min_positives)
    return out


class _GroupTable:
    """Groups (patients) in a fixed order: sorted ids, with their row positions and label counts."""

    def __init__(self, group_ids: np.ndarray, y: np.ndarray) -> None:
        keys = np.asarray([str(g) for g in group_ids])  # str: mixed types sort the same everywhere
        uniq, inverse = np.unique(keys, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        self.rows = [order[bounds[i]:bounds[i + 1]] for i in range(len(uniq))]
        self.sizes = np.diff(bounds)
        pos = np.zeros((len(uniq), y.shape[1]), dtype=np.int64)
        np.add.at(pos, inverse, y)
        self.positives = pos  # positive rows per group and label
        self.negatives = self.sizes[:, None] - pos
        # Stratum: the group's rarest positive label (by row prevalence), or -1 for no positive.
        prevalence = y.sum(axis=0)
        rank = np.argsort(np.argsort(prevalence, kind="stable"), kind="stable")  # 0 = rarest label
        masked = np.where(pos > 0, rank[None, :], len(rank))
        rarest = masked.argmin(axis=1)
        self.stratum = np.where(pos.any(axis=1), rarest, -1)

    def __len__(self) -> int:
        return len(self.sizes)


def _feasible_labels(y: np.ndarray, k: int, names: list[str]) -> np.ndarray:
    """Labels whose full table has >= k positives and >= k negatives; warn about the rest."""
    pos, neg = y.sum(axis=0), len(y) - y.sum(axis=0)
    ok = (pos >= k) & (neg >= k)
    if not ok.all():
        bad = [names[j] for j in np.flatnonzero(~ok)]
        warnings.warn(f"labels {bad} have fewer than {k} positive or negative rows in the whole table; "
                      "subsets cannot contain both classes for them", stacklevel=3)
    return ok


def _stratified_order(groups: _GroupTable, rng: np.random.Generator) -> np.ndarray:
    """All groups in an order whose every prefix samples each stratum in proportion to its size.

    Systematic stratified sampling: the j-th group of a shuffled stratum of size n gets the key
    (j + u) / n with one uniform offset u per stratum; sorting by key interleaves the strata.
    """
    keys = np.empty(len(groups))
    for s in np.unique(groups.stratum):  # sorted, so the generator is consumed in a fixed order
        members = np.flatnonzero(groups.stratum == s)
        perm = rng.permutation(members)
        keys[perm] = (np.arange(len(perm)) + rng.random()) / len(perm)
    return np.argsort(keys, kind="stable")


def _prefix_for_rows(sizes_in_order: np.ndarray, target: int) -> int:
    """Number of leading groups whose row count is closest to ``target`` (at least one; ties: more)."""
    cum = np.cumsum(sizes_in_order)
    i = int(np.searchsorted(cum, target))  # first prefix with >= target rows
    if i >= len(cum):
        return len(cum)
    if i > 0 and target - cum[i - 1] < cum[i] - target:
        return i
    return i + 1


def _satisfied(chosen: np.ndarray, groups: _GroupTable, feasible: np.ndarray, k: int) -> np.ndarray:
    """Per label: does the subset of these groups have >= k positives and negatives (or is it infeasible)?"""
    pos = groups.positives[chosen].sum(axis=0)
    neg = groups.negatives[chosen].sum(axis=0)
    return ~feasible | ((pos >= k) & (neg >= k))


def _draw(groups: _GroupTable, y: np.ndarray, fraction: float, seed: int, feasible: np.ndarray, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    target = max(1, int(round(fraction * len(y))))
    best, best_ok = None, -1
    for _ in range(MAX_DRAWS):
        order = _stratified_order(groups, rng)
        chosen = order[:_prefix_for_rows(groups.sizes[order], target)]
        ok = _satisfied(chosen, groups, feasible, k)
        if ok.all():
            return _rows(groups, chosen)
        if ok.sum() > best_ok:
            best, best_ok = chosen, int(ok.sum())
    # Random draws keep missing a rare label: add patients that carry it, one label at a time.
    chosen = [int(g) for g in best]
    for j in np.flatnonzero(feasible):
        for counts in (groups.positives, groups.negatives):
            while counts[chosen, j].sum() < k:
                candidates = np.setdiff1d(np.flatnonzero(counts[:, j] > 0), chosen)
                if len(candidates) == 0:
                    break
                chosen.append(int(rng.choice(candidates)))
    chosen_arr = np.asarray(chosen)
    if not _satisfied(chosen_arr, groups, feasible, k).all():  # e.g. positives only inside one patient
        warnings.warn(f"fraction {fraction}, seed {seed}: some labels lack positives or negatives", stacklevel=3)
    return _rows(groups, chosen_arr)


def _rows(groups: _GroupTable, chosen: Iterable[int]) -> np.ndarray:
    return np.sort(np.concatenate([groups.rows[int(g)] for g in chosen])).astype(np.int64)


# ---------------------------------------------------------------------------------------- saving


def _sha256(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def indices_checksum(indices: np.ndarray) -> str:
    """sha256 of the indices as decimal text: identical on every platform and dtype."""
    return _sha256(",".join(str(int(i)) for i in np.asarray(indices).ravel()))


def subsets_checksum(subsets: Mapping[tuple[float, int], np.ndarray]) -> str:
    """One checksum over all subsets (order-independent of dict insertion)."""
    parts = [f"{float(f)!r}/{int(s)}:{indices_checksum(idx)}" for (f, s), idx in sorted(subsets.items())]
    return _sha256(";".join(parts))


def rows_checksum(row_ids: Sequence) -> str:
    """sha256 of the row identifiers (e.g. image paths), in order: which rows the indices refer to."""
    return _sha256("\n".join(str(r) for r in row_ids))


def save_subsets(subsets: Mapping[tuple[float, int], np.ndarray], path: str | Path,
                 row_ids: Sequence | None = None) -> None:
    """Write the subsets as JSON, atomically, with checksums of each subset and of the manifest rows.

    Pass ``row_ids`` (the identifiers of the rows the indices refer to, e.g. ``train_df["image"]``)
    so :func:`load_subsets` can refuse to apply the subsets to a different or reordered table.
    """
    doc = {
        "format": FORMAT, "version": VERSION,
        "n_rows": None if row_ids is None else len(row_ids),
        "rows_sha256": None if row_ids is None else rows_checksum(list(row_ids)),
        "sha256": subsets_checksum(subsets),
        "subsets": [{"fraction": float(f), "seed": int(s), "n": int(len(idx)),
                     "sha256": indices_checksum(idx), "indices": [int(i) for i in idx]}
                    for (f, s), idx in sorted(subsets.items())],
    }
    atomic_write_text(path, json.dumps(doc, indent=1))


def load_subsets(path: str | Path, row_ids: Sequence | None = None) -> Subsets:
    """Read subsets written by :func:`save_subsets`, verifying every checksum.

    With ``row_ids`` the file must have been saved for exactly these rows in this order.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read label-fraction subsets from {path}: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{path} is not a label-fraction subsets file (format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise DataError(f"{path} has subsets format version {doc.get('version')}, this convirt reads {VERSION}")
    out: Subsets = {}
    for entry in doc["subsets"]:
        idx = np.asarray(entry["indices"], dtype=np.int64)
        if indices_checksum(idx) != entry["sha256"]:
            raise DataError(f"{path}: checksum mismatch for fraction {entry['fraction']} seed {entry['seed']} "
                            "(file edited or corrupted)")
        out[(float(entry["fraction"]), int(entry["seed"]))] = idx
    if subsets_checksum(out) != doc["sha256"]:
        raise DataError(f"{path}: overall checksum mismatch (file edited or corrupted)")
    if row_ids is not None:
        if doc.get("rows_sha256") is None:
            raise DataError(f"{path} was saved without row ids, so it cannot be checked against this manifest")
        if len(row_ids) != doc["n_rows"] or rows_checksum(list(row_ids)) != doc["rows_sha256"]:
            raise DataError(f"{path} was drawn from a different manifest (rows differ or are reordered): "
                            "redraw the subsets or use the manifest they were drawn from")
    return out
