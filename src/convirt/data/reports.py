"""Report text: section extraction, sentence splitting, and the paper's text transformation t_u.

Real reports mix styles: ``FINDINGS:`` on its own line or inline after the previous section,
``Findings -``, ``IMPRESSION :``, hard line wraps inside sentences. Headers are found once by
:func:`find_headers` and used both to pick sections and to keep them out of sampled sentences.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence

import pysbd

from convirt.errors import ConfigError

# Section names seen in chest X-ray reports (MIMIC-CXR, IU X-ray, CheXpert); they end the section
# before them even when not requested.
KNOWN_SECTIONS = (
    "FINDINGS", "FINDING", "IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "COMPARISON", "COMPARISONS",
    "INDICATION", "INDICATIONS", "HISTORY", "CLINICAL HISTORY", "CLINICAL INFORMATION", "CLINICAL INDICATION",
    "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY", "TECHNIQUE", "EXAMINATION", "EXAM", "PROCEDURE",
    "RECOMMENDATION", "RECOMMENDATIONS", "NOTIFICATION", "FINAL REPORT", "WET READ", "ADDENDUM", "OPINION", "SUMMARY",
)
FALLBACKS = ("full", "empty")
# Sentence splitting (pysbd) takes time quadratic in the text's length: a pasted document in a
# report cell would stall training for minutes. Radiology reports are a few thousand characters;
# only the first MAX_REPORT_CHARS of the extracted sections are used.
MAX_REPORT_CHARS = 10_000
MODES = ("sentence", "report")

_SEPARATOR = r"(?P<sep>[ \t]*:|[ \t]*[-\u2013\u2014]{1,2}(?=\s)|[ \t]*(?=\r?\n|$))"
_WHITESPACE = re.compile(r"\s+")
# a single line break inside a sentence (hard-wrapped reports): the next line goes on in lower case,
# or the line ends with a comma
_SOFT_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*(?=[a-z(])|(?<=[,;])[ \t]*\r?\n[ \t]*")
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")


@functools.cache
def _header_pattern(extra: tuple[str, ...]) -> re.Pattern:
    names = sorted({n.upper() for n in KNOWN_SECTIONS + extra}, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(map(re.escape, name.split())) for name in names)
    return re.compile(rf"(?<![\w/])(?P<name>{alternatives})\b{_SEPARATOR}", re.IGNORECASE)


def find_headers(text: str, extra: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    """``(NAME, start, end)`` of every section header; ``text[end:]`` is where the section begins.

    A header counts when it starts a line (any case; ``:``, a dash, or nothing after it on its
    line), follows the end of a sentence (``:`` or a dash), or is written in capitals with ``:``.
    So ``no acute findings - the lungs are clear`` is not a header, ``...normal. Impression: ...`` is.
    """
    headers = []
    for m in _header_pattern(tuple(extra)).finditer(text):
        before = text[: m.start()].rstrip(" \t")
        line_start = not before or before.endswith("\n")
        sep = m.group("sep").strip()
        if not sep:
            ok = line_start
        elif line_start or before.endswith((".", "!", "?")):
            ok = True
        else:
            ok = sep == ":" and m.group("name").isupper()
        if ok:
            headers.append((_WHITESPACE.sub(" ", m.group("name").upper()), m.start(), m.end()))
    return headers


def _key(name: str) -> str:
    """IMPRESSIONS and IMPRESSION, FINDING and FINDINGS name the same section."""
    name = _WHITESPACE.sub(" ", name.strip().upper())
    return name[:-1] if name.endswith("S") else name


def extract_sections(text: str, sections: Sequence[str] | None = ("FINDINGS", "IMPRESSION"), fallback: str = "full") -> str:
    """The requested sections' text in report order, joined by blank lines, headers removed.

    The paper trains on the Findings and Impression sections (Sec. 3). When none of them is present
    (or all are empty), ``fallback="full"`` returns the whole report and ``"empty"`` returns ``""``.
    ``sections=None`` or empty returns the whole report.
    """
    if fallback not in FALLBACKS:
        raise ConfigError(f"fallback must be one of {FALLBACKS}; got {fallback!r}")
    if not sections:
        return text.strip()
    wanted = {_key(s) for s in sections}
    headers = find_headers(text, tuple(s.upper() for s in sections))
    parts = []
    for i, (name, _, end) in enumerate(headers):
        if _key(name) in wanted:
            stop = headers[i + 1][1] if i + 1 < len(headers) else len(text)
            body = text[end:stop].strip()
            if body:
                parts.append(body)
    if parts:
        return "\n\n".join(parts)
    return text.strip() if fallback == "full" else ""


def normalize_report(text: str) -> str:
    """Collapse every run of whitespace (line breaks included) into one space."""
    return _WHITESPACE.sub(" ", text).strip()


@functools.cache
def _segmenter() -> pysbd.Segmenter:
    # built once per process: construction compiles many rules. clean=False keeps the text as written.
    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, whitespace-normalised, without section headers or empty pieces.

    Headers and blank lines are hard boundaries; single line breaks inside a wrapped sentence are
    not. pysbd handles abbreviations and decimals ("Dr. Smith", "1.5 cm", "e.g.").
    """
    chunks, last = [], 0
    for _, start, end in find_headers(text):
        chunks.append(text[last:start])
        last = end
    chunks.append(text[last:])
    sentences = []
    for chunk in chunks:
        for paragraph in _PARAGRAPH.split(_SOFT_BREAK.sub(" ", chunk)):
            if paragraph.strip():
                sentences.extend(s for s in map(normalize_report, _segmenter().segment(paragraph)) if s)
    return sentences


# bounded so that each loader worker's copy stays small; a miss costs ~0.5 ms, little next to decoding
@functools.lru_cache(maxsize=1 << 16)
def _report_sentences(text: str, sections: tuple[str, ...], fallback: str) -> tuple[str, ...]:
    return tuple(split_sentences(extract_sections(text, sections, fallback)[:MAX_REPORT_CHARS]))


class SentenceSampler:
    """The paper's text transformation t_u (ConVIRT, Sec. 2): "a sentence sampled uniformly from
    the report", after keeping the Findings and Impression sections (Sec. 3).

    ``sampler(text, rng)`` draws with ``rng.randrange`` so one seeded ``random.Random`` per sample
    makes the choice reproducible. Splits are cached per report text (a module-level LRU cache,
    so the sampler stays picklable for loader workers), since every report is seen every epoch.
    A report without sentences returns its stripped text; only the first ``MAX_REPORT_CHARS`` of the
    extracted sections are used. ``mode="report"`` returns the whole
    extracted text instead: a deviation from the paper, for ablations and short captions.
    """

    def __init__(self, mode: str = "sentence", sections: Sequence[str] | None = ("FINDINGS", "IMPRESSION"),
                 fallback: str = "full") -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}; got {mode!r}")
        if fallback not in FALLBACKS:
            raise ConfigError(f"fallback must be one of {FALLBACKS}; got {fallback!r}")
        self.mode, self.sections, self.fallback = mode, tuple(sections or ()), fallback

    def sentences(self, text: str) -> tuple[str, ...]:
        return _report_sentences(text, self.sections, self.fallback)

    def __call__(self, text: str, rng: random.Random) -> str:
        if self.mode == "report":
            return normalize_report(extract_sections(text, self.sections, self.fallback)[:MAX_REPORT_CHARS])
        sentences = self.sentences(text)
        if not sentences:
            return text.strip()
        return sentences[rng.randrange(len(sentences))]
