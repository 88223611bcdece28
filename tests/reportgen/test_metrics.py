"""BLEU and ROUGE-L agree with the libraries called directly; label F1 and repetition counts."""

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from convirt.reportgen.metrics import bleu, label_f1, reference_text, repetition, report_repetition, rouge_l

HYP = ["No pleural effusion. Mild cardiomegaly.", "The lungs are clear. No pneumothorax is seen."]
REF = ["There is no pleural effusion. The heart is mildly enlarged.", "The lungs are clear. There is no pneumothorax."]


def test_bleu_matches_sacrebleu():
    ours = bleu(HYP, REF)
    for n in range(1, 5):
        direct = BLEU(max_ngram_order=n, lowercase=True).corpus_score(HYP, [REF]).score / 100
        assert ours[f"BLEU-{n}"] == pytest.approx(direct)
    assert bleu(REF, REF)["BLEU-4"] == pytest.approx(1.0)
    assert ours["BLEU-1"] > ours["BLEU-4"] > 0


def test_rouge_l_matches_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    direct = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYP, REF)) / 2
    assert rouge_l(HYP, REF) == pytest.approx(direct)
    assert rouge_l(["a b c d"], ["a b c d"]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rouge_l(["a"], [])


def test_label_f1():
    names = ["A", "B", "C"]
    out = label_f1([[1, 0, 0], [0, 1, 0], [1, 1, 0]], [[1, 0, 0], [0, 0, 0], [1, 1, 1]], names)
    # A: tp 2, fp 0, fn 0 -> 1; B: tp 1, fn 1 -> 2/3; C: fp 1 -> 0; micro: tp 3, fp 1, fn 1 -> 0.75
    assert out["micro_f1"] == pytest.approx(0.75)
    assert out["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert out["macro_f1_present"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["per_label"]["B"]["recall"] == pytest.approx(0.5)


def test_repetition_counts():
    assert repetition(["Small left effusion.", "There is a small left pleural effusion.", "Mild cardiomegaly."]) == \
        {"repeated": 1, "contradicted": 0}
    assert repetition(["Small left effusion.", "No pleural effusion.", "No effusion."]) == {"repeated": 2, "contradicted": 1}
    assert repetition(["No acute cardiopulmonary process.", "Normal chest radiograph."])["repeated"] == 1
    assert repetition(["The trachea is midline."]) == {"repeated": 0, "contradicted": 0}
    assert report_repetition("FINDINGS: Mild cardiomegaly. IMPRESSION: Mild cardiomegaly.")["repeated"] == 1
    assert reference_text("FINDINGS: Heart normal.\n\nIMPRESSION: No acute disease.") == "Heart normal. No acute disease."


def test_paired_bootstrap():
    from convirt.reportgen.metrics import paired_bootstrap_micro_f1

    truth = [[1, 0], [0, 1], [1, 1], [0, 0]] * 10
    better = [[1, 0], [0, 1], [1, 1], [0, 0]] * 10
    worse = [[0, 0], [0, 1], [1, 0], [1, 0]] * 10
    out = paired_bootstrap_micro_f1(truth, better, worse, n_boot=200)
    assert out["diff"] == pytest.approx(1 - 2 * 2 / (4 + 3)) and 0 < out["low"] <= out["diff"] <= out["high"]
