"""CheXpert-v1.0-small as downloaded: ``train.csv`` / ``valid.csv`` with ``Path, Sex, Age, Frontal/Lateral,
AP/PA`` and the 14 labels in CheXpert's order (``Path`` starts with ``CheXpert-v1.0-small/``), images at
``train/patient00001/study1/view1_frontal.jpg``; CheXpert Plus's ``df_chexpert_plus_240401.csv``
(``path_to_image, ..., report, section_findings, section_impression, ..., split``)."""

from __future__ import annotations

import pandas as pd
import pytest

from convirt.data.adapters.labels import CHEXPERT_LABELS

from tests.data.adapters.files import run, write_image

HEAD = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def _row(path, frontal=True, **labels):
    cells = {label: "" for label in CHEXPERT_LABELS}
    cells.update({k.replace("_", " "): v for k, v in labels.items()})
    return {"Path": f"CheXpert-v1.0-small/{path}", "Sex": "Female", "Age": "68",
            "Frontal/Lateral": "Frontal" if frontal else "Lateral", "AP/PA": "AP" if frontal else "", **cells}


@pytest.fixture
def chexpert(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    train = []
    for p in range(1, 21):
        train.append(_row(f"train/patient{p:05d}/study1/view1_frontal.jpg", Atelectasis=["1.0", "-1.0", "0.0", ""][p % 4],
                          Edema="-1.0" if p % 5 == 0 else "1.0", No_Finding="1.0" if p % 7 == 0 else ""))
        if p % 2:
            train.append(_row(f"train/patient{p:05d}/study1/view2_lateral.jpg", frontal=False, Edema="1.0"))
    valid = [_row(f"valid/patient{64540 + p}/study1/view1_frontal.jpg", Atelectasis="0.0", Edema="1.0") for p in (1, 2, 3)]
    for row in train + valid:
        write_image(root / row["Path"].split("/", 1)[1], seed=len(row["Path"]))
    pd.DataFrame(train, columns=HEAD).to_csv(root / "train.csv", index=False)
    valid_df = pd.DataFrame(valid, columns=HEAD)
    valid_df[list(CHEXPERT_LABELS)] = valid_df[list(CHEXPERT_LABELS)].replace("", "0.0")  # valid.csv has no blanks
    valid_df.to_csv(root / "valid.csv", index=False)
    return root, train


def test_labelled_competition_labels_and_policies(chexpert, tmp_path):
    root, train = chexpert
    summary, df = run("chexpert", root, tmp_path / "ones")
    assert list(df.columns[4:9]) == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert len(df) == len(train) + 3
    at = df.set_index("id")["Atelectasis"]
    assert at["train/patient00001/study1/view1_frontal"] == 1  # -1.0 -> 1 (U-Ones)
    assert at["train/patient00003/study1/view1_frontal"] == 0  # blank -> 0
    assert summary["labels"]["Atelectasis"]["uncertain"] == 0 and summary["labels"]["Atelectasis"]["blank"] == 0
    _, zeros = run("chexpert", root, tmp_path / "zeros", uncertainty="zeros")
    assert zeros.set_index("id")["Atelectasis"]["train/patient00001/study1/view1_frontal"] == 0
    ignore, df_ignore = run("chexpert", root, tmp_path / "ignore", uncertainty="ignore", labels="all")
    assert pd.isna(df_ignore.set_index("id")["Atelectasis"]["train/patient00001/study1/view1_frontal"])
    assert len(ignore["labels"]) == 14
    n_uncertain = sum(r["Atelectasis"] == "-1.0" for r in train)
    assert ignore["labels"]["Atelectasis"]["blank"] == n_uncertain


def test_official_valid_is_the_test_split(chexpert, tmp_path):
    root, train = chexpert
    summary, df = run("chexpert", root, tmp_path / "out", frontal_only=True)
    assert set(df.loc[df["id"].str.startswith("valid/"), "split"]) == {"test"}
    assert set(df.loc[df["id"].str.startswith("train/"), "split"]) == {"train", "valid"}  # drawn: train and valid only
    assert summary["dropped"] == {"not a frontal view": sum(r["Frontal/Lateral"] == "Lateral" for r in train)}
    assert df["patient_id"].str.fullmatch(r"patient\d+").all()
    assert (tmp_path / "out" / df["image"].iloc[0]).is_file()


def test_chexpert_plus_reports(chexpert, tmp_path):
    root, train = chexpert
    plus = []
    for p in range(1, 21):
        if p == 4:
            continue  # a study without a report
        findings = "" if p == 6 else f"Patient {p} lungs are clear."
        report = "IMPRESSION: No acute disease." if p == 6 else f"FINDINGS: {findings}"
        plus.append({"path_to_image": f"train/patient{p:05d}/study1/view1_frontal.jpg", "path_to_dcm": "",
                     "frontal_lateral": "Frontal", "ap_pa": "AP", "deid_patient_id": f"patient{p:05d}",
                     "patient_report_date_order": "1", "report": report, "section_narrative": "",
                     "section_findings": findings, "section_impression": "" if p == 6 else "Normal.",
                     "split": "train"})
    reports = tmp_path / "df_chexpert_plus_240401.csv"
    pd.DataFrame(plus).to_csv(reports, index=False)
    summary, df = run("chexpert-plus", root, tmp_path / "out", reports=reports)
    assert summary["dropped"] == {"no report": 4}  # patient 4 and the three valid studies
    row = df.set_index("id").loc["patient00001/study1"]
    assert row["image"].split("|") == ["data/train/patient00001/study1/view1_frontal.jpg",
                                       "data/train/patient00001/study1/view2_lateral.jpg"]
    assert row["text"] == "FINDINGS: Patient 1 lungs are clear.\n\nIMPRESSION: Normal."
    assert df.set_index("id").loc["patient00006/study1", "text"] == "IMPRESSION: No acute disease."  # from `report`
    assert row["Atelectasis"] == -1  # labels kept as published
