"""A rule-based chest X-ray report labeller: observations with negation and uncertainty, per sentence.

Why rules: report-generation papers score clinical correctness by labelling the generated and the
reference report with the same labeller and comparing the labels (CheXpert / CheXbert F1). The
CheXpert labeller (Irvin et al., AAAI 2019) and NegBio need a constituency parser and its model;
CheXbert needs weights. Nothing may be downloaded here, so this module re-implements the idea with
regular expressions, in the spirit of NegEx (Chapman et al., 2001) and the CheXpert labeller:

1. a sentence is cut into clauses at scope breakers (``;``, ``but``, ``however``, ``except``,
   ``, and the``, ...): a cue never reaches past its clause;
2. *mentions* of each observation are found by pattern (the CheXpert 14 observations, which cover
   the synthetic generator's ``FINDINGS`` vocabulary);
3. a mention is **uncertain** (-1) after phrases that hedge although they hold a negation word
   (``cannot exclude``, ``not ruled out``), else **negative** (0) after a negation cue in its clause
   (``no``, ``without``, ``free of``, ``negative for``, ``no evidence of``) or before a
   post-negation (``... is not seen``, ``... has resolved``), else **uncertain** after a hedge
   (``may``, ``possible``, ``likely``, ``concerning for``, ``suggestive of``) or before one
   (``... cannot be excluded``), else **positive** (1);
4. "normal-state" sentences assert negatives directly (``heart size is normal``: Cardiomegaly 0;
   ``the costophrenic angles are sharp``: Pleural Effusion 0; ``the osseous structures are
   intact``: Fracture 0; ``pulmonary vascularity is within normal limits``: Edema 0), and explicit
   normal statements (``no acute cardiopulmonary process``) are a ``No Finding`` mention;
5. a report's label per observation aggregates its mentions as CheXpert does (any positive: 1;
   else any uncertain: -1; else 0; never mentioned: absent), and ``No Finding`` is 1 when no other
   observation (Support Devices aside) is positive or uncertain and no other abnormality is named.

Known limits (measured, or by construction): no syntax, so a negation cue reaches every mention
after it in its clause ("no effusion, small pneumothorax" reads the pneumothorax as negated);
laterality, severity and change over time ("improved", "new") are ignored; "Lung Opacity" is any
opacity/infiltrate word, as in CheXpert; the mention lists are shorter than CheXpert's (rare
synonyms are missed). Tested on the synthetic generator's every phrasing and on hand-written
sentences (``tests/reportgen/test_labeller.py``); on the synthetic reports it reproduces the ground
truth exactly (``benchmarks/report_generation.py`` checks it on every run).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from convirt.data.reports import extract_sections, split_sentences

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
NO_FINDING, SUPPORT_DEVICES = "No Finding", "Support Devices"
CHEXPERT = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")

# ------------------------------------------------------------------------------------------ mentions
# Regular expressions over lower-case text; ``\b`` guards keep "nondisplaced" from reading as "no".
_HEART = r"(?:heart(?:\s+size)?|cardiac\s+(?:silhouette|size|shadow|contour)s?|cardio\s*mediastinal\s+silhouette|size\s+of\s+the\s+heart)"
_ENLARGED = r"(?:enlarged|enlargement|large|increased|prominent)"
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"widen(?:ed|ing)\s+(?:of\s+the\s+)?(?:superior\s+)?mediastin\w*", r"mediastin\w*\s+widening",
        r"enlarged\s+cardiomediastin\w*", r"cardiomediastin\w*\s+(?:silhouette\s+)?(?:is\s+|are\s+)?(?:\w+ly\s+)?enlarged",
        r"mediastin\w*\s+(?:contours?\s+|silhouette\s+)?(?:is\s+|are\s+)?(?:\w+ly\s+)?(?:widened|enlarged)"],
    "Cardiomegaly": [
        r"cardiomegaly", r"cardiac\s+enlargement", r"enlarged\s+(?:heart|cardiac\s+silhouette)",
        rf"{_ENLARGED}\s+(?:of\s+)?(?:the\s+)?(?:heart|cardiac\s+(?:silhouette|size|shadow|contour))",
        rf"{_HEART}\s+(?:is\s+|are\s+|appears?\s+|remains?\s+|seems?\s+)?(?:\w+ly\s+)?{_ENLARGED}"],
    "Lung Opacity": [
        r"opaci(?:ty|ties|fication|fied)", r"infiltrat(?:e|es|ion|ive)", r"air[\s-]?space\s+(?:disease|process)",
        r"(?:increased|hazy)\s+density", r"haziness", r"interstitial\s+(?:markings?|pattern|opacit\w+)",
        r"reticula(?:r|tion)", r"(?<!pleural\s)scar(?:ring)?\b"],
    "Lung Lesion": [r"mass(?:es)?\b", r"nodul(?:e|es|ar\s+(?:density|densities|opacit\w+))", r"lump", r"cavitary\s+lesion",
                    r"carcinoma", r"neoplasm", r"tumou?r", r"lung\s+lesion"],
    "Edema": [r"o?edema", r"heart\s+failure", r"\bchf\b", r"(?:vascular|pulmonary)\s+congestion", r"vascular\s+prominence",
              r"cephalization"],
    "Consolidation": [r"consolidat(?:ion|ions|ed|ive)"],
    "Pneumonia": [r"pneumonia", r"infectio(?:n|us)(?:\s+process)?", r"bronchopneumonia"],
    "Atelectasis": [r"atelecta\w*", r"collapse[ds]?"],
    "Pneumothorax": [r"pneumothora(?:x|ces)", r"\bptx\b"],
    "Pleural Effusion": [r"effusions?", r"pleural\s+fluid", r"hydrothorax"],
    "Pleural Other": [r"pleural\s+(?:thickening|scar\w*|plaques?)", r"fibrothorax", r"pleuro-?parenchymal\s+scar\w*",
                      r"fibrosis"],
    "Fracture": [r"fractur\w*", r"\bfx\b"],
    "Support Devices": [r"pacer", r"pacemaker", r"\bpicc\b", r"(?:endotracheal|et|chest|feeding|nasogastric|ng|enteric|"
                        r"tracheostomy)\s+tube", r"catheter", r"central\s+(?:venous\s+)?line", r"\bicd\b",
                        r"defibrillator", r"sternotomy\s+wires?", r"surgical\s+(?:clips|hardware)", r"\bport\b",
                        r"mediport", r"\bstent\b", r"\bdrain\b", r"valve\s+replacement", r"prosthe\w+\s+valve"],
}

# Phrases that, in a sentence about the current study, say an observation is absent.
NORMAL_STATES: dict[str, list[str]] = {
    "Cardiomegaly": [
        rf"{_HEART}\s+(?:is\s+|are\s+|appears?\s+|remains?\s+|seems?\s+)?(?:(?:grossly|otherwise|overall)\s+)?"
        r"(?:normal|within\s+normal\s+limits|unremarkable|not\s+enlarged|stable\s+and\s+normal|top\s+normal)",
        rf"(?:normal|unremarkable)\s+(?:\w+\s+){{0,2}}?{_HEART}",
        rf"{_HEART}\s+(?:(?:and|,)\s+[\w\s,]+?\s+)?(?:(?:is|are|appears?|remains?)\s+)?(?:grossly\s+|otherwise\s+)?"
        r"(?:normal|within\s+normal\s+limits|unremarkable)",
        r"heart\s+(?:is\s+)?normal\s+in\s+size", r"no\s+cardiac\s+enlargement"],
    "Enlarged Cardiomediastinum": [
        r"(?:cardio\s*)?mediastin(?:al|um)(?:\s+(?:silhouette|contours?|structures|width))?\s+(?:(?:and|,)\s+[\w\s,]+?\s+)?"
        r"(?:is\s+|are\s+|appears?\s+|remains?\s+)?(?:grossly\s+|otherwise\s+)?(?:normal|within\s+normal\s+limits|unremarkable|stable)",
        r"(?:normal|unremarkable)\s+(?:\w+\s+){0,2}?(?:cardio\s*)?mediastinal\s+(?:silhouette|contours?)"],
    "Edema": [
        r"(?:pulmonary\s+)?vascular(?:ity|ature)\s+(?:(?:and|,)\s+[\w\s,]+?\s+)?(?:is\s+|are\s+|appears?\s+|remains?\s+)?"
        r"(?:grossly\s+|otherwise\s+)?(?:normal|within\s+normal\s+limits|unremarkable)",
        r"(?:normal|unremarkable)\s+(?:\w+\s+){0,2}?(?:pulmonary\s+)?vascular(?:ity|ature)"],
    "Pleural Effusion": [r"costophrenic\s+(?:angles?|sulc[ui]s?|recesses)\s+(?:are\s+|is\s+)?(?:sharp|clear|preserved|normal)",
                         r"sharp\s+costophrenic\s+angles?"],
    "Fracture": [r"(?:osseous|bony)\s+structures\s+(?:are\s+)?(?:grossly\s+)?(?:intact|unremarkable|normal)",
                 r"no\s+(?:acute\s+)?(?:osseous|bony|skeletal)\s+(?:abnormalit\w+|injury|lesions?|findings?)",
                 r"(?:osseous|bony)\s+structures[\w\s]*?\s+(?:are\s+)?without\s+(?:acute\s+)?abnormalit\w*",
                 r"(?:ribs|bones)\s+(?:are\s+)?(?:grossly\s+)?intact"],
    "Atelectasis": [r"lungs?\s+(?:are\s+|is\s+)?well[\s-]expanded\s+without\s+atelecta\w*"],
}
# Explicit statements that the study is normal (a "No Finding" mention, which repeats count).
NORMAL_STATEMENTS = [
    r"no\s+(?:(?:acute|active|radiographic|significant|evidence\s+of)\s+){1,3}(?:(?:cardiopulmonary|cardiothoracic|chest|"
    r"intrathoracic|pulmonary|radiographic)\s+){0,2}(?:process|abnormalit\w+|disease|findings?|pathology)",
    r"normal\s+(?:chest(?:\s+(?:radiograph|x-?ray|film|study|examination))?|radiograph|study|examination)",
    r"negative\s+(?:chest|examination|study|exam)\b", r"(?:chest|study)\s+(?:is\s+)?(?:within\s+normal\s+limits|normal)",
    r"no\s+(?:radiographic\s+)?evidence\s+of\s+(?:acute\s+)?(?:cardiopulmonary\s+)?disease",
]
# Other abnormalities: not one of the 14 observations, but a report naming them is not "No Finding"
# (CheXpert's no-finding list, shortened).
OTHER_ABNORMAL = [r"emphysema", r"granulom\w+", r"scoliosis", r"degenerat\w+", r"calcifi\w+", r"hyperinflat\w+",
                  r"hyperexpan\w+", r"hernia", r"copd", r"thickening", r"osteopenia", r"metasta\w+", r"kyphosis",
                  r"deformit\w+", r"tortuous", r"elevat(?:ed|ion)", r"blunt\w*", r"volume\s+loss", r"bronchiectasis",
                  r"pneumomediastinum", r"pneumoperitoneum", r"eventration", r"atheroscl\w+", r"ectatic"]

# --------------------------------------------------------------------------------------------- cues
# Uncertain although a negation word is present (checked first, as in CheXpert's pre-negation uncertainty).
_UNCERTAIN_NEGATION = (r"cannot\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:exclude|excluded|ruled?\s+out)|can\s+not\s+be\s+"
                       r"(?:excluded|ruled\s+out)|not\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded|ruled\s+out)|"
                       r"could\s+not\s+(?:be\s+)?(?:excluded|ruled\s+out)|difficult\s+to\s+exclude|no\s+definite\s+change")
_NEGATION_PRE = (r"\b(?:no|not|without|absence\s+of|free\s+of|negative\s+for|resolution\s+of|"
                 r"rather\s+than|clear\s+of|removal\s+of|never|nor|neither)\b|\bno\s+evidence\s+of\b|\bdenies\b")
_NEGATION_POST = (r"^[\w\s,-]{0,40}?\b(?:(?:is|are|was|were|has\s+been|have\s+been)\s+)?(?:not\s+(?:seen|identified|"
                  r"visualized|visualised|present|demonstrated|appreciated|evident|noted|detected)|absent|resolved|"
                  r"(?:has|have)\s+resolved|no\s+longer\s+(?:seen|present|visualized|evident)|removed|cleared)\b")
_UNCERTAIN_PRE = (r"\b(?:may|might|could|possible|possibly|probable|probably|likely|presumed|presumably|questionable|"
                  r"question\s+of|suspicious\s+(?:for|of)|suspected|suspect|concern(?:ing)?\s+for|suggestive\s+of|"
                  r"suggest(?:s|ing|ed)?|versus|vs\.?|differential|consider(?:ed|ation)?|borderline|equivocal|"
                  r"indeterminate|rule\s+out|r/o|cannot\s+exclude|not\s+excluded|atypical|worrisome\s+for|"
                  r"raises?\s+the\s+possibility|uncertain|unclear|unlikely)\b|\bor\s+(?:\w+\s+)?$")
_UNCERTAIN_POST = (r"^[\w\s,-]{0,40}?\b(?:(?:is|are)\s+)?(?:possible|likely|suspected|questioned|not\s+excluded|"
                   r"cannot\s+be\s+(?:excluded|ruled\s+out)|not\s+ruled\s+out|unlikely|versus|vs\.?)\b|^\s*\?|^\s*,?\s*or\b")
_UNCERTAIN_STATES = {"Cardiomegaly": [r"(?:upper|high)(?:\s+limits?)?\s+(?:of\s+)?normal", r"borderline\s+(?:\w+\s+)?"
                                      r"(?:heart|cardiac|cardiomegaly|enlarge\w*)"]}
# Clause boundaries: a cue never reaches past these.
_BREAKS = re.compile(r";|\s(?:but|however|although|though|except|apart\s+from|aside\s+from|whereas|which)\b|"
                     r",\s*(?:and|with)\s+(?:the|there|a|an)\b|\s(?:and|with)\s+(?:there|the\s+\w+\s+(?:is|are))\b|"
                     r"\.\s|:\s")


@functools.cache
def _compiled() -> dict:
    flags = re.IGNORECASE
    union = lambda pats: re.compile("|".join(f"(?:{p})" for p in pats), flags)
    return {
        "mentions": {k: union(v) for k, v in MENTIONS.items()},
        "normal_states": {k: union(v) for k, v in NORMAL_STATES.items()},
        "uncertain_states": {k: union(v) for k, v in _UNCERTAIN_STATES.items()},
        "normal_statements": union(NORMAL_STATEMENTS), "other": union(OTHER_ABNORMAL),
        "unc_neg": re.compile(_UNCERTAIN_NEGATION, flags), "neg_pre": re.compile(_NEGATION_PRE, flags),
        "neg_post": re.compile(_NEGATION_POST, flags), "unc_pre": re.compile(_UNCERTAIN_PRE, flags),
        "unc_post": re.compile(_UNCERTAIN_POST, flags),
    }


def _clauses(sentence: str) -> list[str]:
    text = " ".join(sentence.lower().split())
    out, last = [], 0
    for m in _BREAKS.finditer(text):
        out.append(text[last:m.start()])
        last = m.end() if m.group(0).strip() in (";", ".", ":") else m.start()
    out.append(text[last:])
    return [c for c in (c.strip() for c in out) if c]


def _status(clause: str, start: int, end: int) -> int:
    c = _compiled()
    before, after = clause[:start], clause[end:]
    if c["unc_neg"].search(before) or c["unc_neg"].search(after[:60]):
        return UNCERTAIN
    if c["neg_pre"].search(before) or c["neg_post"].search(after):
        return NEGATIVE
    if c["unc_pre"].search(before) or c["unc_post"].search(after):
        return UNCERTAIN
    return POSITIVE


def _merge(old: int | None, new: int) -> int:
    """CheXpert's aggregation of several mentions: positive wins, then uncertain, then negative."""
    if old is None:
        return new
    if POSITIVE in (old, new):
        return POSITIVE
    if UNCERTAIN in (old, new):
        return UNCERTAIN
    return NEGATIVE


