"""COVIDx CXR (Wang et al., COVID-Net, 2020): chest X-rays labelled COVID-19 positive / negative.

Layout of the Kaggle download (``--root``): ``train.txt``, ``test.txt`` and, from COVIDx CXR-3 on,
``val.txt`` (older releases: ``train_COVIDx9A.txt``, ``test_COVIDx9A.txt``), one image per line,
space separated: ``patient_id filename class data_source`` (e.g.
``379 SARS-10.1148rg.242035193-g04mr34g04a-Fig4a-day7.jpeg negative cohen``); images in ``train/``,
``val/`` and ``test/``. Classes are ``positive`` / ``negative`` (CXR-2 and later) or ``COVID-19`` /
``pneumonia`` / ``normal`` (V7A, 9A).

Patient ids are only unique within a source (``1`` exists in several), so the patient is
``source:patient_id``. The official split is kept; without ``val.txt`` a validation split is drawn
from train by patient. ``COVID-19`` is 1 for positive / COVID-19; three-class releases also get
``Pneumonia`` (non-COVID pneumonia).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table
from convirt.errors import DataError

SPLITS = {"train": "", "val": "valid", "test": "test"}  # train is drawn into train/valid unless val.txt exists


def _list_file(root: Path, split: str) -> Path | None:
    plain = root / f"{split}.txt"
    if plain.is_file():
        return plain
    found = sorted(root.glob(f"{split}_COVIDx*.txt"))
    return found[-1] if found else None


def parse_line(line: str) -> tuple[str, str, str, str]:
    """``(patient, filename, class, source)`` of one list line; the source is '' in 3-column files."""
    parts = line.split()
    if len(parts) >= 4:
        return parts[0], " ".join(parts[1:-2]), parts[-2], parts[-1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], ""
    raise DataError(f"cannot parse COVIDx line with {len(parts)} field(s): expected 'patient_id filename class source'")


def load(root: Path, options: Options, out: Path) -> Table:
    lists = {split: _list_file(root, split) for split in SPLITS}
    if lists["train"] is None and lists["test"] is None:
        raise DataError(f"expected COVIDx train.txt and test.txt under {root}; download COVIDx CXR from "
                        "https://www.kaggle.com/datasets/andyczhao/covidx-cxr2 and pass its folder as --root")
    has_val = lists["val"] is not None
    rows = []
    for split, path in lists.items():
        if path is None:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                patient, filename, label, source = parse_line(line)
            except DataError as err:
                raise DataError(f"{path}, line {number}: {err}") from None
            rows.append({"id": f"{split}/{filename}".rsplit(".", 1)[0], "image": f"{split}/{filename}",
                         "patient_id": f"{source}:{patient}" if source else patient,
                         "split": "train" if split == "train" and has_val else SPLITS[split],
                         "class": label, "source": source})
    df = pd.DataFrame(rows)
    classes = df["class"].str.lower()
    df["COVID-19"] = classes.isin(("positive", "covid-19")).astype(float)
    labels = ["COVID-19"]
    if classes.isin(("pneumonia", "normal")).any():
        df["Pneumonia"] = (classes == "pneumonia").astype(float)
        labels.append("Pneumonia")
    return Table(df, root, labels, has_text=False, stratify="class",
                 notes={"lists": sorted(p.name for p in lists.values() if p)})


ADAPTER = Adapter(
    name="covidx", kind="labelled", load=load, options=(),
    description="COVIDx CXR: COVID-19 positive/negative (or COVID-19/pneumonia/normal), official split",
    layout="{train,val,test}.txt ('patient_id filename class source') + {train,val,test}/<filename>",
)
