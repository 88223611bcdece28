"""MIMIC-CXR-JPG (Johnson et al., PhysioNet) images with the MIMIC-CXR free-text reports.

Layout of ``physionet.org/files/mimic-cxr-jpg/2.0.0/`` (``--root``; 2.1.0 is the same):
``mimic-cxr-2.0.0-metadata.csv.gz`` (``dicom_id, subject_id, study_id, PerformedProcedureStepDescription,
ViewPosition, Rows, Columns, StudyDate, StudyTime, ...``), ``mimic-cxr-2.0.0-chexpert.csv.gz`` and
``-negbio.csv.gz`` (``subject_id, study_id`` + 14 labels, 1.0/0.0/-1.0/blank),
``mimic-cxr-2.0.0-split.csv.gz`` (``dicom_id, study_id, subject_id, split`` in train/validate/test),
and ``files/p10/p10000032/s50414267/<dicom_id>.jpg``. The reports come from the MIMIC-CXR (DICOM)
project's ``mimic-cxr-reports.zip``: ``files/p10/p10000032/s50414267.txt``; they are read from
``--reports`` (the unzipped folder or the zip itself) or from ``--root`` when unzipped there.
Plain ``.csv`` files are accepted as well as ``.csv.gz``.

One row per study (the report's unit): its views ``|``-joined, frontal (PA/AP) first;
``--frontal-only`` keeps PA and AP views and drops studies without one. The text is FINDINGS and
IMPRESSION with fallbacks (:mod:`convirt.data.adapters.report_text`); the summary counts which
rule gave each text. The official split is kept (``validate`` -> ``valid``).
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd

from convirt.data.adapters.base import (FRONTAL_VIEWS, Adapter, Options, Table, progress, read_csv, require_columns)
from convirt.data.adapters.labels import CHEXPERT_LABELS, apply_uncertainty
from convirt.data.adapters.report_text import report_text
from convirt.errors import DataError

PHYSIONET_JPG = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
PHYSIONET_REPORTS = "https://physionet.org/content/mimic-cxr/2.0.0/ (mimic-cxr-reports.zip)"


def _table_file(root: Path, kind: str) -> Path:
    found = sorted(root.glob(f"mimic-cxr-2.*-{kind}.csv.gz")) + sorted(root.glob(f"mimic-cxr-2.*-{kind}.csv"))
    if not found:
        raise DataError(f"expected mimic-cxr-2.0.0-{kind}.csv.gz under {root}; download MIMIC-CXR-JPG from "
                        f"{PHYSIONET_JPG} and pass its version folder as --root")
    return found[0]


def study_folder(subject_id: str, study_id: str) -> str:
    """``files/p10/p10000032/s50414267`` for subject 10000032, study 50414267."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


class _Reports:
    """Report files from a folder holding ``files/`` or from ``mimic-cxr-reports.zip``."""

    def __init__(self, root: Path, options: Options) -> None:
        candidates = [options.reports] if options.reports else [root, root / "mimic-cxr-reports.zip",
                                                                  root / "mimic-cxr-reports"]
        self.zip, self.folder = None, None
        for c in candidates:
            if c.is_file() and zipfile.is_zipfile(c):
                self.zip = zipfile.ZipFile(c)
                self.names = {n.split("files/", 1)[-1]: n for n in self.zip.namelist() if n.endswith(".txt")}
                return
            if c.is_dir() and any((c / "files").glob("p*/p*/s*.txt")):
                self.folder = c
                return
        where = options.reports or root
        raise DataError(f"expected MIMIC-CXR reports (files/p10/p10000032/s50414267.txt) under {where}: download "
                        f"{PHYSIONET_REPORTS} and unzip it into --root, or pass --reports FOLDER_OR_ZIP")

    def read(self, folder: str) -> str | None:
        if self.zip is not None:
            name = self.names.get(folder.removeprefix("files/") + ".txt")
            return None if name is None else self.zip.read(name).decode("utf-8", errors="replace")
        path = self.folder / f"{folder}.txt"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def load(root: Path, options: Options, out: Path) -> Table:
    meta_path, split_path = _table_file(root, "metadata"), _table_file(root, "split")
    labels_path = _table_file(root, options.labeler or "chexpert")
    meta = read_csv(meta_path)
    require_columns(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), meta_path)
    splits = read_csv(split_path)
    require_columns(splits, ("dicom_id", "study_id", "subject_id", "split"), split_path)
    labels = read_csv(labels_path)
    require_columns(labels, ("subject_id", "study_id", *CHEXPERT_LABELS), labels_path)
    reports = _Reports(root, options)

    dropped: dict[str, int] = {}
    meta = meta.assign(frontal=meta["ViewPosition"].str.strip().str.upper().isin(FRONTAL_VIEWS))
    if options.frontal_only:
        n_studies = meta["study_id"].nunique()
        meta = meta[meta["frontal"]]
        if n_studies - meta["study_id"].nunique():
            dropped["no frontal view"] = int(n_studies - meta["study_id"].nunique())
    meta = meta.sort_values(["subject_id", "study_id", "frontal", "dicom_id"], ascending=[True, True, False, True])
    split_of = splits.groupby("study_id")["split"].agg(lambda s: Counter(s).most_common(1)[0][0])
    labels = apply_uncertainty(labels, CHEXPERT_LABELS, options.uncertainty or "keep")
    labels = labels.drop_duplicates("study_id").set_index("study_id")

    rows, sources = [], Counter()
    groups = meta.groupby(["subject_id", "study_id"], sort=False)
    for (subject, study), views in progress(groups, "reading reports", options, total=groups.ngroups, unit="study"):
        folder = study_folder(subject, study)
        raw = reports.read(folder)
        if raw is None:
            dropped["no report file"] = dropped.get("no report file", 0) + 1
            continue
        text, source = report_text(raw)
        sources[source] += 1
        if not text:
            dropped["empty report"] = dropped.get("empty report", 0) + 1
            continue
        rows.append({"id": f"s{study}", "image": "|".join(f"{folder}/{d}.jpg" for d in views["dicom_id"]),
                     "text": text, "patient_id": f"p{subject}", "split": split_of.get(study, ""),
                     "study_id": study, "view": "|".join(views["ViewPosition"].str.strip()),
                     "text_source": source})
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"no MIMIC-CXR study under {root} has a report (left out: {dropped})")
    label_frame = labels.reindex(df["study_id"])[list(CHEXPERT_LABELS)].reset_index(drop=True)
    df = pd.concat([df, label_frame], axis=1)  # a study without a label row keeps blank labels
    notes = {"text source": dict(sources), "labels from": labels_path.name,
             "studies without labels": int(label_frame.isna().all(axis=1).sum())}
    return Table(df, root, list(CHEXPERT_LABELS), has_text=True, dropped=dropped, notes=notes)


ADAPTER = Adapter(
    name="mimic-cxr", kind="image-text", load=load, options=("frontal_only", "uncertainty", "labeler", "reports"),
    description="MIMIC-CXR-JPG + MIMIC-CXR reports (FINDINGS/IMPRESSION with fallbacks), CheXpert/NegBio labels",
    layout="mimic-cxr-2.0.0-{metadata,chexpert,negbio,split}.csv.gz, files/p10/p10000032/s50414267/<dicom_id>.jpg; "
           "reports files/p10/p10000032/s50414267.txt (--reports)",
)
