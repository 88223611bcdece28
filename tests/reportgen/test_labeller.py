"""The rule-based labeller against hand-labelled sentences and every phrasing of the synthetic generator."""

import numpy as np
import pytest

from convirt.data import synthetic as S
from convirt.reportgen.labeller import CHEXPERT, aggregate, binarize, label_report, label_sentence

# (sentence, expected labels of the observations it mentions), labelled by hand
HAND = [
    ("No pneumothorax.", {"Pneumothorax": 0}),
    ("There is no pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("The lungs are free of focal airspace disease.", {"Lung Opacity": 0}),
    ("Negative for pneumonia.", {"Pneumonia": 0}),
    ("Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Mild cardiomegaly with pulmonary vascular congestion.", {"Cardiomegaly": 1, "Edema": 1}),
    ("Large right pleural effusion with associated atelectasis of the right lower lobe.",
     {"Pleural Effusion": 1, "Atelectasis": 1}),
    ("Possible small left pleural effusion.", {"Pleural Effusion": -1}),
    ("Left basilar opacity may represent atelectasis or pneumonia.", {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Cannot exclude a small pneumothorax.", {"Pneumothorax": -1}),
    ("Patchy opacity, concerning for pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("No pleural effusion but there is mild cardiomegaly.", {"Pleural Effusion": 0, "Cardiomegaly": 1}),
    ("No pneumothorax; small right effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("The heart is normal in size.", {"Cardiomegaly": 0}),
    ("Heart size and pulmonary vascularity appear within normal limits.", {"Cardiomegaly": 0, "Edema": 0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": -1}),
    ("The costophrenic angles are sharp.", {"Pleural Effusion": 0}),
    ("No acute bony abnormality.", {"Fracture": 0}),
    ("Healing fracture of the left 7th rib.", {"Fracture": 1}),
    ("Cortical discontinuity of the right 5th posterior rib, consistent with a nondisplaced fracture.", {"Fracture": 1}),
    ("A right pleural line with absent lung markings beyond it indicates a large pneumothorax.", {"Pneumothorax": 1}),
    ("The pneumothorax has resolved.", {"Pneumothorax": 0}),
    ("Right PICC line tip in the SVC.", {"Support Devices": 1}),
    ("Calcified granuloma in the right upper lobe.", {"Other": 1}),
    ("No acute cardiopulmonary abnormality.", {"No Finding": 1}),
    ("The trachea is midline.", {}),
]


@pytest.mark.parametrize("sentence,expected", HAND)
def test_hand_labelled_sentences(sentence, expected):
    assert label_sentence(sentence) == expected


def _every_positive_phrasing():
    for name in S.LESIONS:
        for template in S._POSITIVE[name] + [S._IMPRESSION[name]]:
            for severity in range(3):
                sides = (["right", "left", "bilateral"] if name == "Pleural Effusion" else ["right", "left"]) \
                    if name in S.LATERALISED else [None]
                for side in sides:
                    location = {"Consolidation": "lower", "Pneumonia": "upper", "Atelectasis": "base", "Fracture": "7"}.get(name)
                    finding = S.Finding(name, severity, side, location)
                    yield name, S._cap(template.format(**S._words(finding)))


def test_every_synthetic_phrasing():
    """Each template of the generator: positives assert their finding (and no other of the 8), negatives deny it."""
    n = 0
    for name, sentence in _every_positive_phrasing():
        labels = label_sentence(sentence)
        assert labels.get(name) in (1, -1), sentence
        assert not any(v in (1, -1) for k, v in labels.items() if k in S.LESIONS and k != name), sentence
        n += 1
    for name in S.LESIONS:
        for sentence in S._NEGATIVE[name]:
            labels = label_sentence(sentence)
            assert labels.get(name) == 0, sentence
            assert not any(v in (1, -1) for v in labels.values()), sentence
            n += 1
    for sentence in S._NORMAL_IMPRESSION:
        assert label_sentence(sentence) == {"No Finding": 1}
    for sentence in S._FILLER:
        assert label_sentence(sentence) == {}
    assert n > 200


def test_synthetic_reports_match_ground_truth():
    """The labeller reads the generator's reports exactly as its ground truth (uncertain = positive)."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        findings = S.sample_findings(rng)
        text = S.write_report(findings, rng)
        positive = {f.name for f in findings}
        truth = [int(not positive)] + [int(n in positive) for n in S.LESIONS]
        assert binarize(label_report(text, S.FINDINGS), S.FINDINGS) == truth, text


def test_report_aggregation_and_no_finding():
    labels = label_report("FINDINGS: No pleural effusion. Possible small left pleural effusion. Heart size normal. "
                          "IMPRESSION: Small left pleural effusion.")
    assert labels["Pleural Effusion"] == 1 and labels["Cardiomegaly"] == 0 and labels["No Finding"] == 0
    assert labels["Pneumothorax"] is None
    normal = label_report("FINDINGS: The lungs are clear. No pneumothorax. IMPRESSION: No acute disease.")
    assert normal["No Finding"] == 1 and normal["Pneumothorax"] == 0
    assert aggregate([{"Edema": -1}, {"Edema": 0}])["Edema"] == -1
    assert aggregate([{"Other": 1}])["No Finding"] == 0 and aggregate([])["No Finding"] == 1
    assert set(label_report("")) == set(CHEXPERT)
    assert binarize({"Edema": -1, "Atelectasis": 1}, ["Edema", "Atelectasis", "Fracture"]) == [1, 1, 0]
    assert binarize({"Edema": -1}, ["Edema"], uncertain="negative") == [0]
