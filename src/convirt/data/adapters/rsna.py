"""RSNA Pneumonia Detection Challenge (Kaggle, 2018): DICOM chest X-rays with opacity boxes.

Layout of the Kaggle download ``rsna-pneumonia-detection-challenge/`` (``--root``):
``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``; one row per box, one row with
blank box for a negative image), ``stage_2_detailed_class_info.csv`` (``patientId,class``: ``Lung
Opacity``, ``Normal``, ``No Lung Opacity / Not Normal``) and ``stage_2_train_images/<patientId>.dcm``
(``stage_1_*`` names of the first stage are accepted too). The DICOM header gives ``PatientID``,
``PatientSex``, ``PatientAge`` and ``ViewPosition`` (PA/AP).

One row per image: ``Pneumonia`` (= Target), ``boxes`` as JSON ``[[x, y, width, height], ...]`` in
pixels of the 1024 x 1024 image, the class, sex, age and view. The challenge's test images have no
labels, so all three splits are drawn from the training images by patient, stratified by label.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, find_first, progress, read_csv, require_columns
from convirt.data.adapters.dicom_tags import read_tags
from convirt.errors import DataError

HINT = "download https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data and pass its folder as --root"


def load(root: Path, options: Options, out: Path) -> Table:
    labels_path = find_first(root, ("stage_2_train_labels.csv", "stage_1_train_labels.csv"), "RSNA labels", HINT)
    stage = labels_path.name.split("_train")[0]
    image_dir = root / f"{stage}_train_images"
    if not image_dir.is_dir():
        raise DataError(f"expected the DICOM folder {image_dir} beside {labels_path.name}; {HINT}")
    labels = read_csv(labels_path)
    require_columns(labels, ("patientId", "x", "y", "width", "height", "Target"), labels_path)
    classes = {}
    info_path = root / f"{stage}_detailed_class_info.csv"
    if info_path.is_file():
        info = read_csv(info_path)
        require_columns(info, ("patientId", "class"), info_path)
        classes = dict(zip(info["patientId"], info["class"]))

    rows = []
    for image_id, group in progress(labels.groupby("patientId", sort=True), "reading DICOM headers", options,
                                    total=labels["patientId"].nunique(), unit="img"):
        target = group["Target"].astype(int).max()
        boxes = [[float(r.x), float(r.y), float(r.width), float(r.height)]
                 for r in group.itertuples() if r.Target == "1" and r.x != ""]
        path = image_dir / f"{image_id}.dcm"
        tags = read_tags(path) if path.is_file() else {}
        rows.append({"id": image_id, "image": f"{image_dir.name}/{image_id}.dcm",
                     "patient_id": tags.get("PatientID") or image_id, "Pneumonia": float(target),
                     "boxes": json.dumps(boxes), "class": classes.get(image_id, ""),
                     "view": tags.get("ViewPosition", ""), "sex": tags.get("PatientSex", ""),
                     "age": tags.get("PatientAge", "")})
    return Table(pd.DataFrame(rows), root, ["Pneumonia"], has_text=False, stratify="Pneumonia",
                 notes={"boxes": "[x, y, width, height] in pixels", "boxes total": int((labels["Target"] == "1").sum())})


ADAPTER = Adapter(
    name="rsna-pneumonia", kind="labelled", load=load, options=(),
    description="RSNA Pneumonia Detection: DICOM images, pneumonia label and opacity boxes",
    layout="stage_2_train_labels.csv, stage_2_detailed_class_info.csv, stage_2_train_images/<patientId>.dcm",
)
