"""DICOM header fields (patient, view, sex, age, size) read without decoding pixels.

Labelled DICOM sets (RSNA Pneumonia, SIIM-ACR) keep what matters for grouping and filtering in the
header; ``stop_before_pixels`` reads it in about a millisecond per file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from convirt.errors import DataError

TAGS = ("PatientID", "PatientSex", "PatientAge", "ViewPosition", "Rows", "Columns")


def read_tags(path: Path) -> dict:
    """The :data:`TAGS` of ``path`` ('' when absent); a DataError names an unreadable file."""
    import pydicom

    with warnings.catch_warnings():  # e.g. RSNA writes PatientAge '51', not the standard '051Y'
        warnings.simplefilter("ignore", UserWarning)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return {tag: str(ds.get(tag, "") or "").strip() for tag in TAGS}
        except Exception as err:  # pydicom raises many types on malformed files
            raise DataError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