def label_sentence(sentence: str) -> dict[str, int]:
    """``{observation: 1 | 0 | -1}`` for every observation the sentence mentions.

    ``No Finding`` appears only for an explicit normal statement ("No acute cardiopulmonary
    process."), with value 1; other abnormalities outside the 14 observations appear under
    ``"Other"`` (positive or uncertain mentions only), so the report-level ``No Finding`` can use them.
    """
    c = _compiled()
    out: dict[str, int] = {}
    for clause in _clauses(sentence):
        if c["normal_statements"].search(clause):
            out[NO_FINDING] = POSITIVE
        borderline: list[tuple[int, int]] = []
        for name, pattern in c["uncertain_states"].items():
            for m in pattern.finditer(clause):
                out[name] = _merge(out.get(name), UNCERTAIN)
                borderline.append(m.span())
        covered = list(borderline)
        for name, pattern in c["normal_states"].items():
            for m in pattern.finditer(clause):
                if not any(s <= m.start() < e for s, e in borderline):
                    out[name] = _merge(out.get(name), NEGATIVE)
                    covered.append(m.span())
        for name, pattern in c["mentions"].items():
            for m in pattern.finditer(clause):
                if any(s <= m.start() < e for s, e in covered):
                    continue  # already read as a normal or borderline state
                out[name] = _merge(out.get(name), _status(clause, m.start(), m.end()))
        for m in c["other"].finditer(clause):
            if _status(clause, m.start(), m.end()) != NEGATIVE:
                out["Other"] = POSITIVE
    return out


