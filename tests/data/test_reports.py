from __future__ import annotations

import random
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from convirt.data.reports import SentenceSampler, extract_sections, find_headers, normalize_report, split_sentences
from convirt.errors import ConfigError

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 FINDINGS:
 
 The lungs are clear without focal consolidation, effusion, or
 pneumothorax.  Cardiomediastinal silhouette is normal.
 
 IMPRESSION:
 
 No acute cardiopulmonary process.
"""


def test_sections_on_their_own_lines():
    assert normalize_report(extract_sections(MIMIC_STYLE)) == (
        "The lungs are clear without focal consolidation, effusion, or pneumothorax. "
        "Cardiomediastinal silhouette is normal. No acute cardiopulmonary process.")
    assert extract_sections(MIMIC_STYLE, ("IMPRESSION",)) == "No acute cardiopulmonary process."
    assert extract_sections(MIMIC_STYLE, ("COMPARISON",)) == "None."


@pytest.mark.parametrize("text, findings, impression", [
    ("FINDINGS: Heart is normal. IMPRESSION: No acute disease.", "Heart is normal.", "No acute disease."),
    ("Findings - Heart is normal.\nImpression - No acute disease.", "Heart is normal.", "No acute disease."),
    ("findings: Heart is normal. impression : No acute disease.", "Heart is normal.", "No acute disease."),
    ("INDICATION: cough FINDINGS: Heart is normal IMPRESSION: Normal.", "Heart is normal", "Normal."),
    ("FINDINGS\nHeart is normal.\n\nIMPRESSIONS:\nNo acute disease.", "Heart is normal.", "No acute disease."),
])
def test_header_styles(text, findings, impression):
    assert extract_sections(text, ("FINDINGS",)) == findings
    assert extract_sections(text, ("IMPRESSION",)) == impression
    assert extract_sections(text) == f"{findings}\n\n{impression}"


def test_words_inside_sentences_are_not_headers():
    text = "IMPRESSION: No acute findings - the lungs are clear. Compared with the prior exam: stable."
    assert [h[0] for h in find_headers(text)] == ["IMPRESSION"]
    assert extract_sections(text) == "No acute findings - the lungs are clear. Compared with the prior exam: stable."


def test_missing_sections_fall_back():
    text = "  Heart size is normal. No effusion.  "
    assert extract_sections(text) == "Heart size is normal. No effusion."
    assert extract_sections(text, fallback="empty") == ""
    assert extract_sections("FINDINGS:   \nIMPRESSION:", fallback="empty") == ""  # present but empty
    assert extract_sections("INDICATION: cough. FINDINGS: Clear.", sections=None) == "INDICATION: cough. FINDINGS: Clear."
    with pytest.raises(ConfigError):
        extract_sections(text, fallback="nothing")


def test_split_sentences_keeps_abbreviations_and_decimals():
    text = "Seen by Dr. Smith today. There is a 1.5 cm nodule, e.g. in the right upper lobe. Follow-up advised."
    assert split_sentences(text) == [
        "Seen by Dr. Smith today.", "There is a 1.5 cm nodule, e.g. in the right upper lobe.", "Follow-up advised."]


def test_split_sentences_drops_headers_and_joins_wrapped_lines():
    assert split_sentences(MIMIC_STYLE) == [
        "CHEST (PA AND LAT)", "___F with cough", "None.",
        "The lungs are clear without focal consolidation, effusion, or pneumothorax.",
        "Cardiomediastinal silhouette is normal.", "No acute cardiopulmonary process."]
    assert split_sentences("FINDINGS: Heart normal\nIMPRESSION: No acute disease") == ["Heart normal", "No acute disease"]
    assert split_sentences(" \n\t ") == []


def test_normalize_report():
    assert normalize_report("  a\n\n b\t c  ") == "a b c"


REPORT = "FINDINGS: One is here. Two is here. Three is here. Four is here. Five is here. IMPRESSION: Nothing else."


def test_sampler_is_uniform_over_sentences():
    sampler, rng, n = SentenceSampler(), random.Random(123), 6000
    counts = Counter(sampler(REPORT, rng) for _ in range(n))
    assert set(counts) == {"One is here.", "Two is here.", "Three is here.", "Four is here.", "Five is here.", "Nothing else."}
    expected = n / 6
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 20.5  # chi-square, 5 degrees of freedom, p = 0.001


def test_sampler_is_deterministic_for_a_seeded_rng():
    sampler = SentenceSampler()
    draws = [sampler(REPORT, random.Random(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    seq_a = [sampler(REPORT, rng) for rng in [random.Random(1)] for _ in range(30)]
    seq_b = [sampler(REPORT, rng) for rng in [random.Random(1)] for _ in range(30)]
    seq_c = [sampler(REPORT, rng) for rng in [random.Random(2)] for _ in range(30)]
    assert seq_a == seq_b and seq_a != seq_c


def test_sampler_caches_report_modes_and_edge_cases():
    sampler = SentenceSampler()
    assert sampler.sentences(REPORT) is sampler.sentences(REPORT)  # split once, reused every epoch
    assert sampler("   ...   ", random.Random(0)) == "..."  # pysbd finds no sentence: stripped text
    report = SentenceSampler(mode="report")
    assert report("FINDINGS: A  b.\nC d. IMPRESSION: E.", random.Random(0)) == "A b. C d. E."
    with pytest.raises(ConfigError):
        SentenceSampler(mode="paragraph")


def _iu_reports(shared_data):
    path = shared_data / "iu-xray-reports" / "NLMCXR_reports.tgz"
    if not path.is_file():
        pytest.skip(f"IU X-ray reports not found at {path}")
    reports = []
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                root = ET.fromstring(tar.extractfile(member).read())
                reports.append({e.get("Label"): (e.text or "").strip() for e in root.iter("AbstractText")})
    return reports


def test_sections_found_in_real_iu_xray_reports(shared_data):
    reports = _iu_reports(shared_data)
    assert len(reports) > 3900
    both = [r for r in reports if r.get("FINDINGS") and r.get("IMPRESSION")]
    assert len(both) > 2500
    layouts = {
        "lines": lambda r: "\n".join(f"{k}: {v}" for k, v in r.items()),
        "inline": lambda r: " ".join(f"{k}: {v}" for k, v in r.items()),
        "blocks": lambda r: "\n\n".join(f"{k.title()}\n{v}" for k, v in r.items()),
    }
    for name, layout in layouts.items():
        hits = sum(extract_sections(layout(r)) == f"{r['FINDINGS']}\n\n{r['IMPRESSION']}" for r in both)
        assert hits / len(both) > 0.99, name
    header = re.compile(r"^(FINDINGS|IMPRESSION|INDICATION|COMPARISON)\s*:", re.I)
    sentences = [s for r in both[:300] for s in split_sentences(layouts["inline"](r))]
    assert len(sentences) > 1500 and not any(header.match(s) for s in sentences)
