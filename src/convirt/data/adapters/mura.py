"""MURA (Rajpurkar et al., 2017): musculoskeletal radiographs with study-level abnormal labels.

Layout of ``MURA-v1.1/`` (``--root``): ``train_image_paths.csv`` and ``valid_image_paths.csv`` (no
header; ``MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png``), and
``train_labeled_studies.csv`` / ``valid_labeled_studies.csv`` (no header;
``MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/,1``). Paths start with the download's
folder name, which is removed.

One row per study (the labelled unit): its images ``|``-joined, ``Abnormal`` 0/1, ``body_part``
(elbow, finger, forearm, hand, humerus, shoulder, wrist). A patient can have studies of several
body parts; they stay in one split. The test set is hidden, so the official validation set is the
test split and a validation split is drawn from train by patient, stratified by body part and label.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, read_csv, require, strip_prefix
from convirt.errors import DataError

HINT = "download MURA-v1.1 from https://stanfordmlgroup.github.io/competitions/mura/ and pass that folder as --root"


def load(root: Path, options: Options, out: Path) -> Table:
    rows = []
    for split_name, split in (("train", ""), ("valid", "test")):
        images_path = require(root / f"{split_name}_image_paths.csv", f"MURA's {split_name}_image_paths.csv", HINT)
        studies_path = require(root / f"{split_name}_labeled_studies.csv", f"MURA's {split_name}_labeled_studies.csv", HINT)
        images = read_csv(images_path, header=None, names=["path"])
        studies = read_csv(studies_path, header=None, names=["study", "label"])
        views: dict[str, list[str]] = {}
        for path in images["path"]:
            path = strip_prefix(path.strip(), ("MURA",))
            views.setdefault(path.rsplit("/", 1)[0], []).append(path)
        for study, label in zip(studies["study"], studies["label"]):
            study = strip_prefix(study.strip(), ("MURA",)).rstrip("/")
            if label.strip() not in ("0", "1"):
                raise DataError(f"{studies_path}: label {label!r} of {study} is not 0 or 1")
            parts = study.split("/")  # train/XR_SHOULDER/patient00001/study1_positive
            if len(parts) != 4:
                raise DataError(f"{studies_path}: unexpected study path {study!r} (expected split/XR_PART/patient/study)")
            rows.append({"id": study, "image": "|".join(sorted(views.get(study, []))), "patient_id": parts[2],
                         "split": split, "Abnormal": float(label.strip()),
                         "body_part": parts[1].removeprefix("XR_").lower()})
    df = pd.DataFrame(rows)
    df["stratum"] = df["body_part"] + ":" + df["Abnormal"].astype(int).astype(str)
    return Table(df, root, ["Abnormal"], has_text=False, stratify="stratum",
                 notes={"official valid": "test split"})


ADAPTER = Adapter(
    name="mura", kind="labelled", load=load, options=(),
    description="MURA musculoskeletal radiographs: study-level Abnormal label, 7 body parts; valid = test",
    layout="MURA-v1.1/{train,valid}_{image_paths,labeled_studies}.csv + {train,valid}/XR_*/patient*/study*_*/image*.png",
)
