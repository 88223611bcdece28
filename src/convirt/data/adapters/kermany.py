"""Kermany et al. (Cell 2018) paediatric chest X-rays, normal vs pneumonia (bacterial / viral).

Two layouts are read:

* the original Mendeley Data / Kaggle download: ``chest_xray/{train,test[,val]}/{NORMAL,PNEUMONIA}/``
  with ``IM-0115-0001.jpeg``, ``NORMAL2-IM-1427-0001.jpeg``, ``person1_bacteria_1.jpeg``,
  ``person1_virus_6.jpeg`` (``--root`` may be ``chest_xray`` or the folder holding it);
* a ``labels.csv`` (``image,patient_id,label,subtype``) beside ``images/``, as in this project's
  ``../shared/data/kermany-pneumonia``.

Patients come from the file names (``personN``; ``IM-NNNN``; ``NORMAL2-IM-NNNN`` -> ``IM2-NNNN``),
so a patient's several images never straddle splits. The original ``test`` folder is kept as the
test split; ``train`` and Kaggle's 16-image ``val`` are split into train/valid by patient.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, read_csv, relative, require_columns, walk_files
from convirt.errors import DataError

SUBFOLDERS = ("NORMAL", "PNEUMONIA")
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_IM = re.compile(r"^(NORMAL2-)?IM-(\d+)-\d+", re.IGNORECASE)


def patient_from_name(name: str) -> str | None:
    """The patient id encoded in a Kermany file name, or None when the name has another form."""
    stem = Path(name).stem
    if m := _PERSON.match(stem):
        return m.group(1).lower()
    if m := _IM.match(stem):
        return f"IM2-{m.group(2)}" if m.group(1) else f"IM-{m.group(2)}"
    return None


def subtype_from_name(name: str, folder: str) -> str:
    if folder.upper() == "NORMAL":
        return "normal"
    m = _PERSON.match(Path(name).stem)
    return m.group(2).lower() if m else "unknown"


def _find_split_root(root: Path) -> Path | None:
    for candidate in (root, root / "chest_xray", root / "ChestXRay2017" / "chest_xray", root / "chest_xray" / "chest_xray"):
        if (candidate / "train" / "NORMAL").is_dir() or (candidate / "test" / "NORMAL").is_dir():
            return candidate
    return None


def load(root: Path, options: Options, out: Path) -> Table:
    if (root / "labels.csv").is_file():
        return _from_labels_csv(root)
    base = _find_split_root(root)
    if base is None:
        raise DataError(f"expected the Kermany layout under {root}: chest_xray/train/NORMAL/*.jpeg and "
                        "chest_xray/train/PNEUMONIA/*.jpeg (download ChestXRay2017.zip from Mendeley Data, "
                        "doi:10.17632/rscbjbr9sj, and unzip it), or labels.csv beside images/")
    rows, unknown = [], 0
    for split_folder in sorted(p.name for p in base.iterdir() if p.is_dir() and p.name.lower() in ("train", "test", "val")):
        for label_folder in SUBFOLDERS:
            for file in walk_files(base / split_folder / label_folder, (".jpeg", ".jpg", ".png")):
                patient = patient_from_name(file.name)
                unknown += patient is None
                rows.append({"id": relative(file, base).rsplit(".", 1)[0], "image": relative(file, base),
                             "patient_id": patient or file.stem,
                             "split": "test" if split_folder.lower() == "test" else "",
                             "Pneumonia": float(label_folder == "PNEUMONIA"),
                             "subtype": subtype_from_name(file.name, label_folder)})
    if not rows:
        raise DataError(f"no images found in {base}/{{train,test,val}}/{{NORMAL,PNEUMONIA}}/")
    notes = {"patient id not in file name (own patient)": unknown} if unknown else {}
    return Table(pd.DataFrame(rows), base, ["Pneumonia"], has_text=False, stratify="subtype", notes=notes)


def _from_labels_csv(root: Path) -> Table:
    path = root / "labels.csv"
    df = read_csv(path)
    require_columns(df, ("image", "patient_id", "label"), path)
    labels = df["label"].str.strip().str.lower()
    bad = ~labels.isin(("normal", "pneumonia"))
    if bad.any():
        raise DataError(f"{path}: label must be normal or pneumonia ({int(bad.sum())} rows are not, "
                        f"first: row {int(bad.idxmax()) + 1})")
    rows = pd.DataFrame({
        "id": df["image"].str.rsplit(".", n=1).str[0], "image": df["image"], "patient_id": df["patient_id"],
        "Pneumonia": (labels == "pneumonia").astype(float),
        "subtype": df["subtype"] if "subtype" in df.columns else labels,
    })
    return Table(rows, root, ["Pneumonia"], has_text=False, stratify="subtype")


ADAPTER = Adapter(
    name="kermany", kind="labelled", load=load, options=(),
    description="Kermany paediatric pneumonia (normal / bacterial / viral), folder layout or labels.csv",
    layout="chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg  (or labels.csv + images/)",
)
