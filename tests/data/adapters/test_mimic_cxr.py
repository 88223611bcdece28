"""MIMIC-CXR-JPG 2.0.0 + MIMIC-CXR reports, as PhysioNet ships them: ``mimic-cxr-2.0.0-metadata.csv.gz``
(``dicom_id, subject_id, study_id, PerformedProcedureStepDescription, ViewPosition, Rows, Columns,
StudyDate, StudyTime, ProcedureCodeSequence_CodeMeaning, ViewCodeSequence_CodeMeaning,
PatientOrientationCodeSequence_CodeMeaning``), ``-chexpert.csv.gz`` / ``-negbio.csv.gz``
(``subject_id, study_id`` + 14 labels in alphabetical order), ``-split.csv.gz`` (``dicom_id, study_id,
subject_id, split`` with train/validate/test), images ``files/p10/p10000032/s50414267/<dicom_id>.jpg``
and ``mimic-cxr-reports.zip`` holding ``files/p10/p10000032/s50414267.txt``."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest

from convirt.errors import DataError

from tests.data.adapters.files import run, write_image

LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
          "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
          "Pneumothorax", "Support Devices"]
META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]

STANDARD = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
IMPRESSION_ONLY = """                                 FINAL REPORT
 INDICATION:  ___-year-old man with chest pain.

 COMPARISON:  ___.

 IMPRESSION:  Heart size is mildly enlarged.  No pneumothorax.
"""
NO_HEADERS = """WET READ: ___ ___ ___ 4:23 PM
  Preliminary: no pneumothorax.
 ______________________________________________________________________________
                                 FINAL REPORT
 PA AND LATERAL CHEST RADIOGRAPHS:

 HISTORY:  Cough.

 The lungs are clear.  There is no pleural effusion or pneumothorax.
"""
COMBINED = """                                 FINAL REPORT
 CLINICAL HISTORY:  Intubated patient.

 FINDINGS AND IMPRESSION:  Endotracheal tube terminates 4 cm above the carina.
 Lungs are clear.

 NOTIFICATION:  Dr. ___ was paged.
"""

# subject, study, [(dicom_id, ViewPosition)], official split, report (None: no report file)
STUDIES = [
    ("10000032", "50414267", [("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA"),
                              ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL")], "train", STANDARD),
    ("10000032", "53189527", [("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP")], "train", IMPRESSION_ONLY),
    ("10000032", "53911762", [("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "LATERAL")], "train", NO_HEADERS),
    ("10000764", "57375967", [("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "LL"),
                              ("b79e55c3-735ce5ac-64412506-cdc9ea79-f1af521f", "PA")], "validate", COMBINED),
    ("10000764", "59999999", [("aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee", "AP")], "validate", None),
    ("10000898", "50771383", [("3e9a8a9e-cd1e7bdc-6f1cd8ab-7a1ab9fb-3b01f3ba", "PA")], "test", STANDARD),
]


@pytest.fixture
def physionet(tmp_path):
    root = tmp_path / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"
    meta, split, labels = [], [], []
    reports = zipfile.ZipFile(tmp_path / "mimic-cxr-reports.zip", "w")
    for k, (subject, study, views, official, report) in enumerate(STUDIES):
        folder = f"files/p{subject[:2]}/p{subject}/s{study}"
        for j, (dicom, view) in enumerate(views):
            write_image(root / folder / f"{dicom}.jpg", seed=10 * k + j)
            meta.append({**dict.fromkeys(META, ""), "dicom_id": dicom, "subject_id": subject, "study_id": study,
                         "ViewPosition": view, "Rows": "3056", "Columns": "2544", "StudyDate": "21800506"})
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": official})
        if report is not None:
            reports.writestr(f"{folder}.txt", report)
        labels.append({"subject_id": subject, "study_id": study, **dict.fromkeys(LABELS, ""),
                       "Cardiomegaly": "-1.0" if k == 0 else "1.0", "No Finding": "1.0" if k == 2 else ""})
    reports.close()
    pd.DataFrame(meta, columns=META).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(split).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(labels).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    negbio = pd.DataFrame(labels).assign(Cardiomegaly="0.0")
    negbio.to_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz", index=False)
    return root, tmp_path / "mimic-cxr-reports.zip"


def test_studies_reports_labels_and_official_split(physionet, tmp_path):
    root, reports = physionet
    summary, df = run("mimic-cxr", root, tmp_path / "out", reports=reports)
    df = df.set_index("id")
    assert list(df.index) == ["s50414267", "s53189527", "s53911762", "s57375967", "s50771383"]
    assert summary["dropped"] == {"no report file": 1}
    # one row per study, frontal views first; paths through the data link
    assert df.loc["s57375967", "image"] == ("data/files/p10/p10000764/s57375967/b79e55c3-735ce5ac-64412506-cdc9ea79-f1af521f.jpg"
                                            "|data/files/p10/p10000764/s57375967/096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4.jpg")
    assert df.loc["s50414267", "text"] == (
        "FINDINGS: There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities "
        "that most likely represent nipple shadows.\n\nIMPRESSION: No acute cardiopulmonary process.")
    assert df.loc["s53189527", "text"] == "IMPRESSION: Heart size is mildly enlarged. No pneumothorax."
    assert df.loc["s53911762", "text"] == "The lungs are clear. There is no pleural effusion or pneumothorax."
    assert df.loc["s57375967", "text"].startswith("IMPRESSION: Endotracheal tube terminates")
    assert not df["text"].str.contains("ascites|Intubated patient|paged|Preliminary").any()
    assert summary["notes"]["text source"] == {"findings and impression": 2, "impression only": 2, "last paragraph": 1}
    assert df["split"].to_dict() == {"s50414267": "train", "s53189527": "train", "s53911762": "train",
                                     "s57375967": "valid", "s50771383": "test"}
    assert summary["official_split_rows"] == 5
    assert df.loc["s50414267", "Cardiomegaly"] == -1 and df.loc["s53911762", "No Finding"] == 1
    assert pd.isna(df.loc["s50414267", "No Finding"])  # blank stays blank with the default policy (keep)


def test_options(physionet, tmp_path):
    root, reports = physionet
    summary, df = run("mimic-cxr", root, tmp_path / "frontal", reports=reports, frontal_only=True, uncertainty="ones")
    assert "s53911762" not in set(df["id"]) and summary["dropped"]["no frontal view"] == 1
    assert not df["view"].str.contains("LAT|LL").any()
    row = df.set_index("id").loc["s50414267"]
    assert row["Cardiomegaly"] == 1 and row["No Finding"] == 0  # U-Ones; blank -> 0
    _, negbio = run("mimic-cxr", root, tmp_path / "negbio", reports=reports, labeler="negbio")
    assert (negbio["Cardiomegaly"] == 0).all()


def test_unzipped_reports_under_root(physionet, tmp_path):
    root, reports = physionet
    zipped, _ = run("mimic-cxr", root, tmp_path / "a", reports=reports)
    with zipfile.ZipFile(reports) as z:
        z.extractall(root)
    unzipped, _ = run("mimic-cxr", root, tmp_path / "b")
    assert unzipped["splits_sha256"] == zipped["splits_sha256"]


def test_missing_files_name_what_to_download(physionet, tmp_path):
    root, reports = physionet
    with pytest.raises(DataError, match="mimic-cxr-reports.zip"):
        run("mimic-cxr", root, tmp_path / "out")  # no reports anywhere
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(DataError, match="expected mimic-cxr-2.0.0-chexpert.csv.gz under"):
        run("mimic-cxr", root, tmp_path / "out", reports=reports)