def report_sentences(text: str, sections: Sequence[str] | None = ("FINDINGS", "IMPRESSION")) -> list[str]:
    """The sentences of a report's FINDINGS and IMPRESSION (the whole text when it has neither)."""
    return split_sentences(extract_sections(text, sections, "full"))


def aggregate(sentence_labels: Iterable[dict[str, int]], observations: Sequence[str] = CHEXPERT) -> dict[str, int | None]:
    """Report-level labels from per-sentence labels: CheXpert's rules (see the module docstring)."""
    merged: dict[str, int] = {}
    for labels in sentence_labels:
        for name, value in labels.items():
            merged[name] = _merge(merged.get(name), value)
    finding = any(v in (POSITIVE, UNCERTAIN) for k, v in merged.items() if k not in (NO_FINDING, SUPPORT_DEVICES))
    out: dict[str, int | None] = {name: merged.get(name) for name in observations if name != NO_FINDING}
    if NO_FINDING in observations:
        out[NO_FINDING] = 0 if finding else 1
    return {name: out[name] for name in observations}


def label_report(text: str, observations: Sequence[str] = CHEXPERT, split: bool = True) -> dict[str, int | None]:
    """Report-level labels: 1, 0, -1, or ``None`` (not mentioned); ``No Finding`` is 0 or 1.

    ``split=False`` labels ``text`` as one sentence (already a sentence, or a list joined by the caller).
    """
    sentences = report_sentences(text) if split else [text]
    return aggregate((label_sentence(s) for s in sentences), observations)


def binarize(labels: dict[str, int | None], observations: Sequence[str], uncertain: str = "positive") -> list[int]:
    """0/1 per observation: positive is 1, negative and absent are 0; uncertain by ``uncertain``
    (``"positive"``, U-Ones, the default: hedged phrasings such as "concerning for pneumonia" are
    positives in the synthetic ground truth; or ``"negative"``, U-Zeros)."""
    if uncertain not in ("positive", "negative"):
        raise ValueError(f"uncertain must be 'positive' or 'negative', got {uncertain!r}")
    u = 1 if uncertain == "positive" else 0
    return [1 if labels.get(o) == POSITIVE else (u if labels.get(o) == UNCERTAIN else 0) for o in observations]


def mentioned(labels: dict[str, int]) -> set[str]:
    """Observations a sentence says anything about (positive, negative or uncertain), ``Other`` aside."""
    return {k for k in labels if k != "Other"}
