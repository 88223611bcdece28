"""The synthetic data set is the project's default data and the ground truth of its quantitative
tests, so its guarantees are tested here: determinism, labels <-> masks <-> report consistency,
manifest format and patient-grouped splits."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from convirt.data.synthetic import (FINDINGS, LATERALISED, LESIONS, MASK_BITS, assign_patients, generate,
                                    make_study)
from convirt.errors import ConfigError

KEYWORD = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
           "Edema": "edema", "Pleural Effusion": "pleural effusion", "Pneumonia": "pneumonia",
           "Pneumothorax": "pneumothorax", "Fracture": "fracture"}
NORMAL_IMPRESSIONS = {"No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph."}


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root / "a", n=12, seed=3, size=48, workers=1, progress=False)
    generate(root / "b", n=12, seed=3, size=48, workers=2, progress=False)
    generate(root / "c", n=12, seed=4, size=48, workers=1, progress=False)
    return root


def test_same_seed_same_bytes_for_any_number_of_workers(small_set):
    a, b = _files(small_set / "a"), _files(small_set / "b")
    assert len(a) == 2 * 12 + 3 and a == b


def test_different_seed_different_data(small_set):
    a, c = _files(small_set / "a"), _files(small_set / "c")
    assert a["manifest.csv"] != c["manifest.csv"]
    assert all(a[f"images/synth_{i:06d}.png"] != c[f"images/synth_{i:06d}.png"] for i in range(12))


def test_manifest_columns_and_labels(small_set):
    df = pd.read_csv(small_set / "a" / "manifest.csv")
    assert list(df.columns) == ["image", "text", "patient_id", "split", *FINDINGS]
    assert set(np.unique(df[FINDINGS].to_numpy())) <= {0, 1}
    assert (df["No Finding"] == (df[LESIONS].sum(axis=1) == 0)).all()
    assert all((small_set / "a" / p).is_file() for p in df["image"])
    assert df["text"].str.startswith("FINDINGS: ").all() and df["text"].str.contains(" IMPRESSION: ").all()


def test_masks_on_disk_match_labels(small_set):
    from PIL import Image

    df = pd.read_csv(small_set / "a" / "manifest.csv")
    for _, row in df.iterrows():
        mask = np.asarray(Image.open(small_set / "a" / row["image"].replace("images/", "masks/")))
        assert mask.dtype == np.uint8
        for name in LESIONS:
            assert bool((mask & MASK_BITS[name]).any()) == bool(row[name]), (row["image"], name)


def _impression_sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.split(" IMPRESSION: ")[1].split(".") if s.strip()]


@pytest.mark.parametrize("strength", [1.0, 0.25, 3.0])
def test_labels_masks_and_report_agree(strength):
    n = 240 if strength == 1.0 else 80
    seen = {name: 0 for name in LESIONS}
    filler = total = 0
    for i in range(n):
        st = make_study(seed=11, index=i, patient=i, size=64, strength=strength)
        positive = {f.name: f for f in st.findings}
        impression = _impression_sentences(st.text)
        if not positive:
            assert len(impression) == 1 and impression[0] in NORMAL_IMPRESSIONS
        for name in LESIONS:
            bit = (st.mask & MASK_BITS[name]) > 0
            assert bit.any() == (name in positive), (i, name)
            assert not (bit & ~st.body).any(), (i, name)  # masks lie inside the body
            mentioned = [s for s in impression if KEYWORD[name] in s.lower()]
            assert bool(mentioned) == (name in positive), (i, name, st.text)
            if name not in positive:
                continue
            seen[name] += 1
            finding = positive[name]
            if name in LATERALISED:
                assert finding.side in mentioned[0].lower().split(), (i, name, mentioned)
                cols = np.flatnonzero(bit.any(axis=0))
                midline = np.flatnonzero(st.body.any(axis=0)).mean()
                if finding.side == "right":  # the patient's right is on the image left
                    assert cols.max() < midline, (i, name)
                elif finding.side == "left":
                    assert cols.min() > midline, (i, name)
                else:
                    assert cols.min() < midline < cols.max(), (i, name)
        sentences = [s for s in re.split(r"(?<=\.) ", st.text.split(" IMPRESSION: ")[0][len("FINDINGS: "):])]
        total += len(sentences)
        filler += sum(not any(k in s.lower() for k in ("heart", "cardi", "lung", "osseous", "costophrenic",
                                                         "vascular", *KEYWORD.values())) for s in sentences)
    assert min(seen.values()) >= 3, seen
    assert filler / total < 0.05  # nearly every sentence is about a finding


def test_splits_grouped_by_patient_and_prefix_stable():
    patients, splits = assign_patients(500, seed=0)
    by_patient: dict[int, set[str]] = {}
    for p, s in zip(patients, splits):
        by_patient.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    counts = np.bincount(patients)
    assert counts.max() == 2 and (counts == 2).sum() >= 50
    assert set(splits) == {"train", "valid", "test"}
    assert assign_patients(100, seed=0) == (patients[:100], splits[:100])


def test_invalid_arguments_are_user_errors(tmp_path):
    with pytest.raises(ConfigError):
        generate(tmp_path, n=0, seed=0, progress=False)
    with pytest.raises(ConfigError):
        generate(tmp_path, n=2, seed=0, strength={"Nodule": 2.0}, progress=False)
    with pytest.raises(ConfigError):
        generate(tmp_path, n=2, seed=0, strength=10.0, progress=False)


def test_cli(tmp_path):
    from convirt.cli.main import main

    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--n", "3", "--size", "48", "--workers", "1",
                 "--no-progress"]) == 0
    assert len(pd.read_csv(out / "manifest.csv")) == 3 and (out / "meta.json").is_file()
