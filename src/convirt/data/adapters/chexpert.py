"""CheXpert (Irvin et al., AAAI 2019) as a labelled set, and with CheXpert Plus reports as an image-text set.

Layout of ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``; ``--root``): ``train.csv`` and
``valid.csv`` with ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14 labels (1.0, 0.0, -1.0,
blank; valid.csv has no uncertain or blank cells), images at
``train/patient00001/study1/view1_frontal.jpg``. ``Path`` starts with the download's folder name
(``CheXpert-v1.0-small/train/...``), which is removed.

``chexpert``: one row per image; the 5 competition labels (``--labels all``: 14) after an
uncertainty policy (default U-Ones). The test set is not public, so, as in ConVIRT, the official
validation set is the test split and a validation split is drawn from train by patient.

``chexpert-plus``: CheXpert Plus (Chambon et al., 2024) adds ``df_chexpert_plus_240401.csv`` with
``path_to_image`` (``train/patient42142/study5/view1_frontal.jpg``), ``section_findings``,
``section_impression``, ``report``, ``split``; one row per study (views ``|``-joined), labels kept as
published. Studies without a report are left out and counted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, read_csv, require, require_columns, strip_prefix
from convirt.data.adapters.labels import CHEXPERT_LABELS, COMPETITION_LABELS, apply_uncertainty
from convirt.data.adapters.report_text import compose, report_text
from convirt.errors import DataError

PREFIXES = ("CheXpert-v1.0",)
HINT = ("download CheXpert-v1.0-small (or CheXpert-v1.0) from https://stanfordmlgroup.github.io/competitions/chexpert/ "
        "and pass that folder as --root")


def read_chexpert_csv(root: Path, name: str) -> pd.DataFrame:
    """``train.csv`` / ``valid.csv`` with ``image`` (relative to ``root``), ``id`` and ``patient_id`` added."""
    path = require(root / name, f"CheXpert's {name}", HINT)
    df = read_csv(path)
    require_columns(df, ("Path", "Frontal/Lateral", *CHEXPERT_LABELS), path)
    image = df["Path"].map(lambda p: strip_prefix(p, PREFIXES))
    parts = image.str.split("/")
    return df.assign(image=image, id=image.str.rsplit(".", n=1).str[0], patient_id=parts.str[1],
                     study=parts.str[1] + "/" + parts.str[2])


def _images(root: Path, options: Options) -> tuple[pd.DataFrame, dict]:
    train, valid = read_chexpert_csv(root, "train.csv"), read_chexpert_csv(root, "valid.csv")
    df = pd.concat([train.assign(split=""), valid.assign(split="test")], ignore_index=True)
    dropped = {}
    if options.frontal_only:
        frontal = df["Frontal/Lateral"].str.strip() == "Frontal"
        if (~frontal).sum():
            dropped["not a frontal view"] = int((~frontal).sum())
        df = df[frontal].reset_index(drop=True)
    return df, dropped


def load_labelled(root: Path, options: Options, out: Path) -> Table:
    df, dropped = _images(root, options)
    labels = list(COMPETITION_LABELS if (options.labels or "competition") == "competition" else CHEXPERT_LABELS)
    df = apply_uncertainty(df, labels, options.uncertainty or "ones")
    keep = ["id", "image", "patient_id", "split", *labels, "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    return Table(df[[c for c in keep if c in df.columns]], root, labels, has_text=False, dropped=dropped,
                 notes={"uncertainty": options.uncertainty or "ones", "official valid.csv": "test split"})


def _plus_csv(root: Path, options: Options) -> Path:
    if options.reports and options.reports.is_file():
        return options.reports
    folder = options.reports or root
    found = sorted(folder.glob("df_chexpert_plus_*.csv")) + sorted(folder.glob("df_chexpert_plus_*.csv.gz"))
    if not found:
        raise DataError(f"expected the CheXpert Plus report table df_chexpert_plus_240401.csv under {folder}; download it "
                        "from https://aimi.stanford.edu/datasets/chexpert-plus and pass --reports PATH")
    return found[-1]


def load_plus(root: Path, options: Options, out: Path) -> Table:
    images, dropped = _images(root, options)
    path = _plus_csv(root, options)
    plus = read_csv(path)
    require_columns(plus, ("path_to_image", "section_findings", "section_impression", "report"), path)
    plus_study = plus["path_to_image"].map(lambda p: "/".join(strip_prefix(p, PREFIXES).split("/")[1:3]))
    texts, sources = {}, Counter()
    for study, findings, impression, raw in zip(plus_study, plus["section_findings"], plus["section_impression"],
                                                plus["report"]):
        if study in texts and texts[study]:
            continue
        text = compose(findings, impression)
        source = "sections"
        if not text:
            text, source = report_text(raw)
        texts[study] = text
        sources[source] += 1
    images = apply_uncertainty(images, CHEXPERT_LABELS, options.uncertainty or "keep")
    rows = []
    for study, views in images.groupby("study", sort=True):
        text = texts.get(study)
        if text is None:
            dropped["no report"] = dropped.get("no report", 0) + 1
            continue
        if not text:
            dropped["empty report"] = dropped.get("empty report", 0) + 1
            continue
        views = views.sort_values(["Frontal/Lateral", "image"])  # frontal views first
        first = views.iloc[0]
        rows.append({"id": study, "image": "|".join(views["image"]), "text": text, "patient_id": first["patient_id"],
                     "split": first["split"], **{label: first[label] for label in CHEXPERT_LABELS},
                     "view": "|".join(views["Frontal/Lateral"])})
    if not rows:
        raise DataError(f"no CheXpert study under {root} has a report in {path} (left out: {dropped})")
    return Table(pd.DataFrame(rows), root, list(CHEXPERT_LABELS), has_text=True, dropped=dropped,
                 notes={"text source": dict(sources), "reports from": path.name})


ADAPTERS = (
    Adapter(name="chexpert-plus", kind="image-text", load=load_plus,
            options=("frontal_only", "uncertainty", "reports"),
            description="CheXpert images + CheXpert Plus reports (findings/impression), one row per study",
            layout="CheXpert-v1.0-small/{train,valid}.csv + train/patient*/study*/view*.jpg; "
                   "df_chexpert_plus_240401.csv (--reports)"),
    Adapter(name="chexpert", kind="labelled", load=load_labelled, options=("frontal_only", "uncertainty", "labels"),
            description="CheXpert: 5 competition labels (or 14), uncertainty U-Ones/U-Zeros/U-Ignore; valid.csv = test",
            layout="CheXpert-v1.0-small/{train,valid}.csv + {train,valid}/patient*/study*/view*_{frontal,lateral}.jpg"),
)
