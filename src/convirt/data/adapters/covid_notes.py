"""The COVID-19 image data collection (Cohen et al., 2020): chest X-rays with clinical notes.

Two layouts are read:

* the GitHub repository ``ieee8023/covid-chestxray-dataset``: ``metadata.csv`` with ``patientid``,
  ``offset``, ``sex``, ``age``, ``finding``, ..., ``view``, ``modality``, ``date``, ``location``,
  ``folder``, ``filename``, ``doi``, ``url``, ``license``, ``clinical_notes``, ``other_notes``;
  images at ``<folder>/<filename>`` (``images/`` or ``volumes/``); CT rows are skipped;
* the curated copy in ``../shared/data/covid-cxr-notes``: ``metadata.csv`` with ``image``,
  ``patient_id``, ``offset_days``, ``sex``, ``age``, ``finding``, ``view``, ``frontal``, ``license``,
  ``doi``, ``url``, ``notes``.

The text is the clinical note (a case narrative, not a structured report); notes repeat across a
patient's images, which is why splits are by patient. ``COVID-19`` is 1 when the finding names it,
0 for another named finding, blank for ``todo`` (unknown). The licence and source columns are kept
for attribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, read_csv, require, require_columns
from convirt.data.reports import normalize_report

FRONTAL = {"PA", "AP", "AP SUPINE", "AP SEMI ERECT", "AP ERECT"}
UNKNOWN_FINDINGS = {"", "todo", "unknown"}
KEEP = ("finding", "view", "sex", "age", "offset", "license", "doi", "url")


def load(root: Path, options: Options, out: Path) -> Table:
    path = require(root / "metadata.csv", "metadata.csv of the COVID-19 image data collection",
                   "clone https://github.com/ieee8023/covid-chestxray-dataset and pass its folder as --root")
    df = read_csv(path)
    dropped = {}
    if "filename" in df.columns:  # the original repository
        require_columns(df, ("patientid", "finding", "view", "modality", "folder", "filename", "clinical_notes"), path)
        xray = df["modality"].str.strip().str.lower() == "x-ray"
        if (~xray).sum():
            dropped["not an X-ray (CT)"] = int((~xray).sum())
        df = df[xray]
        image = df["folder"].str.strip() + "/" + df["filename"].str.strip()
        frontal = df["view"].str.strip().str.upper().isin(FRONTAL)
        rows = pd.DataFrame({"image": image, "patient_id": df["patientid"], "text": df["clinical_notes"],
                             "offset": df.get("offset", "")})
    else:  # the curated copy
        require_columns(df, ("image", "patient_id", "finding", "notes"), path)
        frontal = df["frontal"].str.strip() == "1" if "frontal" in df.columns else df["view"].str.upper().isin(FRONTAL)
        rows = pd.DataFrame({"image": df["image"], "patient_id": df["patient_id"], "text": df["notes"],
                             "offset": df.get("offset_days", "")})
    for column in KEEP:
        if column not in rows.columns and column in df.columns:
            rows[column] = df[column].values
    rows["id"] = rows["image"].str.rsplit(".", n=1).str[0]
    finding = df["finding"].fillna("").str.strip()
    rows["COVID-19"] = np.where(finding.str.lower().isin(UNKNOWN_FINDINGS), np.nan,
                                finding.str.contains("COVID-19", case=False, regex=False).astype(float))
    if options.frontal_only:
        if (~frontal).sum():
            dropped["not a frontal view"] = int((~frontal).sum())
        rows = rows[frontal.values]
    rows["text"] = [normalize_report(t) for t in rows["text"].fillna("")]
    empty = rows["text"] == ""
    if empty.sum():
        dropped["empty report"] = int(empty.sum())
    rows = rows[~empty].reset_index(drop=True)
    return Table(rows, root, ["COVID-19"], has_text=True, stratify="COVID-19", dropped=dropped)


ADAPTER = Adapter(
    name="covid-notes", kind="image-text", load=load, options=("frontal_only",),
    description="COVID-19 image data collection (Cohen et al.): chest X-rays with clinical notes",
    layout="metadata.csv + images/ (github.com/ieee8023/covid-chestxray-dataset, or the curated covid-cxr-notes)",
)
