"""IU X-ray / Open-i: ``ecgen-radiology/<n>.xml`` (eCitation documents with ``uId``,
``AbstractText Label=...``, ``MeSH/major`` and ``parentImage id=...``) as in NLMCXR_reports.tgz, and
flat PNGs ``CXR1_1_IM-0001-3001.png`` as in NLMCXR_png.tgz. The real reports are in
../shared/data/iu-xray-reports (no images there)."""

from __future__ import annotations

import re
import tarfile

import pytest

from convirt.errors import DataError

from tests.data.adapters.files import run, write_image

XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{n}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">XXXX-year-old with cough</AbstractText>
            {findings}
            {impression}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
      {mesh}
   </MeSH>
   {images}
</eCitation>
"""


def _xml(n, findings, impression, mesh, images):
    def section(label, text):
        return f'<AbstractText Label="{label}">{text}</AbstractText>' if text else f'<AbstractText Label="{label}"/>'

    return XML.format(n=n, findings=section("FINDINGS", findings), impression=section("IMPRESSION", impression),
                      mesh="".join(f"<major>{m}</major>" for m in mesh),
                      images="".join(f'<parentImage id="{i}"><figureId>F1</figureId>'
                                     f'<caption>Xray Chest PA and Lateral</caption></parentImage>' for i in images))


REPORTS = {  # n: (findings, impression, MeSH major, image ids)
    1: ("The heart is normal in size. The lungs are clear.", "Normal chest x-XXXX.", ["normal"],
        ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
    2: ("", "No acute cardiopulmonary abnormality.", ["Opacity/lung/base/left"], ["CXR2_IM-0652-1001"]),
    3: ("", "", ["normal"], ["CXR3_IM-1384-1001"]),  # no text: left out
    4: ("Mild cardiomegaly.", "Cardiomegaly.", ["Cardiomegaly/mild"], []),  # no images listed: left out
    5: ("Small left effusion.", "Effusion.", ["Pleural Effusion/left/small"], ["CXR5_IM-2000-1001"]),  # PNG missing
}


@pytest.fixture
def openi(tmp_path):
    root = tmp_path / "openi"
    (root / "ecgen-radiology").mkdir(parents=True)
    for n, (findings, impression, mesh, images) in REPORTS.items():
        (root / "ecgen-radiology" / f"{n}.xml").write_text(_xml(n, findings, impression, mesh, images))
        for k, image in enumerate(images):
            if n != 5:
                write_image(root / "NLMCXR_png" / f"{image}.png", seed=n * 10 + k)
    return root


def test_reports_and_images(openi, tmp_path):
    summary, df = run("iu-xray", openi, tmp_path / "out")
    assert df["id"].tolist() == ["CXR1", "CXR2"]
    assert summary["dropped"] == {"empty report": 1, "no images listed": 1, "image file missing": 1}
    row = df.set_index("id").loc["CXR1"]
    assert row["image"] == "data/CXR1_1_IM-0001-3001.png|data/CXR1_1_IM-0001-4001.png"
    assert row["text"] == "FINDINGS: The heart is normal in size. The lungs are clear.\n\nIMPRESSION: Normal chest x-XXXX."
    assert "INDICATION" not in " ".join(df["text"]) and "cough" not in " ".join(df["text"])
    assert df.set_index("id").loc["CXR2", "text"] == "IMPRESSION: No acute cardiopulmonary abnormality."
    assert df.set_index("id")["No Finding"].to_dict() == {"CXR1": 1, "CXR2": 0}
    assert summary["images"] == 3 and summary["notes"]["with FINDINGS"] == 3


def test_reads_the_tgz_in_place(openi, tmp_path):
    with tarfile.open(openi / "NLMCXR_reports.tgz", "w:gz") as tar:
        tar.add(openi / "ecgen-radiology", arcname="ecgen-radiology")
    extracted, _ = run("iu-xray", openi, tmp_path / "a")
    for xml in (openi / "ecgen-radiology").iterdir():
        xml.unlink()
    (openi / "ecgen-radiology").rmdir()
    packed, _ = run("iu-xray", openi, tmp_path / "b")
    assert packed["splits_sha256"] == extracted["splits_sha256"] and packed["studies"] == extracted["studies"]


def test_missing_images_are_explained(openi, tmp_path):
    for png in (openi / "NLMCXR_png").iterdir():
        png.unlink()
    with pytest.raises(DataError, match="NLMCXR_png.tgz.*--reports-only"):
        run("iu-xray", openi, tmp_path / "out")
    summary, df = run("iu-xray", openi, tmp_path / "out", reports_only=True)
    assert summary["manifest"] == "reports.csv" and summary["images"] == 0
    assert df["id"].tolist() == ["CXR1", "CXR2", "CXR4", "CXR5"]  # only the text-less report is left out


def _count_sections_by_regex(folder):
    """An independent parse: a FINDINGS / IMPRESSION element with any non-space text."""
    pattern = {k: re.compile(rf'<AbstractText Label="{k}">\s*([^<]*?\S[^<]*)</AbstractText>') for k in ("FINDINGS", "IMPRESSION")}
    findings = either = 0
    for xml in folder.glob("*.xml"):
        text = xml.read_text(encoding="utf-8")
        f, i = bool(pattern["FINDINGS"].search(text)), bool(pattern["IMPRESSION"].search(text))
        findings += f
        either += f or i
    return findings, either


def test_real_iu_reports(shared_data, tmp_path):
    tgz = shared_data / "iu-xray-reports" / "NLMCXR_reports.tgz"
    if not tgz.is_file():
        pytest.skip(f"IU X-ray reports not found at {tgz}")
    root = tmp_path / "iu"
    with tarfile.open(tgz) as tar:
        tar.extractall(root, filter="data")
    n_files = len(list((root / "ecgen-radiology").glob("*.xml")))
    findings, either = _count_sections_by_regex(root / "ecgen-radiology")
    with pytest.raises(DataError, match="no PNG images"):  # the shared copy has no images
        run("iu-xray", root, tmp_path / "out")
    summary, df = run("iu-xray", root, tmp_path / "out", reports_only=True)
    assert summary["notes"]["reports"] == n_files
    assert summary["notes"]["with FINDINGS"] == findings
    assert len(df) == either and summary["empty_reports"] == n_files - either
    assert df["text"].str.startswith(("FINDINGS: ", "IMPRESSION: ")).all()
