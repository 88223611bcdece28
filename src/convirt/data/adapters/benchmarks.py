"""Evaluation sets drawn from CheXpert: ConVIRT's 8x200 retrieval set and GLoRIA's 5x200 zero-shot set.

``chexpert-8x200`` (Zhang et al., ConVIRT) uses the official files of github.com/yuhaozhang/convirt
(``--files``, default ``--root``): ``image-retrieval/candidate.csv`` (CheXpert's ``train.csv``
columns: 8 x 200 frontal images, each positive for exactly one of Atelectasis, Cardiomegaly, Edema,
Fracture, No Finding, Pleural Effusion, Pneumonia, Pneumothorax), ``image-retrieval/query.csv``
(``Variable,Path``: 10 expert-selected query images per category) and ``text-retrieval/query.csv``
(``Variable,Text``: expert-written text queries). The manifest holds the candidates;
``image_queries.csv`` and ``text_queries.csv`` hold the queries.

``chexpert-5x200`` (Huang et al., GLoRIA) is built from CheXpert's ``train.csv`` as GLoRIA builds
it: frontal images, blanks read as 0, positive (exactly 1) for one of the 5 competition labels and
exactly 0 for the 12 other labels except No Finding (uncertain -1 excludes an image), then
``--per-class`` (200) images per class drawn with ``--seed``. Images already in a retrieval or
zero-shot set should be left out of pretraining on CheXpert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.adapters.base import Adapter, Options, Table, label_series, read_csv, require, require_columns, strip_prefix
from convirt.data.adapters.chexpert import PREFIXES, read_chexpert_csv
from convirt.data.adapters.labels import CHEXPERT_LABELS, COMPETITION_LABELS
from convirt.errors import DataError

RETRIEVAL_CLASSES = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture", "No Finding", "Pleural Effusion", "Pneumonia",
                     "Pneumothorax")
FILES_HINT = "get image-retrieval/ and text-retrieval/ from https://github.com/yuhaozhang/convirt and pass --files DIR"


def _image_fields(path: str) -> dict:
    image = strip_prefix(path.strip(), PREFIXES)
    return {"id": image.rsplit(".", 1)[0], "image": image, "patient_id": image.split("/")[1]}


def load_8x200(root: Path, options: Options, out: Path) -> Table:
    files = options.files or root
    candidates_path = require(files / "image-retrieval" / "candidate.csv", "the 8x200 candidates", FILES_HINT)
    image_queries_path = require(files / "image-retrieval" / "query.csv", "the 8x200 image queries", FILES_HINT)
    candidates = read_csv(candidates_path)
    require_columns(candidates, ("Path", *RETRIEVAL_CLASSES), candidates_path)
    labels = pd.DataFrame({c: label_series(candidates[c], f"{candidates_path.name}, {c}").fillna(0.0)
                           for c in RETRIEVAL_CLASSES})
    positive = labels == 1
    if (positive.sum(axis=1) != 1).any():
        raise DataError(f"{candidates_path}: {int((positive.sum(axis=1) != 1).sum())} candidate(s) are not positive "
                        "for exactly one of the 8 categories: is this the official file?")
    rows = pd.DataFrame([_image_fields(p) for p in candidates["Path"]])
    rows["split"] = "test"
    rows["class"] = positive.idxmax(axis=1).values
    rows = pd.concat([rows, labels], axis=1)

    queries = read_csv(image_queries_path)
    require_columns(queries, ("Variable", "Path"), image_queries_path)
    image_queries = pd.DataFrame([_image_fields(p) for p in queries["Path"]]).assign(**{"class": queries["Variable"].values})
    extra = {"image_queries.csv": image_queries[["id", "image", "patient_id", "class"]]}
    text_path = files / "text-retrieval" / "query.csv"
    if text_path.is_file():
        text_queries = read_csv(text_path)
        require_columns(text_queries, ("Variable", "Text"), text_path)
        extra["text_queries.csv"] = text_queries.rename(columns={"Variable": "class", "Text": "text"})
    overlap = len(set(rows["id"]) & set(image_queries["id"]))
    notes = {"candidates per class": rows["class"].value_counts().sort_index().to_dict(),
             "image queries": len(image_queries), "text queries": len(extra.get("text_queries.csv", [])),
             "queries that are also candidates": overlap}
    return Table(rows, root, list(RETRIEVAL_CLASSES), has_text=False, notes=notes, extra_tables=extra)


def select_5x200(train: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """GLoRIA's rule (module docstring) on a CheXpert train.csv frame; rows sorted by class then path."""
    df = train[train["Frontal/Lateral"].str.strip() == "Frontal"]
    values = pd.DataFrame({c: label_series(df[c], c).fillna(0.0) for c in CHEXPERT_LABELS}, index=df.index)
    others = [c for c in CHEXPERT_LABELS if c != "No Finding"]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in COMPETITION_LABELS:
        rest = [c for c in others if c != label]
        mask = (values[label] == 1) & (values[rest] == 0).all(axis=1)
        pool = df.loc[mask].sort_values("Path")
        if len(pool) < per_class:
            raise DataError(f"only {len(pool)} frontal training images are positive for {label} alone; "
                            f"{per_class} per class were asked (--per-class)")
        picked = pool.iloc[np.sort(rng.choice(len(pool), size=per_class, replace=False))]
        chosen.append(picked.assign(**{"class": label}))
    return pd.concat(chosen, ignore_index=True)


def load_5x200(root: Path, options: Options, out: Path) -> Table:
    per_class = options.per_class or 200
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1; got {per_class}")
    train = read_chexpert_csv(root, "train.csv")
    picked = select_5x200(train, per_class, options.seed)
    rows = picked[["id", "image", "patient_id", "class"]].assign(split="test")
    for label in COMPETITION_LABELS:
        rows[label] = (rows["class"] == label).astype(float)
    return Table(rows, root, list(COMPETITION_LABELS), has_text=False,
                 notes={"per class": per_class, "sampling seed": options.seed,
                        "rule": "frontal; 1 for the class, 0 for the 12 other labels except No Finding"})


ADAPTERS = (
    Adapter(name="chexpert-8x200", kind="benchmark", load=load_8x200, options=("files",),
            description="ConVIRT's CheXpert 8x200 image/text retrieval set from the official candidate/query files",
            layout="CheXpert images (--root) + image-retrieval/{candidate,query}.csv, text-retrieval/query.csv (--files)"),
    Adapter(name="chexpert-5x200", kind="benchmark", load=load_5x200, options=("per_class",),
            description="GLoRIA-style CheXpert 5x200 zero-shot classification set, drawn with --seed",
            layout="CheXpert-v1.0-small/train.csv + train/patient*/study*/view*_frontal.jpg"),
)
