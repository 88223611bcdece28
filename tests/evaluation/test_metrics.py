import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import (binary_auroc, binary_average_precision, multilabel_auroc,
                                                    multilabel_average_precision)

from convirt.errors import DataError
from convirt.evaluation.metrics import bootstrap_ci, classification_metrics, macro_auroc


def _random_multilabel(seed: int, n: int = 400, labels: int = 5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, labels))
    score = 1 / (1 + np.exp(-(y * rng.normal(1.0, 1.0, (n, labels)) + rng.normal(0, 1.5, (n, labels)))))
    return y, score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_auprc_match_torchmetrics_multilabel(seed):
    y, s = _random_multilabel(seed)
    out = classification_metrics(y, s, [f"l{j}" for j in range(y.shape[1])])
    tm_auroc = multilabel_auroc(torch.tensor(s), torch.tensor(y), num_labels=y.shape[1], average=None).numpy()
    tm_ap = multilabel_average_precision(torch.tensor(s), torch.tensor(y), num_labels=y.shape[1], average=None).numpy()
    ours_auroc = np.array([out["per_label"][f"l{j}"]["auroc"] for j in range(y.shape[1])])
    ours_ap = np.array([out["per_label"][f"l{j}"]["auprc"] for j in range(y.shape[1])])
    np.testing.assert_allclose(ours_auroc, tm_auroc, atol=1e-6)
    np.testing.assert_allclose(ours_ap, tm_ap, atol=1e-6)
    assert out["macro"]["auroc"] == pytest.approx(tm_auroc.mean(), abs=1e-6)
    assert out["macro"]["auprc"] == pytest.approx(tm_ap.mean(), abs=1e-6)


def test_hand_worked_binary_case_and_torchmetrics():
    # Ranking by score: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg).
    # AUROC: of the 4 (pos, neg) pairs, 3 are ordered correctly -> 0.75.
    # AP: precision 1/1 at the first positive, 2/3 at the second -> (1 + 2/3) / 2 = 5/6.
    # Threshold 0.5: predictions 0,0,0,1 -> accuracy 3/4, F1 = 2*1*0.5/(1+0.5) = 2/3.
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    out = classification_metrics(y, s, ["finding"])
    row = out["per_label"]["finding"]
    assert row["auroc"] == pytest.approx(0.75)
    assert row["auprc"] == pytest.approx(5 / 6)
    assert row["accuracy"] == pytest.approx(0.75)
    assert row["f1"] == pytest.approx(2 / 3)
    assert row["auroc"] == pytest.approx(binary_auroc(torch.tensor(s), torch.tensor(y)).item(), abs=1e-6)
    assert row["auprc"] == pytest.approx(binary_average_precision(torch.tensor(s), torch.tensor(y)).item(), abs=1e-6)
    # A lower threshold changes accuracy/F1 but not the ranking metrics.
    low = classification_metrics(y, s, ["finding"], threshold=0.3)["per_label"]["finding"]
    assert low["accuracy"] == pytest.approx(0.75) and low["f1"] == pytest.approx(0.8)
    assert low["auroc"] == row["auroc"]


def test_single_class_label_is_none_and_left_out_of_macro():
    y, s = _random_multilabel(3, labels=3)
    y[:, 1] = 0  # no positives in the test set
    y[:, 2] = 1  # only positives
    out = classification_metrics(y, s, ["a", "b", "c"])
    assert out["per_label"]["b"]["auroc"] is None and out["per_label"]["b"]["auprc"] is None
    assert out["per_label"]["c"]["auroc"] is None
    assert out["undefined_labels"] == ["b", "c"] and out["n_labels_macro"] == 1
    assert out["macro"]["auroc"] == pytest.approx(out["per_label"]["a"]["auroc"])
    assert out["macro"]["f1"] == pytest.approx(out["per_label"]["a"]["f1"])
    assert out["notes"] and "b" in out["notes"][0]
    json.dumps(out, allow_nan=False)  # JSON-safe: no NaN anywhere


def test_all_labels_undefined_gives_none_macro():
    out = classification_metrics(np.zeros((5, 2), int), np.full((5, 2), 0.3), ["a", "b"])
    assert out["macro"]["auroc"] is None and out["n_labels_macro"] == 0


def test_rejects_nan_scores_and_shape_mismatch():
    with pytest.raises(DataError, match="NaN"):
        classification_metrics(np.array([0, 1]), np.array([0.2, np.nan]), ["a"])
    with pytest.raises(DataError):
        classification_metrics(np.zeros((4, 2)), np.zeros((4, 3)), ["a", "b"])
    with pytest.raises(DataError):
        classification_metrics(np.zeros((4, 2)), np.zeros((4, 2)), ["a"])


def test_accepts_torch_tensors():
    y, s = _random_multilabel(4)
    a = classification_metrics(torch.tensor(y), torch.tensor(s, dtype=torch.float32), list("abcde"))
    b = classification_metrics(y, s.astype(np.float32), list("abcde"))
    assert a["macro"] == b["macro"]


def test_bootstrap_ci_is_deterministic_and_brackets_the_estimate():
    y, s = _random_multilabel(5, n=300, labels=2)
    a = bootstrap_ci(y, s, macro_auroc, n_boot=200, seed=7)
    b = bootstrap_ci(y, s, macro_auroc, n_boot=200, seed=7)
    c = bootstrap_ci(y, s, macro_auroc, n_boot=200, seed=8)
    assert a == b and a != c
    assert a["low"] < a["estimate"] < a["high"]
    assert a["estimate"] == pytest.approx(macro_auroc(y, s))
    # More test rows -> narrower interval.
    y2, s2 = _random_multilabel(5, n=2000, labels=2)
    narrow = bootstrap_ci(y2, s2, macro_auroc, n_boot=100, seed=7)
    assert narrow["high"] - narrow["low"] < a["high"] - a["low"]


def test_bootstrap_skips_resamples_where_metric_is_undefined():
    from sklearn.metrics import roc_auc_score

    y = np.array([1] + [0] * 19)  # one positive: many resamples miss it
    s = np.linspace(1, 0, 20)
    out = bootstrap_ci(y, s, roc_auc_score, n_boot=300, seed=0)
    assert 0 < out["n_skipped"] < 300 and out["n_valid"] + out["n_skipped"] == 300
    assert out["low"] is not None and out["low"] <= out["high"]
    assert math.isfinite(out["estimate"])
