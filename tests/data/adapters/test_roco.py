"""ROCO as cloned from github.com/razorx89/roco-dataset and fetched with scripts/fetch.py:
``data/{train,validation,test}/radiology/captions.txt`` (``ROCO_00020<TAB> caption``), ``dlinks.txt``
(``ROCO_00020<TAB>wget -r ftp://.../PMC3970251.tar.gz -P /path/to/Dir<TAB>figure.jpg``) and
``images/PMC3970251_figure.jpg``; later revisions name some files ``dlinks_tp_val_revised.txt``."""

from __future__ import annotations

import pytest

from tests.data.adapters.files import run, write_image

ENTRIES = {  # split folder: [(ROCO id, PMC id, figure, caption)]
    "train": [("ROCO_00002", "PMC4083729", "AMJCR-06-3-0073-g001.jpg", "Computed tomography of the maxillary sinus."),
              ("ROCO_00003", "PMC4083729", "AMJCR-06-3-0073-g002.jpg", "Follow-up CT after surgery."),
              ("ROCO_00005", "PMC2766744", "cios-1-176-g005.jpg", "Postoperative radiograph of the pelvis."),
              ("ROCO_00006", "PMC5292123", "CRIGM2017-1710501.002.jpg", "")],  # empty caption
    "validation": [("ROCO_00020", "PMC3970251", "CRIONM2014-931546.003.jpg", "Axial CT of the pelvis (arrow)."),
                   ("ROCO_00027", "PMC3789931", "poljradiol-78-3-35-g001.jpg", "Angiography of the carotid.")],
    "test": [("ROCO_00059", "PMC2676075", "p147_fig4a.jpg", "Pretreatment radiograph.")],
}


@pytest.fixture
def roco(tmp_path):
    root = tmp_path / "roco-dataset"
    for folder, entries in ENTRIES.items():
        base = root / "data" / folder / "radiology"
        links = "dlinks_tp_val_revised.txt" if folder == "validation" else "dlinks.txt"
        (base / "images").mkdir(parents=True)
        (base / "captions.txt").write_text("".join(f"{i}\t {c}\n" for i, _, _, c in entries))
        (base / links).write_text("".join(
            f"{i}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/1e/ed/{p}.tar.gz -P /path/to/Dir\t{f}\n"
            for i, p, f, _ in entries))
        for k, (i, p, f, _) in enumerate(entries):
            if i != "ROCO_00027":  # a figure fetch.py failed to download
                write_image(base / "images" / f"{p}_{f}", seed=k)
    (root / "data" / "train" / "non-radiology").mkdir()  # not read
    return root


def test_roco(roco, tmp_path):
    summary, df = run("roco", roco, tmp_path / "out")
    df = df.set_index("id")
    assert list(df.index) == ["ROCO_00002", "ROCO_00003", "ROCO_00005", "ROCO_00020", "ROCO_00059"]
    assert summary["dropped"] == {"empty report": 1, "image file missing": 1}
    assert df.loc["ROCO_00002", "image"] == "data/train/radiology/images/PMC4083729_AMJCR-06-3-0073-g001.jpg"
    assert df.loc["ROCO_00002", "text"] == "Computed tomography of the maxillary sinus."
    assert df.loc["ROCO_00002", "patient_id"] == df.loc["ROCO_00003", "patient_id"] == "PMC4083729"
    assert df["split"].to_dict() == {"ROCO_00002": "train", "ROCO_00003": "train", "ROCO_00005": "train",
                                     "ROCO_00020": "valid", "ROCO_00059": "test"}
