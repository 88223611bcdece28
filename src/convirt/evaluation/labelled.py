"""A labelled evaluation set: a manifest's images, its train/valid/test rows and a 0/1 label matrix.

Labels are chosen with ``--labels``, one entry per output column:

* ``COLUMN`` — a 0/1 column (CheXpert style: blank counts as 0; -1 "uncertain" must be mapped
  with ``uncertain="zeros"|"ones"``, or the load fails and says so);
* ``COLUMN=VALUE`` — 1 where a text column equals VALUE (``label=pneumonia`` on Kermany);
* a single text ``COLUMN`` — one class per distinct value, a *multi-class* task (one-hot).

Task types: ``binary`` (one column), ``multilabel`` (several independent 0/1 columns, one logistic
each) and ``multiclass`` (one-hot, exactly one positive per row; accuracy and F1 by argmax).
The manifest's ``split`` column gives the rows (``valid``, ``val`` and ``validation`` all mean the
validation split). The manifest's sha256 goes into every result so that numbers can be traced to
the exact table they came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.manifest import file_sha256, label_columns, read_manifest, resolve_image_paths
from convirt.errors import ConfigError, DataError

SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
TASKS = ("auto", "binary", "multilabel", "multiclass")
UNCERTAIN = ("error", "zeros", "ones")


@dataclass
class LabelledData:
    manifest: Path
    manifest_sha256: str
    frame: pd.DataFrame
    paths: list[Path]
    label_names: list[str]
    task: str
    y: np.ndarray  # (n_rows, n_labels) int 0/1
    splits: dict[str, np.ndarray]  # "train" / "valid" / "test" -> row positions

    def split_paths(self, split: str) -> list[Path]:
        return [self.paths[i] for i in self.splits[split]]

    def split_y(self, split: str) -> np.ndarray:
        return self.y[self.splits[split]]

    def train_frame(self) -> pd.DataFrame:
        """Training rows with the label matrix as columns (for label-fraction draws)."""
        rows = self.frame.iloc[self.splits["train"]].reset_index(drop=True)
        labels = pd.DataFrame(self.split_y("train"), columns=self.label_names)
        keep = ["patient_id"] if "patient_id" in rows.columns else []
        return pd.concat([rows[["image", *keep]], labels], axis=1)

    def describe(self) -> dict:
        return {"manifest": str(self.manifest), "manifest_sha256": self.manifest_sha256, "task": self.task,
                "labels": self.label_names, "n_images": {s: int(len(i)) for s, i in self.splits.items()},
                "n_positive": {s: dict(zip(self.label_names, map(int, self.y[i].sum(axis=0))))
                               for s, i in self.splits.items()}}


def load_labelled(manifest: str | Path, labels: Sequence[str] | None = None, task: str = "auto",
                  uncertain: str = "error", allow_absolute: bool = False,
                  required_splits: Sequence[str] = ("train", "valid", "test"),
                  image_root: str | Path | None = None) -> LabelledData:
    """Read ``manifest`` and build the label matrix (see module docstring).

    A CheXpert-style table with ``Path`` instead of ``image`` is accepted (``image_root``: the folder
    its paths are relative to, default the manifest's). With ``required_splits=()`` a table without a
    ``split`` column is one ``test`` split (retrieval candidates).
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if uncertain not in UNCERTAIN:
        raise ConfigError(f"uncertain must be one of {UNCERTAIN}, got {uncertain!r}")
    manifest = Path(manifest)
    df = read_manifest(manifest)
    if "image" not in df.columns and "Path" in df.columns:
        df = df.rename(columns={"Path": "image"})
        df["image"] = df["image"].astype(str)
    if "image" not in df.columns:
        raise DataError(f"manifest {manifest} has no 'image' (or CheXpert 'Path') column")
    names, y, kind = _label_matrix(df, list(labels or []), uncertain, manifest)
    if task == "auto":
        task = kind
    elif task == "multiclass" and kind != "multiclass" and not (y.sum(axis=1) == 1).all():
        raise DataError("task multiclass needs exactly one positive label per row")
    splits = _splits(df, manifest, required_splits)
    paths = []
    for row, entry in enumerate(df["image"]):
        try:
            paths.append(resolve_image_paths(entry, image_root or manifest.parent, allow_absolute)[0])
        except DataError as err:
            raise DataError(f"manifest {manifest}, row {row + 1}: {err}") from None
    return LabelledData(manifest, file_sha256(manifest), df, paths, names, task, y, splits)


def _label_matrix(df: pd.DataFrame, labels: list[str], uncertain: str, manifest: Path):
    if not labels:
        labels = label_columns(df)
        if not labels:
            raise ConfigError(f"manifest {manifest} has no 0/1 label column: name the labels with --labels "
                              "(COLUMN, COLUMN=VALUE, or one text COLUMN for a multi-class task)")
    if len(labels) == 1 and "=" not in labels[0] and labels[0] in df.columns \
            and not pd.api.types.is_numeric_dtype(df[labels[0]]):
        column = labels[0]
        values = df[column].astype(str).str.strip()
        if (values == "").any():
            raise DataError(f"multi-class column {column!r} is blank in row {int(np.flatnonzero(values == '')[0]) + 1}")
        classes = sorted(values.unique())
        y = (values.to_numpy()[:, None] == np.array(classes)[None, :]).astype(np.int64)
        return [f"{column}={c}" for c in classes], y, "multiclass"
    columns, names = [], []
    for spec in labels:
        column, eq, value = spec.partition("=")
        if column not in df.columns:
            raise DataError(f"manifest {manifest} has no column {column!r} (columns: {list(df.columns)})")
        if eq:
            columns.append((df[column].astype(str).str.strip() == value).to_numpy().astype(np.int64))
        else:
            columns.append(_binary_column(df[column], column, uncertain))
        names.append(spec)
    y = np.stack(columns, axis=1)
    return names, y, "binary" if len(names) == 1 else "multilabel"


def _binary_column(values: pd.Series, column: str, uncertain: str) -> np.ndarray:
    blank = values.isna() | (values.astype(str).str.strip() == "")
    v = pd.to_numeric(values.where(~blank), errors="coerce")
    bad = ~blank & ~v.isin([0, 1, -1])
    if bad.any():
        raise DataError(f"label column {column!r} must hold 0, 1, -1 or blank; row {int(np.flatnonzero(bad)[0]) + 1} "
                        "does not (for a text column use COLUMN=VALUE, or pass it alone for a multi-class task)")
    if (v == -1).any():
        if uncertain == "error":
            raise DataError(f"label column {column!r} has uncertain (-1) values: choose a policy with "
                            "--uncertain zeros (U-Zeros) or --uncertain ones (U-Ones)")
        v = v.replace(-1, 1 if uncertain == "ones" else 0)
    return v.fillna(0).to_numpy().astype(np.int64)


def _splits(df: pd.DataFrame, manifest: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    if "split" not in df.columns and not required:
        return {"test": np.arange(len(df))}
    if "split" not in df.columns:
        raise DataError(f"manifest {manifest} has no 'split' column (train/valid/test); "
                        "`convirt data prepare` writes patient-grouped splits")
    canonical = df["split"].str.strip().str.lower().map(SPLIT_ALIASES)
    splits = {s: np.flatnonzero(canonical.to_numpy() == s) for s in ("train", "valid", "test")}
    missing = [s for s in (required or ("test",)) if len(splits[s]) == 0]
    if missing:
        raise DataError(f"manifest {manifest} has no rows in split(s) {missing} "
                        f"(found values: {sorted(df['split'].unique())[:10]})")
    return {s: i for s, i in splits.items() if len(i)}
