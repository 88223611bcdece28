"""Validate a manifest before any training starts: every problem, by row and column, at once.

Row numbers are the 1-based *data* rows a user sees in a spreadsheet (row 1 = the first row after
the header; in a JSON Lines file, line 1), the same ids that training logs use. Reasons never
quote report text, which is patient data: they say "empty report", not what the report says.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from convirt.data.images import load_image
from convirt.data.manifest import REQUIRED_COLUMNS, UNDECODABLE, VIEW_SEPARATOR, load_table, resolve_image_paths
from convirt.errors import DataError, ImageDecodeError

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ALIASES = {"image": ("path", "image_path", "filename", "file", "dicom", "img"),
            "text": ("report", "reports", "findings", "impression", "notes", "caption", "sentence")}


@dataclass(frozen=True)
class BadRow:
    row: int | None  # 1-based data row; None: the manifest as a whole
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "manifest"
        return f"{where}, column {self.column}: {self.reason}" if self.column else f"{where}: {self.reason}"


@dataclass
class CheckReport:
    path: str
    n_rows: int = 0
    bad: list[BadRow] = field(default_factory=list)
    ok_rows: list[int] = field(default_factory=list)
    warnings: list[BadRow] = field(default_factory=list)  # worth a look, not blocking (duplicates)

    @property
    def ok(self) -> bool:
        return not self.bad

    @property
    def n_bad_rows(self) -> int:
        return len({b.row for b in self.bad if b.row is not None})

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "n_bad_rows": self.n_bad_rows}


def check_manifest(path: str | Path, decode_images: bool = True, allow_absolute: bool = False,
                   progress: bool = True, workers: int | None = None, require_text: bool = True) -> CheckReport:
    """Check columns, image paths, image files (decoded when ``decode_images``) and reports.

    Decoding runs on ``workers`` threads (default: the CPU count); image decoders release the GIL.
    ``require_text=False`` accepts a labelled set without reports (no ``text`` column); a ``text``
    column that is present is still checked.
    """
    path = Path(path)
    report = CheckReport(str(path))
    try:
        df = load_table(path)
    except DataError as err:
        report.bad.append(BadRow(None, None, f"cannot read manifest: {err}"))
        return report
    report.n_rows = len(df)
    required = [c for c in REQUIRED_COLUMNS if require_text or c != "text"]
    missing = [c for c in required if c not in df.columns]
    for column in missing:
        report.bad.append(BadRow(None, column, _missing_column_reason(column, list(df.columns))))
    if missing:
        return report
    if not len(df):
        report.bad.append(BadRow(None, None, "the manifest has no data rows"))
        return report

    to_decode: list[tuple[int, str, Path]] = []
    seen: dict[tuple[str, str], int] = {}
    has_text = "text" in df.columns
    texts = df["text"].tolist() if has_text else [""] * len(df)
    for row, (entry, text) in enumerate(zip(df["image"].tolist(), texts), start=1):
        reason = _text_problem(text) if has_text else None
        if reason:
            report.bad.append(BadRow(row, "text", reason))
        try:
            paths = resolve_image_paths(entry, path.parent, allow_absolute)
        except DataError as err:
            report.bad.append(BadRow(row, "image", str(err)))
            continue
        for shown, file in zip((p.strip() for p in entry.split(VIEW_SEPARATOR)), paths):
            if not file.is_file():
                report.bad.append(BadRow(row, "image", f"{'not a file' if file.is_dir() else 'file not found'}: {shown}"))
            else:
                to_decode.append((row, shown, file))
        if not reason:
            first = seen.setdefault((entry.strip(), text.strip()), row)
            if first != row:
                same = "same image and report" if has_text else "same image"
                report.warnings.append(BadRow(row, None, f"duplicate of row {first} ({same})"))

    if decode_images and to_decode:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            results = pool.map(_decode_problem, [file for _, _, file in to_decode])
            for (row, shown, file), problem in tqdm(zip(to_decode, results), total=len(to_decode), disable=not progress,
                                                    desc="decoding images", unit="img", leave=False):
                if problem:
                    report.bad.append(BadRow(row, "image", f"cannot decode {shown}: {problem.removeprefix(f'{file}: ')}"))

    report.bad.sort(key=lambda b: (b.row or 0, b.column or ""))
    bad_rows = {b.row for b in report.bad}
    report.ok_rows = [r for r in range(1, report.n_rows + 1) if r not in bad_rows]
    return report


def _decode_problem(file: Path) -> str | None:
    try:
        load_image(file)
    except ImageDecodeError as err:
        return str(err)
    return None


def _text_problem(text) -> str | None:
    """Why a report cell is unusable, without quoting it."""
    if text is None or (isinstance(text, float) and text != text):
        return "empty report"
    if not isinstance(text, str):
        return f"report is not text (a {type(text).__name__} value)"
    if not text:
        return "empty report"
    if not text.strip():
        return "report is only whitespace"
    if _NUMBER.fullmatch(text.strip()):
        return "report is a number, not text"
    if UNDECODABLE.search(text):
        return "report is not valid UTF-8 text (save the manifest as UTF-8)"
    if _CONTROL.search(text):
        return "report contains control characters (binary data?)"
    return None


def _missing_column_reason(column: str, columns: list[str]) -> str:
    found = ", ".join(map(str, columns)) or "none"
    lower = {str(c).lower(): c for c in columns}
    guess = next((lower[a] for a in (column, *_ALIASES[column]) if a in lower), None)
    hint = f"; rename column {guess!r} to {column!r}?" if guess is not None else ""
    return f"missing required column {column!r} (found: {found}){hint}"
