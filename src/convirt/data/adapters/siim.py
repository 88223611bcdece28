"""SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019): DICOM chest X-rays with pneumothorax masks.

Layout of the original download (``--root``): ``train-rle.csv`` with columns ``ImageId`` and
`` EncodedPixels`` (the name starts with a space; ``-1`` = no pneumothorax; several rows when an
image has several regions) and ``dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm``. The
stage-2 release has ``stage_2_train.csv`` (``ImageId,EncodedPixels``) and its own image folder.

Two run-length encodings exist, both over the image in column-major order (the mask is transposed
relative to numpy's row-major order): ``train-rle.csv`` stores *relative* runs (each start counts
from the end of the previous run), ``stage_2_train.csv`` standard runs (1-based absolute starts).
The masks are decoded once into ``OUT/masks/<ImageId>.png`` (0/255, the DICOM's size) and named
in the ``mask`` column (relative to the manifest; blank for images without pneumothorax), for
later localized tasks. Test images (no row in the CSV) are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convirt.atomic import atomic_path
from convirt.data.adapters.base import Adapter, Options, Table, progress, read_csv, relative, walk_files
from convirt.data.adapters.dicom_tags import read_tags
from convirt.errors import DataError

FILES = {"train-rle.csv": True, "stage_2_train.csv": False}  # file -> relative encoding
HINT = ("download https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation (train-rle.csv + dicom-images-train/) "
        "and pass its folder as --root")


def decode_rle(rle: str, width: int, height: int, relative_starts: bool) -> np.ndarray:
    """One run-length string -> a ``(height, width)`` bool mask (column-major runs, see module doc)."""
    numbers = np.asarray(rle.split(), dtype=np.int64)
    if len(numbers) % 2:
        raise DataError("run-length string has an odd number of values")
    flat = np.zeros(width * height, dtype=bool)
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        begin = position + start if relative_starts else start - 1
        if begin < 0 or length < 0 or begin + length > flat.size:
            raise DataError(f"run-length run ({start}, {length}) falls outside a {width}x{height} image")
        flat[begin:begin + length] = True
        position = begin + length
    return flat.reshape(width, height).T


def load(root: Path, options: Options, out: Path) -> Table:
    csv_path = next((root / name for name in FILES if (root / name).is_file()), None)
    if csv_path is None:
        raise DataError(f"expected train-rle.csv (or stage_2_train.csv) under {root}; {HINT}")
    relative_starts = FILES[csv_path.name]
    df = read_csv(csv_path)
    df.columns = [c.strip() for c in df.columns]
    if not {"ImageId", "EncodedPixels"} <= set(df.columns):
        raise DataError(f"{csv_path} lacks ImageId / EncodedPixels columns (found: {list(df.columns)})")
    dicoms = {p.stem: p for p in walk_files(root, (".dcm",), skip=out)}
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows, n_regions = [], 0
    for image_id, group in progress(df.groupby("ImageId", sort=True), "decoding masks", options,
                                    total=df["ImageId"].nunique(), unit="img"):
        runs = [r.strip() for r in group["EncodedPixels"] if r.strip() not in ("-1", "")]
        path = dicoms.get(image_id)
        tags = read_tags(path) if path else {}
        mask_cell = ""
        if runs and path:
            height, width = int(tags["Rows"] or 1024), int(tags["Columns"] or 1024)
            try:
                mask = np.any([decode_rle(r, width, height, relative_starts) for r in runs], axis=0)
            except DataError as err:
                raise DataError(f"{csv_path}, ImageId {image_id}: {err}") from None
            mask_cell = f"masks/{image_id}.png"
            with atomic_path(out / mask_cell) as tmp:
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
            n_regions += len(runs)
        rows.append({"id": image_id, "image": relative(path, root) if path else "",
                     "patient_id": tags.get("PatientID") or image_id, "Pneumothorax": float(bool(runs)),
                     "mask": mask_cell, "view": tags.get("ViewPosition", ""), "sex": tags.get("PatientSex", ""),
                     "age": tags.get("PatientAge", "")})
    return Table(pd.DataFrame(rows), root, ["Pneumothorax"], has_text=False, stratify="Pneumothorax",
                 notes={"encoding": "relative runs" if relative_starts else "standard runs", "mask regions": n_regions})


ADAPTER = Adapter(
    name="siim-pneumothorax", kind="labelled", load=load, options=(),
    description="SIIM-ACR Pneumothorax: DICOM images, label and decoded segmentation masks (OUT/masks/)",
    layout="train-rle.csv (ImageId, ' EncodedPixels') + dicom-images-train/<study>/<series>/<ImageId>.dcm",
)
