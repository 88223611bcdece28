"""COVID-19 image data collection: the GitHub repository's ``metadata.csv`` (columns as published:
``patientid, offset, sex, age, finding, RT_PCR_positive, ..., view, modality, date, location, folder,
filename, doi, url, license, clinical_notes, other_notes``; images in ``images/``, CT volumes in
``volumes/``), and the real curated copy in ../shared/data/covid-cxr-notes."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from convirt.data.images import load_image

from tests.data.adapters.files import run, write_image

COLUMNS = ["patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated",
           "intubation_present", "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature",
           "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count", "view", "modality", "date",
           "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes", "Unnamed: 29"]


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "covid-chestxray-dataset"
    rows = []
    for i in range(12):
        patient = str(i // 2 + 1)
        finding = ["Pneumonia/Viral/COVID-19", "Pneumonia/Bacterial/Streptococcus", "todo"][i % 3]
        view = "L" if i % 4 == 3 else ["PA", "AP", "AP Supine"][i % 3]
        name = f"patient{patient}-{i}.jpeg"
        write_image(root / "images" / name, seed=i)
        notes = "" if i == 5 else f"Patient {patient} presented with fever and cough; image {i}."
        rows.append({**dict.fromkeys(COLUMNS, ""), "patientid": patient, "offset": str(i), "finding": finding,
                     "view": view, "modality": "X-ray", "folder": "images", "filename": name, "license": "CC BY",
                     "clinical_notes": notes})
    rows.append({**dict.fromkeys(COLUMNS, ""), "patientid": "1", "finding": "Pneumonia/Viral/COVID-19",
                 "view": "Axial", "modality": "CT", "folder": "images", "filename": "ct-slice.jpg",
                 "clinical_notes": "CT of patient 1."})
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "metadata.csv", index=False)
    return root, rows


def test_repository_layout(repo, tmp_path):
    root, rows = repo
    summary, df = run("covid-notes", root, tmp_path / "out")
    assert summary["dropped"] == {"not an X-ray (CT)": 1, "empty report": 1}
    assert summary["empty_reports"] == 1
    assert len(df) == 11
    covid = df.set_index("image")["COVID-19"]
    assert covid["data/images/patient1-0.jpeg"] == 1 and covid["data/images/patient1-1.jpeg"] == 0
    assert pd.isna(covid["data/images/patient2-2.jpeg"])  # finding "todo": unknown, not negative
    assert summary["labels"]["COVID-19"] == {"positive": 4, "negative": 4, "uncertain": 0, "blank": 3}
    assert (df["license"] == "CC BY").all()  # attribution travels with the rows


def test_frontal_only(repo, tmp_path):
    root, rows = repo
    summary, df = run("covid-notes", root, tmp_path / "out", frontal_only=True)
    assert summary["dropped"]["not a frontal view"] == 3
    assert not (df["view"] == "L").any()


def test_real_covid_notes(shared_data, tmp_path):
    root = shared_data / "covid-cxr-notes"
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"covid-cxr-notes not found at {root}")
    with open(root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary, df = run("covid-notes", root, tmp_path / "out")
    with_notes = [r for r in rows if r["notes"].strip()]
    assert len(df) == len(with_notes) and summary["empty_reports"] == len(rows) - len(with_notes)
    assert summary["patients"] == len({r["patient_id"] for r in with_notes})
    assert summary["labels"]["COVID-19"]["positive"] == sum("COVID-19" in r["finding"] for r in with_notes)
    assert summary["labels"]["COVID-19"]["blank"] == sum(r["finding"] == "todo" for r in with_notes)
    summary_text = (tmp_path / "out" / "summary.json").read_text()
    assert not any(r["notes"][:30] in summary_text for r in with_notes)
    frontal, _ = run("covid-notes", root, tmp_path / "frontal", frontal_only=True)
    assert frontal["studies"] == sum(r["frontal"] == "1" and r["notes"].strip() != "" for r in rows)
    for cell in df["image"].sample(5, random_state=0):
        assert max(load_image(tmp_path / "out" / cell).shape) <= 320
