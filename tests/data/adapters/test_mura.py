"""MURA-v1.1 as downloaded: header-less ``train_image_paths.csv`` / ``valid_image_paths.csv``
(``MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png``) and
``train_labeled_studies.csv`` / ``valid_labeled_studies.csv`` (``MURA-v1.1/.../study1_positive/,1``)."""

from __future__ import annotations

import pytest

from tests.data.adapters.files import run, write_image

PARTS = ["XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST"]


@pytest.fixture
def mura(tmp_path):
    root = tmp_path / "MURA-v1.1"
    studies = {"train": [], "valid": []}
    for p in range(1, 31):
        split = "valid" if p > 26 else "train"
        part = PARTS[p % 7]
        outcome = "positive" if p % 3 == 0 else "negative"
        studies[split].append((f"{split}/{part}/patient{p:05d}/study1_{outcome}", 1 + p % 3, outcome))
    studies["train"].append(("train/XR_HAND/patient00007/study2_negative", 1, "negative"))  # same patient, other part
    for split, rows in studies.items():
        image_lines, study_lines = [], []
        for k, (study, n_images, outcome) in enumerate(rows):
            for i in range(1, n_images + 1):
                write_image(root / study / f"image{i}.png", seed=k * 10 + i)
                image_lines.append(f"MURA-v1.1/{study}/image{i}.png\n")
            study_lines.append(f"MURA-v1.1/{study}/,{int(outcome == 'positive')}\n")
        (root / f"{split}_image_paths.csv").write_text("".join(image_lines))
        (root / f"{split}_labeled_studies.csv").write_text("".join(study_lines))
    return root, studies


def test_mura(mura, tmp_path):
    root, studies = mura
    summary, df = run("mura", root, tmp_path / "out")
    df = df.set_index("id")
    assert len(df) == sum(map(len, studies.values()))
    row = df.loc["train/XR_SHOULDER/patient00019/study1_negative"]
    assert row["image"].split("|") == [f"data/train/XR_SHOULDER/patient00019/study1_negative/image{i}.png" for i in (1, 2)]
    assert row["Abnormal"] == 0 and row["body_part"] == "shoulder"
    assert df.loc["train/XR_ELBOW/patient00021/study1_positive", "Abnormal"] == 1
    assert set(df.loc[df.index.str.startswith("valid/"), "split"]) == {"test"}
    assert set(df.loc[df.index.str.startswith("train/"), "split"]) <= {"train", "valid"}
    assert df.loc["train/XR_HAND/patient00007/study2_negative", "split"] == \
        df.loc["train/XR_ELBOW/patient00007/study1_negative", "split"]
    assert summary["images"] == sum(n for rows in studies.values() for _, n, _ in rows)
