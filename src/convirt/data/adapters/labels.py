"""CheXpert-style labels (MIMIC-CXR and CheXpert share them) and the uncertainty policies.

Cells are 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned). The CheXpert paper
(Irvin et al., 2019) compares policies for the uncertain label; a policy also decides what a blank
means, because training code needs a number: after ``ones``, ``zeros`` or ``ignore``, a blank
("not mentioned") is a negative, and with ``ignore`` a blank cell means "leave out of the loss".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from convirt.data.adapters.base import label_series
from convirt.errors import ConfigError

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POLICIES = ("ones", "zeros", "ignore", "keep")


def apply_uncertainty(df: pd.DataFrame, columns, policy: str) -> pd.DataFrame:
    """Label columns as numbers after ``policy``: U-Ones (-1 -> 1), U-Zeros (-1 -> 0), U-Ignore
    (-1 -> blank), or ``keep`` (1/0/-1/blank as published). Other columns are left alone."""
    if policy not in POLICIES:
        raise ConfigError(f"uncertainty policy must be one of {POLICIES}; got {policy!r}")
    df = df.copy()
    for column in columns:
        values = label_series(df[column], f"label column {column!r}")
        if policy != "keep":
            values = values.fillna(0.0)
            values = values.replace(-1.0, {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[policy])
        df[column] = values
    return df


def label_counts(df: pd.DataFrame, columns) -> dict:
    """Per label: positive, negative, uncertain and blank counts (numbers, never text)."""
    out = {}
    for column in columns:
        values = pd.to_numeric(df[column], errors="coerce")
        out[column] = {"positive": int((values == 1).sum()), "negative": int((values == 0).sum()),
                       "uncertain": int((values == -1).sum()), "blank": int(values.isna().sum())}
    return out
