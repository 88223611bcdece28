"""Tiny image and DICOM files for adapter fixtures, and the checks every prepared set must pass."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convirt.data.adapters import Options
from convirt.data.manifest import read_manifest
from convirt.data.prepare import prepare


def write_image(path: Path, size: int = 16, seed: int = 0) -> Path:
    """A small grayscale PNG or JPEG (by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


def write_dicom(path: Path, patient_id: str, view: str = "PA", sex: str = "M", age: str = "45", rows: int = 16,
                columns: int = 16, sop_uid: str | None = None, seed: int = 0) -> Path:
    """A valid 8-bit MONOCHROME2 DICOM with the header fields the adapters read."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture, as RSNA and SIIM ship
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    with warnings.catch_warnings():  # RSNA's PatientAge '51' is not a valid DICOM age string, as in the real files
        warnings.simplefilter("ignore", UserWarning)
        ds.PatientAge = age
    ds.PatientID, ds.PatientSex, ds.ViewPosition = patient_id, sex, view
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 256, (rows, columns), dtype=np.uint8).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds.save_as(path, enforce_file_format=True)
    return path


def run(name: str, root: Path, out: Path, fractions=(0.8, 0.1, 0.1), redraw_splits: bool = False,
        decode: bool = False, **options) -> tuple[dict, pd.DataFrame]:
    """Prepare ``name`` and return the summary and the written manifest, after the common checks."""
    summary = prepare(name, root, out, Options(progress=False, **options), fractions=fractions,
                      redraw_splits=redraw_splits, decode_images=decode)
    assert summary["check"]["ok"], summary["check"]
    table = out / summary["manifest"]
    df = read_manifest(table)
    assert_common(df, summary, out)
    return summary, df


def assert_common(df: pd.DataFrame, summary: dict, out: Path) -> None:
    """Facts every prepared set must satisfy, whatever the data set."""
    assert df["id"].is_unique
    assert set(df["split"]) <= {"train", "valid", "test"}
    assert patients_in_one_split(df)
    assert summary["studies"] == len(df) and summary["patients"] == df["patient_id"].nunique()
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    splits = json.loads((out / "splits.json").read_text())
    assert splits["sha256"] == summary["splits_sha256"]
    assert sum(c["rows"] for c in splits["counts"].values()) == len(df)
    if "image" in df.columns:
        assert not any(p.startswith(("/", "..")) for cell in df["image"] for p in cell.split("|"))
    if "text" in df.columns:  # report text stays in the manifest, never in the summary
        summary_text = (out / "summary.json").read_text()
        assert not any(len(t) > 20 and t[:40] in summary_text for t in df["text"])


def patients_in_one_split(df: pd.DataFrame) -> bool:
    return bool((df.groupby("patient_id")["split"].nunique() == 1).all())
