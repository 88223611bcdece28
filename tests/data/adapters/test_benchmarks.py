"""CheXpert 8x200 (the official files of github.com/yuhaozhang/convirt: ``image-retrieval/candidate.csv`` with
CheXpert's train.csv columns, ``image-retrieval/query.csv`` with ``Variable,Path``, ``text-retrieval/query.csv``
with ``Variable,Text``) and GLoRIA's 5x200 drawn from CheXpert's ``train.csv``."""

from __future__ import annotations

import pandas as pd
import pytest

from convirt.data.adapters.benchmarks import RETRIEVAL_CLASSES, select_5x200
from convirt.data.adapters.labels import CHEXPERT_LABELS, COMPETITION_LABELS
from convirt.errors import DataError

from tests.data.adapters.files import run, write_image

HEAD = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def _row(patient, study=1, frontal=True, **labels):
    view = "view1_frontal" if frontal else "view2_lateral"
    cells = dict.fromkeys(CHEXPERT_LABELS, "")
    cells.update(labels)
    return {"Path": f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/{view}.jpg", "Sex": "Male", "Age": "60",
            "Frontal/Lateral": "Frontal" if frontal else "Lateral", "AP/PA": "AP" if frontal else "", **cells}


def test_8x200_from_official_files(tmp_path):
    root, files = tmp_path / "CheXpert-v1.0-small", tmp_path / "convirt"
    candidates, queries, texts, patient = [], [], [], 0
    for label in RETRIEVAL_CLASSES:
        for k in range(5):
            patient += 1
            row = _row(patient, **{c: "0.0" for c in CHEXPERT_LABELS})
            row[label] = "1.0"
            (queries if k < 2 else candidates).append(row)
        texts.append({"Variable": label, "Text": f"{label} is present."})
    for row in candidates + queries:
        write_image(root / row["Path"].split("/", 1)[1], seed=len(candidates))
    (files / "image-retrieval").mkdir(parents=True)
    (files / "text-retrieval").mkdir()
    pd.DataFrame(candidates, columns=HEAD).to_csv(files / "image-retrieval" / "candidate.csv", index=False)
    pd.DataFrame({"Variable": [next(c for c in RETRIEVAL_CLASSES if q[c] == "1.0") for q in queries],
                  "Path": [q["Path"] for q in queries]}).to_csv(files / "image-retrieval" / "query.csv", index=False)
    pd.DataFrame(texts).to_csv(files / "text-retrieval" / "query.csv", index=False)

    summary, df = run("chexpert-8x200", root, tmp_path / "out", files=files)
    assert len(df) == 8 * 3 and set(df["split"]) == {"test"}
    assert df.groupby("class").size().to_dict() == dict.fromkeys(RETRIEVAL_CLASSES, 3)
    assert (df[list(RETRIEVAL_CLASSES)].sum(axis=1) == 1).all()
    assert all(df.loc[i, row_class] == 1 for i, row_class in df["class"].items())
    image_queries = pd.read_csv(tmp_path / "out" / "image_queries.csv")
    assert len(image_queries) == 16 and image_queries["image"].str.startswith("data/train/").all()
    assert (tmp_path / "out" / image_queries["image"][0]).is_file()
    assert pd.read_csv(tmp_path / "out" / "text_queries.csv")["text"].tolist()[0] == "Atelectasis is present."
    assert summary["notes"]["queries that are also candidates"] == 0


@pytest.fixture
def train_csv(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rows, patient = [], 0
    for label in COMPETITION_LABELS:
        for k in range(8):
            patient += 1
            rows.append(_row(patient, **{label: "1.0", "No Finding": "1.0" if k == 0 else "", "Support Devices": "0.0"}))
        patient += 1
        rows.append(_row(patient, **{label: "1.0", "Edema" if label != "Edema" else "Atelectasis": "1.0"}))  # two labels
        patient += 1
        rows.append(_row(patient, **{label: "1.0", "Pneumonia": "-1.0"}))  # uncertain elsewhere: excluded
        patient += 1
        rows.append(_row(patient, frontal=False, **{label: "1.0"}))  # lateral: excluded
    for row in rows:
        write_image(root / row["Path"].split("/", 1)[1], seed=len(rows))
    pd.DataFrame(rows, columns=HEAD).to_csv(root / "train.csv", index=False)
    pd.DataFrame(columns=HEAD).to_csv(root / "valid.csv", index=False)
    return root, pd.DataFrame(rows, columns=HEAD)


def test_5x200_rule_and_seed(train_csv, tmp_path):
    root, train = train_csv
    summary, df = run("chexpert-5x200", root, tmp_path / "a", per_class=5, seed=1)
    assert df.groupby("class").size().to_dict() == dict.fromkeys(COMPETITION_LABELS, 5)
    assert set(df["split"]) == {"test"} and (df[list(COMPETITION_LABELS)].sum(axis=1) == 1).all()
    def exclusive(row):  # frontal, one competition label positive, every other label except No Finding 0 or blank
        ones = [c for c in CHEXPERT_LABELS if c != "No Finding" and row[c] == "1.0"]
        rest = [c for c in CHEXPERT_LABELS if c not in ("No Finding", *ones)]
        return (row["Frontal/Lateral"] == "Frontal" and len(ones) == 1 and ones[0] in COMPETITION_LABELS
                and all(row[c] in ("", "0.0") for c in rest))

    eligible = {r["Path"].split("/", 1)[1].rsplit(".", 1)[0] for r in train.to_dict("records") if exclusive(r)}
    assert len(eligible) == 8 * 5
    assert set(df["id"]) <= eligible
    same, df_same = run("chexpert-5x200", root, tmp_path / "b", per_class=5, seed=1)
    _, df_other = run("chexpert-5x200", root, tmp_path / "c", per_class=5, seed=2)
    assert df_same["id"].tolist() == df["id"].tolist() and set(df_other["id"]) != set(df["id"])
    with pytest.raises(DataError, match="only 8 frontal training images are positive for Atelectasis alone"):
        select_5x200(pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False), 9, 0)
