"""FINDINGS and IMPRESSION of a free-text report, with the fallbacks real MIMIC-CXR reports need.

About one MIMIC-CXR report in five has no FINDINGS section (portable films often carry only an
IMPRESSION), some use CONCLUSION, ``FINDINGS AND IMPRESSION:`` or ``FINDINGS/IMPRESSION:``, some
start with a ``WET READ`` before the ``FINAL REPORT`` header, and some have no section headers
at all. Following the MIMIC-CXR authors' section extraction (``create_section_files.py``), a report
without any of these sections falls back to its last paragraph, skipping the first paragraph of
administrative sections (EXAMINATION, INDICATION, HISTORY, TECHNIQUE, COMPARISON, NOTIFICATION,
the WET READ): text after a blank line below such a header is report text again.

The output keeps ``FINDINGS:`` / ``IMPRESSION:`` headers so that training's
:func:`convirt.data.reports.extract_sections` can still pick one section; whitespace inside a
section (MIMIC's hard line wraps) is collapsed.
"""

from __future__ import annotations

import re

from convirt.data.reports import find_headers, normalize_report

COMBINED = ("FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "FINDINGS AND IMPRESSIONS", "IMPRESSION AND FINDINGS")
FINDINGS = {"FINDINGS", "FINDING"}
IMPRESSION = {"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", *COMBINED}
ADMINISTRATIVE = {"EXAMINATION", "EXAM", "INDICATION", "INDICATIONS", "HISTORY", "CLINICAL HISTORY",
                  "CLINICAL INFORMATION", "CLINICAL INDICATION", "REASON FOR EXAM", "REASON FOR EXAMINATION",
                  "REASON FOR STUDY", "TECHNIQUE", "PROCEDURE", "COMPARISON", "COMPARISONS", "NOTIFICATION",
                  "WET READ"}
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
SOURCES = ("findings and impression", "findings only", "impression only", "last paragraph", "none")


def report_sections(raw: str) -> tuple[str, str]:
    """``(findings, impression)`` of a report; each '' when absent. Repeated sections are joined."""
    headers = find_headers(raw, COMBINED)
    findings, impression = [], []
    for i, (name, _, end) in enumerate(headers):
        stop = headers[i + 1][1] if i + 1 < len(headers) else len(raw)
        body = normalize_report(raw[end:stop])
        if body and name in FINDINGS:
            findings.append(body)
        elif body and name in IMPRESSION:
            impression.append(body)
    return "\n\n".join(findings), "\n\n".join(impression)


def last_paragraph(raw: str) -> str:
    """The last paragraph outside administrative sections (and outside a WET READ), or ''."""
    headers = find_headers(raw)
    blocks, last = [], 0  # (section name or None, text)
    for i, (name, start, end) in enumerate(headers):
        blocks.append((None if i == 0 else headers[i - 1][0], raw[last:start]))
        last = end
    blocks.append((headers[-1][0] if headers else None, raw[last:]))
    paragraphs = []
    for name, text in blocks:  # an administrative header owns its first paragraph only
        parts = [p.strip() for p in _PARAGRAPH.split(text.strip())]
        paragraphs.extend(parts[1:] if name in ADMINISTRATIVE else parts)
    paragraphs = [p for p in paragraphs if p and any(c.isalpha() for c in p)]
    return normalize_report(paragraphs[-1]) if paragraphs else ""


def report_text(raw: str) -> tuple[str, str]:
    """``(text, source)``: the text to train on, with section headers, and which rule produced it."""
    findings, impression = report_sections(raw or "")
    parts = ([f"FINDINGS: {findings}"] if findings else []) + ([f"IMPRESSION: {impression}"] if impression else [])
    if parts:
        source = SOURCES[0] if findings and impression else SOURCES[1] if findings else SOURCES[2]
        return "\n\n".join(parts), source
    paragraph = last_paragraph(raw or "")
    return (paragraph, SOURCES[3]) if paragraph else ("", SOURCES[4])


def compose(findings: str, impression: str) -> str:
    """Two already separated sections (IU X-ray XML, CheXpert Plus columns) in the same form."""
    findings, impression = normalize_report(findings or ""), normalize_report(impression or "")
    parts = ([f"FINDINGS: {findings}"] if findings else []) + ([f"IMPRESSION: {impression}"] if impression else [])
    return "\n\n".join(parts)

