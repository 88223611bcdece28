"""What every data-set adapter returns, and the small helpers they share.

An adapter reads a data set exactly as its publisher ships it and returns a :class:`Table`: one row
per study (image-text sets) or image (labelled sets), image paths relative to ``Table.image_root``
(usually ``--root``), an official split where the data set has one. Writing, splitting and checking
are left to :mod:`convirt.data.prepare`, so every data set is written the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from convirt.errors import DataError

KINDS = ("image-text", "labelled", "benchmark")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
FRONTAL_VIEWS = ("PA", "AP")  # MIMIC-CXR ViewPosition / CheXpert AP/PA values of a frontal chest film


@dataclass
class Options:
    """Every adapter option; an adapter reads only those named in :attr:`Adapter.options`."""

    frontal_only: bool = False
    uncertainty: str | None = None  # ones / zeros / ignore / keep; None: the adapter's default
    labels: str | None = None  # chexpert: competition (5) or all (14)
    labeler: str | None = None  # mimic-cxr: chexpert or negbio label file
    reports: Path | None = None  # where reports are, when not under --root
    images: Path | None = None  # where images are, when not under --root
    files: Path | None = None  # a benchmark's official files
    reports_only: bool = False
    per_class: int | None = None  # 5x200: images per class
    seed: int = 0
    progress: bool = True


@dataclass
class Table:
    """An adapter's output; see the module docstring. ``rows`` holds at least ``id``, ``image``
    (``|``-joined views relative to ``image_root``), ``patient_id`` and ``split`` ('' = draw one)."""

    rows: pd.DataFrame
    image_root: Path
    label_columns: list[str] = field(default_factory=list)
    has_text: bool = True
    stratify: str | None = None  # a column whose value the random split is stratified by
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out
    notes: dict = field(default_factory=dict)  # facts for the summary (never report text)
    extra_tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # file name -> table (``image`` rel. image_root)
    reports_only: bool = False  # no images: write reports.csv instead of a manifest


@dataclass(frozen=True)
class Adapter:
    name: str
    description: str  # one line, shown by `convirt data prepare --list`
    kind: str
    load: Callable[[Path, Options, Path], Table]  # (root, options, out folder) -> Table
    options: tuple[str, ...] = ()
    layout: str = ""  # the expected download layout, for --help and the docs


def progress(items: Iterable, desc: str, options: Options, total: int | None = None, unit: str = "it"):
    return tqdm(items, desc=desc, total=total, unit=unit, disable=not options.progress, leave=False)


def require(path: Path, what: str, hint: str) -> Path:
    """``path`` when it exists, else a DataError naming it, what it is, and how to get it."""
    if not path.exists():
        raise DataError(f"expected {what} at {path}; {hint}")
    return path


def find_first(root: Path, names: Iterable[str], what: str, hint: str) -> Path:
    """The first of ``names`` (relative to ``root``; ``.gz`` variants accepted) that exists."""
    names = list(names)
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.exists():
                return candidate
    raise DataError(f"expected {what} ({' or '.join(names)}) under {root}; {hint}")


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """A CSV (or .csv.gz) as strings, blanks kept as ''; errors name the file."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"cannot read {path}: {str(err).splitlines()[0][:200]}") from None


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing} (found: {list(df.columns)}); is this the original file?")


def strip_prefix(path: str, prefixes: Iterable[str]) -> str:
    """Drop a leading folder that names the download itself (``CheXpert-v1.0-small/train/...``)."""
    path = path.replace("\\", "/").lstrip("/")
    head, _, rest = path.partition("/")
    return rest if rest and any(head.startswith(p) for p in prefixes) else path


def label_series(values: pd.Series, what: str = "label") -> pd.Series:
    """CheXpert-style cells ('1.0', '0', '-1', '', NaN) -> floats 1, 0, -1 or NaN; anything else is an error."""
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype(float)
        bad = numbers.notna() & ~numbers.isin([1.0, 0.0, -1.0])
    else:
        text = values.fillna("").astype(str).str.strip()
        numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = ((text != "") & numbers.isna()) | (numbers.notna() & ~numbers.isin([1.0, 0.0, -1.0]))
    if bad.any():
        first = values[bad].iloc[0]
        raise DataError(f"{what}: {int(bad.sum())} value(s) are not 1, 0, -1 or blank (first: {first!r})")
    return numbers.astype(float)


def walk_files(root: Path, suffixes: Iterable[str], skip: Path | None = None) -> list[Path]:
    """Files under ``root`` with these suffixes (any case), sorted; symlinks to folders are not followed."""
    suffixes = tuple(s.lower() for s in suffixes)
    skip = skip.resolve() if skip else None
    found = []
    for folder, dirs, files in os.walk(root):
        if skip is not None:
            dirs[:] = [d for d in dirs if (Path(folder) / d).resolve() != skip]
        dirs.sort()
        found.extend(Path(folder) / f for f in sorted(files) if f.lower().endswith(suffixes) and not f.startswith("."))
    return found


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
