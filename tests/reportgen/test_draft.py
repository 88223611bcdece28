"""Sentence selection on hand-built candidates: redundancy, adaptive length, the normal path."""

import numpy as np
import pytest

from convirt.errors import ConfigError
from convirt.reportgen.draft import SelectionParams, observation_evidence, select_adaptive, select_topk

TEXTS = ["Small left effusion.", "There is a small left pleural effusion.", "Mild cardiomegaly.", "No pneumothorax.",
         "No pleural effusion.", "Heart size normal.", "No acute cardiopulmonary process.", "The lungs are clear.",
         "Lungs are clear."]
LABELS = [{"Pleural Effusion": 1}, {"Pleural Effusion": 1}, {"Cardiomegaly": 1}, {"Pneumothorax": 0},
          {"Pleural Effusion": 0}, {"Cardiomegaly": 0}, {"No Finding": 1}, {}, {}]
ABNORMAL = np.array([0.9, 0.89, 0.85, 0.8, 0.3, 0.2, 0.1, 0.79, 0.78])


def _embeddings() -> np.ndarray:
    """Orthogonal directions, except the two near-duplicate pairs (0, 1) and (7, 8)."""
    e = np.eye(len(TEXTS), 16)
    e[1] = e[0] + 0.1 * np.eye(16)[12]
    e[8] = e[7] + 0.1 * np.eye(16)[13]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_topk_repeats_what_adaptive_refuses():
    assert select_topk(ABNORMAL, 3) == [0, 1, 2]  # CXR-RePaiR: the paraphrase of the effusion comes second
    chosen, normal, evidence = select_adaptive(ABNORMAL, _embeddings(), LABELS, SelectionParams(window=3, drop=None))
    assert not normal
    assert chosen[:2] == [0, 2]  # one sentence per finding, best first
    assert 1 not in chosen  # the paraphrase: Pleural Effusion is already covered
    assert 4 not in chosen and 5 not in chosen  # denials of covered findings would contradict them
    assert 6 not in chosen  # no normal statement in an abnormal report
    assert 3 in chosen and 7 in chosen
    assert 8 not in chosen  # near-duplicate (cosine 0.995) of a chosen findings-free sentence
    assert evidence["Pleural Effusion"] == pytest.approx(0.9 - 0.3)


def test_similarity_threshold_stops_early():
    chosen, _, _ = select_adaptive(ABNORMAL, _embeddings(), LABELS, SelectionParams(window=3, drop=0.1))
    assert chosen == [0, 2, 3]  # 0.8 >= 0.9 - 0.1; "The lungs are clear." (0.79) is below: stop
    chosen, _, _ = select_adaptive(ABNORMAL, _embeddings(), LABELS, SelectionParams(window=3, drop=None, floor=0.82))
    assert chosen == [0, 2]
    chosen, _, _ = select_adaptive(ABNORMAL, _embeddings(), LABELS, SelectionParams(window=3, drop=None, max_sentences=2))
    assert chosen == [0, 2]


def test_window_limits_the_findings():
    chosen, _, _ = select_adaptive(ABNORMAL, _embeddings(), LABELS, SelectionParams(window=1, drop=0.1))
    assert chosen == [0, 3]  # cardiomegaly (rank 3) is outside a window of 1: no finding of it, and no denial either
    assert 5 not in chosen


def test_normal_path():
    normal_scores = np.array([0.3, 0.29, 0.2, 0.8, 0.7, 0.75, 0.6, 0.85, 0.84])
    chosen, normal, evidence = select_adaptive(normal_scores, _embeddings(), LABELS, SelectionParams())
    assert normal and chosen == [6]  # "No acute cardiopulmonary process." and nothing else
    assert max(evidence.values()) < 0
    # a positive margin below a learned threshold is still normal
    chosen, normal, _ = select_adaptive(ABNORMAL, _embeddings(), LABELS, SelectionParams(normal_threshold=0.7))
    assert normal and chosen == [6]
    # without explicit normal statements: the best denial
    labels = [lab if "No Finding" not in lab else {} for lab in LABELS]
    chosen, normal, _ = select_adaptive(normal_scores, _embeddings(), labels, SelectionParams())
    assert normal and chosen == [3]


def test_mmr_prefers_diverse_sentences():
    """Two optional findings-free candidates of equal score: MMR takes the one unlike the chosen sentence."""
    texts_labels = [{"Edema": 1}, {}, {}]
    emb = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0]])
    scores = np.array([0.9, 0.5, 0.5])
    chosen, _, _ = select_adaptive(scores, emb, texts_labels, SelectionParams(window=1, drop=None, lam=0.5,
                                                                                 normal_threshold=-1.0))
    assert chosen[:2] == [0, 2]
    chosen, _, _ = select_adaptive(scores, emb, texts_labels, SelectionParams(window=1, drop=None, lam=1.0,
                                                                                 normal_threshold=-1.0))
    assert chosen[:2] == [0, 1]  # lambda 1: relevance only, ties to the better rank


def test_evidence_fallbacks_and_validation():
    ev = observation_evidence(np.array([0.5, 0.2]), [{"Edema": 1}, {"No Finding": 1}])
    assert ev == {"Edema": pytest.approx(0.3)}  # no denial of edema: compared with the normal statement
    assert select_adaptive(np.array([]), np.zeros((0, 4)), []) == ([], False, {})
    with pytest.raises(ConfigError):
        SelectionParams(lam=1.5).validate()
    with pytest.raises(ConfigError):
        SelectionParams(window=0).validate()
    p = SelectionParams.from_calibration({"params": {"window": 5, "unknown": 1}}, drop=0.3, lam=None)
    assert (p.window, p.drop, p.lam) == (5, 0.3, 0.7)
