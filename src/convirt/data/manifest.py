"""The manifest: one row per study, as CSV, JSON Lines or Parquet.

Columns: ``image`` (a path relative to the manifest's folder, or several joined by ``|`` for a
multi-view study), ``text`` (the report), optional ``split`` and ``patient_id``, and any label
columns (values 0, 1, -1 or blank, CheXpert style). Relative paths keep a data set movable;
paths that leave the manifest's folder are refused unless explicitly allowed.
"""

from __future__ import annotations

import hashlib

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.errors import DataError

REQUIRED_COLUMNS = ("image", "text")
RESERVED_COLUMNS = ("image", "text", "split", "patient_id")
FORMATS = {".csv": "CSV", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines", ".parquet": "Parquet", ".pq": "Parquet"}
VIEW_SEPARATOR = "|"
UNDECODABLE = re.compile("[\ud800-\udfff]")  # bytes that were not UTF-8, kept by surrogateescape


def read_manifest(path: str | Path, raw: bool = False) -> pd.DataFrame:
    """The manifest as a data frame, with ``image``, ``text``, ``split``, ``patient_id`` as str.

    Empty reports stay empty strings (never NaN); bytes that are not UTF-8 become U+FFFD. Other
    columns whose values are all numbers or blank become numeric (blank -> NaN): label columns.
    ``raw=True`` returns the values as stored instead, for :func:`convirt.data.check.check_manifest`
    to tell a numeric report from a text one.
    """
    try:
        df = load_table(Path(path))
    except DataError as err:
        raise DataError(f"manifest {path}: {err}") from None
    return df if raw else _coerce(df)


def load_table(path: Path) -> pd.DataFrame:
    """The stored table; errors say what is wrong without the path (callers add it)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"unsupported manifest format {path.suffix or '(no extension)'!r}: use .csv, .jsonl or .parquet")
    if not path.is_file():
        raise DataError("file not found")
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    try:
        if fmt == "CSV":
            # every value as written: no NaN for empty reports, no "NA"/"null" reports turned into NaN;
            # bytes that are not UTF-8 are kept as surrogates so that the check can point at their rows
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="surrogateescape")
        if fmt == "JSON Lines":
            return pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        return pd.read_parquet(path)
    except ImportError as err:
        raise DataError(f"reading Parquet needs pyarrow: pip install pyarrow ({err})") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        # pandas messages name lines and counts, never cell contents
        raise DataError(f"cannot read as {fmt}: {str(err).splitlines()[0][:200]}") from None


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for column in RESERVED_COLUMNS:
        if column in df.columns:
            df[column] = [_as_str(v) for v in df[column]]
    for column in df.columns:
        if column not in RESERVED_COLUMNS:
            numeric = _numeric_or_none(df[column])
            if numeric is not None:
                df[column] = numeric
    return df


def _as_str(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return UNDECODABLE.sub("\ufffd", value) if isinstance(value, str) else str(value)


def _numeric_or_none(values: pd.Series) -> pd.Series | None:
    """``values`` as numbers (blank -> NaN, making the column float) when every value is a number or blank."""
    blank = values.isna() | (values.astype(str).str.strip() == "")
    try:
        return pd.to_numeric(values.where(~blank), errors="raise")
    except (ValueError, TypeError):
        return None


def label_columns(df: pd.DataFrame) -> list[str]:
    """Columns other than the reserved ones whose non-blank values are all 0, 1 or -1 (at least one)."""
    labels = []
    for column in df.columns:
        if column in RESERVED_COLUMNS:
            continue
        numbers = _numeric_or_none(df[column])
        if numbers is not None and numbers.notna().any() and numbers.dropna().isin([0, 1, -1]).all():
            labels.append(column)
    return labels


def resolve_image_paths(entry: str, root: str | Path, allow_absolute: bool = False) -> list[Path]:
    """The file paths of one ``image`` cell (``|`` separates views), below ``root``.

    Relative paths may not leave ``root`` (``../x.png``); absolute paths are refused unless
    ``allow_absolute``: a manifest from elsewhere must not make training read arbitrary files.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise DataError("no image path")
    root = Path(root)
    paths = []
    for part in (p.strip() for p in entry.split(VIEW_SEPARATOR)):
        if not part:
            raise DataError(f"empty path between '{VIEW_SEPARATOR}' separators in {entry!r}")
        if os.path.isabs(part):
            if not allow_absolute:
                raise DataError(f"absolute path not allowed: {part} (use a path relative to the manifest's folder, "
                                "or allow absolute paths: --allow-absolute-paths / data.allow_absolute_paths)")
            paths.append(Path(part))
            continue
        normal = os.path.normpath(part)
        if normal == ".." or normal.startswith(".." + os.sep):
            raise DataError(f"path leaves the manifest's folder: {part}")
        paths.append(root / normal)
    return paths


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (manifests, shards: what a result was made from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
