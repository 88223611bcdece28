"""Kermany paediatric pneumonia: the original ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/`` layout
(file names ``IM-0115-0001.jpeg``, ``NORMAL2-IM-0950-0001.jpeg``, ``person1_bacteria_1.jpeg``,
``person1_virus_6.jpeg``; Kaggle's copy adds ``val/`` and ``.DS_Store`` files), and the real
``labels.csv`` + ``images/`` copy in ../shared/data/kermany-pneumonia."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from convirt.data.adapters.kermany import patient_from_name
from convirt.data.images import load_image

from tests.data.adapters.files import run, write_image


@pytest.fixture
def chest_xray(tmp_path):
    base = tmp_path / "download" / "chest_xray"
    names = []
    for i in range(24):
        names.append(("train", "NORMAL", f"IM-{100 + i:04d}-0001.jpeg"))
        names.append(("train", "PNEUMONIA", f"person{i + 1}_bacteria_{3 * i + 1}.jpeg"))
        if i % 3 == 0:  # the same child, a second (viral) image
            names.append(("train", "PNEUMONIA", f"person{i + 1}_virus_{3 * i + 2}.jpeg"))
    names += [("train", "NORMAL", "NORMAL2-IM-0950-0001.jpeg"), ("train", "NORMAL", "NORMAL2-IM-0950-0002.jpeg"),
              ("val", "NORMAL", "NORMAL2-IM-1427-0001.jpeg"), ("val", "PNEUMONIA", "person1946_bacteria_4874.jpeg"),
              ("test", "NORMAL", "IM-0001-0001.jpeg"), ("test", "PNEUMONIA", "person100_bacteria_475.jpeg"),
              ("test", "PNEUMONIA", "person101_virus_187.jpeg")]
    for k, (split, label, name) in enumerate(names):
        write_image(base / split / label / name, seed=k)
    (base / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return tmp_path / "download", names


def test_patient_ids_from_file_names():
    assert patient_from_name("person1_bacteria_1.jpeg") == "person1"
    assert patient_from_name("person1_virus_6.jpeg") == "person1"
    assert patient_from_name("IM-0115-0001.jpeg") == "IM-0115"
    assert patient_from_name("NORMAL2-IM-0950-0001.jpeg") == "IM2-0950"
    assert patient_from_name("scan.jpeg") is None


def test_folder_layout(chest_xray, tmp_path):
    root, names = chest_xray
    summary, df = run("kermany", root, tmp_path / "out")
    assert len(df) == len(names)  # .DS_Store ignored
    assert summary["labels"]["Pneumonia"] == {"positive": sum(n[1] == "PNEUMONIA" for n in names),
                                              "negative": sum(n[1] == "NORMAL" for n in names),
                                              "uncertain": 0, "blank": 0}
    by_file = df.set_index(df["image"].str.rsplit("/", n=1).str[-1])
    assert by_file.loc["person1_virus_2.jpeg", "subtype"] == "virus"
    assert by_file.loc["person1_virus_2.jpeg", "split"] == by_file.loc["person1_bacteria_1.jpeg", "split"]
    assert by_file.loc["NORMAL2-IM-0950-0001.jpeg", "patient_id"] == "IM2-0950"
    # the original test folder is the test split; nothing from train/val is put there
    test_files = {n[2] for n in names if n[0] == "test"}
    assert set(by_file.index[by_file["split"] == "test"]) == test_files
    assert {"train", "valid"} == set(df.loc[~by_file.index.isin(test_files), "split"])
    assert summary["official_split_rows"] == len(test_files)
    assert (tmp_path / "out" / "data").resolve() == (root / "chest_xray").resolve()
    assert "text" not in df.columns


def test_same_seed_same_split_other_seed_other_split(chest_xray, tmp_path):
    root, _ = chest_xray
    a, df_a = run("kermany", root, tmp_path / "a", seed=3)
    b, df_b = run("kermany", root, tmp_path / "b", seed=3)
    c, df_c = run("kermany", root, tmp_path / "c", seed=4)
    assert a["splits_sha256"] == b["splits_sha256"] and df_a["split"].tolist() == df_b["split"].tolist()
    assert df_a["split"].tolist() != df_c["split"].tolist() and a["splits_sha256"] != c["splits_sha256"]


def _labels_csv(root):
    with open(root / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_real_kermany(shared_data, tmp_path):
    root = shared_data / "kermany-pneumonia"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"Kermany data not found at {root}")
    rows = _labels_csv(root)
    summary, df = run("kermany", root, tmp_path / "out")
    assert len(df) == len(rows) == summary["images"]
    assert summary["labels"]["Pneumonia"]["positive"] == sum(r["label"] == "pneumonia" for r in rows)
    assert summary["patients"] == len({r["patient_id"] for r in rows})
    # the file-name rule used for the original layout agrees with the published patient ids
    assert all(patient_from_name(r["image"].rsplit("/", 1)[-1]) == r["patient_id"] for r in rows)
    # stratified: the normal share of every split is close to the overall share (unstratified patient
    # splits of this set are off by 3.6 points on average); subtypes less so: 808 children have both kinds
    normal = df["subtype"] == "normal"
    for split in ("train", "valid", "test"):
        assert abs(normal[df["split"] == split].mean() - normal.mean()) < 0.01
        share = df.loc[df["split"] == split, "subtype"].value_counts(normalize=True)
        assert (abs(share - df["subtype"].value_counts(normalize=True)) < 0.03).all()
    assert abs(summary["splits"]["test"]["rows"] / len(df) - 0.1) < 0.01
    # a sample of the linked images decodes (not all 5,190: the suite must stay fast)
    for cell in df["image"].sample(8, random_state=0):
        assert load_image(tmp_path / "out" / cell).shape == (224, 224)
    assert np.isfinite(df["Pneumonia"]).all()
