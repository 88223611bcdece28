"""RSNA Pneumonia Detection Challenge as Kaggle ships it: ``stage_2_train_labels.csv``
(``patientId,x,y,width,height,Target``; one row per box, blank box for negatives),
``stage_2_detailed_class_info.csv`` (``patientId,class``) and ``stage_2_train_images/<patientId>.dcm``
whose header carries PatientID (= patientId), PatientSex, PatientAge and ViewPosition."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest

from tests.data.adapters.files import run, write_dicom


@pytest.fixture
def rsna(tmp_path):
    root = tmp_path / "rsna-pneumonia-detection-challenge"
    labels, info, ids = [], [], []
    for i in range(20):
        pid = str(uuid.UUID(int=i + 1))
        ids.append(pid)
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", pid, view="AP" if i % 2 else "PA",
                    sex="F" if i % 3 else "M", age=str(20 + i), seed=i)
        if i % 4 == 0:  # positive, two boxes
            labels += [{"patientId": pid, "x": "264.0", "y": "152.0", "width": "213.0", "height": "379.0", "Target": "1"},
                       {"patientId": pid, "x": "562.0", "y": "152.0", "width": "256.0", "height": "453.0", "Target": "1"}]
            info += [{"patientId": pid, "class": "Lung Opacity"}] * 2
        else:
            labels.append({"patientId": pid, "x": "", "y": "", "width": "", "height": "", "Target": "0"})
            info.append({"patientId": pid, "class": "Normal" if i % 2 else "No Lung Opacity / Not Normal"})
    pd.DataFrame(labels).to_csv(root / "stage_2_train_labels.csv", index=False)
    pd.DataFrame(info).to_csv(root / "stage_2_detailed_class_info.csv", index=False)
    return root, ids


def test_rsna(rsna, tmp_path):
    root, ids = rsna
    summary, df = run("rsna-pneumonia", root, tmp_path / "out", decode=True)
    df = df.set_index("id")
    assert sorted(df.index) == sorted(ids)
    first = df.loc[ids[0]]
    assert first["Pneumonia"] == 1 and first["class"] == "Lung Opacity"
    assert json.loads(first["boxes"]) == [[264.0, 152.0, 213.0, 379.0], [562.0, 152.0, 256.0, 453.0]]
    assert json.loads(df.loc[ids[1], "boxes"]) == [] and df.loc[ids[1], "Pneumonia"] == 0
    assert first["view"] == "PA" and df.loc[ids[1], "view"] == "AP" and str(df.loc[ids[3], "age"]) == "23"
    assert df.loc[ids[1], "image"] == f"data/stage_2_train_images/{ids[1]}.dcm"
    assert summary["labels"]["Pneumonia"]["positive"] == 5 and summary["notes"]["boxes total"] == 10
    assert summary["check"]["decoded"]  # the DICOMs decode through the data link
    assert (df["patient_id"] == df.index).all()
