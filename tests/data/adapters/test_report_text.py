"""FINDINGS / IMPRESSION with the fallbacks real MIMIC-CXR reports need (the report styles below follow
published MIMIC-CXR examples; ``___`` is MIMIC's de-identification mark)."""

from __future__ import annotations

import pytest

from convirt.data.adapters.report_text import compose, last_paragraph, report_sections, report_text
from convirt.data.reports import extract_sections


@pytest.mark.parametrize("raw, text, source", [
    (" FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___F with cough\n\n FINDINGS:\n\n Lungs are\n"
     " clear.\n\n IMPRESSION:\n\n No acute process.\n",
     "FINDINGS: Lungs are clear.\n\nIMPRESSION: No acute process.", "findings and impression"),
    (" FINAL REPORT\n INDICATION:  Chest pain.\n\n IMPRESSION:  Mild cardiomegaly.\n",
     "IMPRESSION: Mild cardiomegaly.", "impression only"),
    (" FINAL REPORT\n FINDINGS:  Small left effusion.\n", "FINDINGS: Small left effusion.", "findings only"),
    (" FINAL REPORT\n FINDINGS/IMPRESSION:  Stable cardiomegaly.\n", "IMPRESSION: Stable cardiomegaly.", "impression only"),
    (" FINAL REPORT\n CLINICAL HISTORY:  Intubated.\n\n FINDINGS AND IMPRESSION:  ET tube 4 cm above the carina.\n\n"
     " NOTIFICATION:  Dr. ___ was paged.\n", "IMPRESSION: ET tube 4 cm above the carina.", "impression only"),
    (" FINAL REPORT\n EXAMINATION:  CHEST (PORTABLE AP)\n\n CONCLUSION:\n Mild pulmonary edema.\n",
     "IMPRESSION: Mild pulmonary edema.", "impression only"),
    ("WET READ: ___ ___ 4:23 PM\n  No pneumothorax.\n ____\n FINAL REPORT\n PA AND LATERAL CHEST RADIOGRAPHS:\n\n"
     " HISTORY:  Cough.\n\n The lungs are clear.  No effusion.\n\n", "The lungs are clear. No effusion.", "last paragraph"),
    (" FINAL REPORT\n INDICATION:  Cough.\n\n COMPARISON:  None.\n", "", "none"),
])
def test_report_text(raw, text, source):
    assert report_text(raw) == (text, source)


def test_sections_are_found_again_by_training_extraction():
    text, _ = report_text(" FINDINGS:  A.\n\n IMPRESSION:  B.\n")
    assert extract_sections(text, ("FINDINGS",)) == "A." and extract_sections(text, ("IMPRESSION",)) == "B."


def test_repeated_sections_are_joined_and_admin_paragraphs_skipped():
    raw = " IMPRESSION:  First.\n\n ADDENDUM:  x\n\n IMPRESSION:  Second.\n"
    assert report_sections(raw) == ("", "First.\n\nSecond.")
    assert last_paragraph(" COMPARISON:  ___.\n\n TECHNIQUE:  PA.\n") == ""
    assert compose("  A  b. ", "") == "FINDINGS: A b." and compose("", "") == ""
