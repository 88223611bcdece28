import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score
from torchmetrics.functional.classification import binary_auroc, multilabel_auroc, multilabel_average_precision

from convirt.errors import ConfigError, DataError
from convirt.evaluation.zeroshot import class_scores, load_prompts, zero_shot_metrics

PROMPTS_JSON = Path("/work/shared/data/prompts/chexpert_class_prompts.json")


# ---------------------------------------------------------------------------------------------- prompts
def test_hand_made_parts_cartesian_product_in_file_order():
    raw = {
        "A": {"severity": ["", "mild"], "subtype": ["x  y", "z"], "location": ["", "at base "]},
        "B": {"location": ["left", "right"], "subtype": ["effusion"]},  # parts combine in the order given
        "C": ["  one prompt ", "two"],
    }
    out = load_prompts(raw)
    assert list(out) == ["A", "B", "C"]
    assert out["A"] == ["x y", "x y at base", "z", "z at base",
                        "mild x y", "mild x y at base", "mild z", "mild z at base"]
    assert len(out["A"]) == 2 * 2 * 2
    assert out["B"] == ["left effusion", "right effusion"]
    assert out["C"] == ["one prompt", "two"]


def test_duplicate_combinations_kept_once():
    out = load_prompts({"E": {"severity": ["", "small"], "subtype": ["effusion", "effusion", "fluid"]}})
    assert out["E"] == ["effusion", "fluid", "small effusion", "small fluid"]  # 2 * 2 distinct of 2 * 3


@pytest.mark.skipif(not PROMPTS_JSON.is_file(), reason="GLoRIA prompt file not available")
def test_real_gloria_prompt_file_counts():
    raw = json.loads(PROMPTS_JSON.read_text())
    out = load_prompts(PROMPTS_JSON)
    assert list(out) == list(raw)
    for name, parts in raw.items():
        distinct_parts = [list(dict.fromkeys(v)) for v in parts.values()]
        assert len(out[name]) == math.prod(len(v) for v in distinct_parts), name
        if all(len(v) == len(set(v)) for v in parts.values()):
            assert len(out[name]) == math.prod(len(v) for v in parts.values()), name
        for p in out[name]:
            assert p == p.strip() and "  " not in p
    if "Pleural Effusion" in raw:  # the file repeats "bilateral pleural effusion": 6*3*3 = 54 combos, 36 distinct
        pe = raw["Pleural Effusion"]
        assert math.prod(len(v) for v in pe.values()) == 54 and len(out["Pleural Effusion"]) == 36
        # File order for this class: severity, location, subtype.
        assert out["Pleural Effusion"][0] == "left bilateral pleural effusion"
    # Sampling: n prompts per class, a subset in combination order, deterministic per seed.
    a, b = load_prompts(PROMPTS_JSON, n_per_class=5, seed=0), load_prompts(PROMPTS_JSON, n_per_class=5, seed=0)
    c = load_prompts(PROMPTS_JSON, n_per_class=5, seed=1)
    assert a == b and a != c
    for name in raw:
        assert len(a[name]) == min(5, len(out[name])) and len(set(a[name])) == len(a[name])
        positions = [out[name].index(p) for p in a[name]]
        assert positions == sorted(positions)


def test_sampling_determinism_and_independence_from_other_classes():
    big = {"severity": [f"s{i}" for i in range(6)], "subtype": [f"t{i}" for i in range(5)]}
    raw = {"X": big, "Y": {"a": ["p", "q"], "b": ["r", "s", "t"]}}
    full = load_prompts(raw)
    s0 = load_prompts(raw, n_per_class=4, seed=0)
    assert s0 == load_prompts(raw, n_per_class=4, seed=0)
    assert any(load_prompts(raw, n_per_class=4, seed=s)["X"] != s0["X"] for s in (1, 2, 3))
    assert len(s0["X"]) == 4 and set(s0["X"]) <= set(full["X"])
    assert load_prompts({"X": big}, n_per_class=4, seed=0)["X"] == s0["X"]  # unaffected by class Y
    assert load_prompts(raw, n_per_class=30)["X"] == full["X"]  # n >= combinations: all, in order


def test_load_from_file_and_errors(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"A": ["a b", "c"]}))
    assert load_prompts(f) == load_prompts(str(f)) == {"A": ["a b", "c"]}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_prompts(bad)
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "missing.json")
    for raw in ([], {}, {"A": []}, {"A": [1, 2]}, {"A": 3}, {"A": {"severity": "mild"}},
                {"A": {"severity": []}}, {"A": {}}, {"A": {"s": ["", " "], "t": [""]}}):
        with pytest.raises(DataError):
            load_prompts(raw)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ConfigError):
            load_prompts({"A": ["a"]}, n_per_class=n)


# ---------------------------------------------------------------------------------------------- scores
def test_mean_and_max_ensembling_differ_on_constructed_case():
    # Class A prompts point along x and y; class B has one prompt (0.8, 0.6).
    # Image (1, 0): mean -> A's unit mean (1, 1)/sqrt2 gives 0.7071 < B's 0.8, so B wins;
    #               max  -> A's best prompt gives 1.0 > 0.8, so A wins.
    img = np.array([[3.0, 0.0], [0.0, 2.0]])  # lengths do not matter: cosine
    prompts = {"A": np.array([[1.0, 0.0], [0.0, 5.0]]), "B": torch.tensor([[8.0, 6.0]])}
    names, mean = class_scores(img, prompts, "mean")
    _, mx = class_scores(img, prompts, "max")
    assert names == ["A", "B"]
    np.testing.assert_allclose(mean, [[1 / math.sqrt(2), 0.8], [1 / math.sqrt(2), 0.6]], atol=1e-12)
    np.testing.assert_allclose(mx, [[1.0, 0.8], [1.0, 0.6]], atol=1e-12)
    assert mean[0].argmax() == 1 and mx[0].argmax() == 0
    _, single = class_scores(img, {"A": np.array([1.0, 1.0])}, "max")  # a 1-D vector is one prompt
    np.testing.assert_allclose(single[:, 0], [1 / math.sqrt(2)] * 2)


def test_class_scores_errors():
    img = np.ones((2, 3))
    with pytest.raises(ConfigError):
        class_scores(img, {"A": np.ones((1, 3))}, "median")
    with pytest.raises(DataError):
        class_scores(img, {"A": np.ones((1, 4))})
    with pytest.raises(DataError):
        class_scores(img, {})
    with pytest.raises(DataError):
        class_scores(img, {"A": np.ones((0, 3))})
    with pytest.raises(DataError):
        class_scores(np.ones(3), {"A": np.ones((1, 3))})
    with pytest.raises(DataError):
        class_scores(img, {"A": np.array([[np.nan, 0, 0]])})


# ---------------------------------------------------------------------------------------------- metrics
def _hand_case():
    # Rows: images; columns: classes a, b, c. Image 3 ties a and b -> argmax takes a (lower index).
    scores = np.array([[0.9, 0.1, 0.3],
                       [0.2, 0.5, 0.1],
                       [0.2, 0.6, 0.7],
                       [0.4, 0.4, 0.0],
                       [0.1, 0.8, 0.2]])
    y = np.array([0, 0, 1, 1, 1])  # class c never present
    return scores, y


def test_multiclass_hand_worked():
    scores, y = _hand_case()
    out = zero_shot_metrics(scores, y, ["a", "b", "c"], "multiclass", n_boot=0)
    # Predictions 0, 1, 2, 0, 1 -> correct for images 0 and 4: accuracy 2/5.
    assert out["accuracy"] == pytest.approx(0.4)
    # F1 a: tp 1, fp 1, fn 1 -> 0.5; b: tp 1, fp 1, fn 2 -> 0.4; c: predicted once, never true -> 0.
    pc = out["per_class"]
    assert (pc["a"]["f1"], pc["b"]["f1"], pc["c"]["f1"]) == pytest.approx((0.5, 0.4, 0.0))
    assert out["macro_f1"] == pytest.approx(0.3)
    # AUROC a (raw column): positives 0.9, 0.2 vs negatives 0.2, 0.4, 0.1 -> (3 + 0.5 + 1) / 6 = 0.75
    # (a tie counts 1/2).
    # AUROC b: positives 0.6, 0.4, 0.8 vs negatives 0.1, 0.5 -> (2 + 1 + 2) / 6.
    assert pc["a"]["auroc"] == pytest.approx(0.75) and pc["b"]["auroc"] == pytest.approx(5 / 6)
    assert pc["c"]["auroc"] is None and out["undefined_classes"] == ["c"]
    assert out["macro_auroc"] == pytest.approx((0.75 + 5 / 6) / 2) and out["n_classes_macro"] == 2
    assert (pc["a"]["n_positive"], pc["c"]["n_predicted"]) == (2, 1)
    # Independent references: sklearn and torchmetrics on the raw one-vs-rest columns.
    pred = scores.argmax(axis=1)
    assert out["accuracy"] == accuracy_score(y, pred)
    assert out["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    for j, name in enumerate("ab"):
        col = (y == j).astype(int)
        assert pc[name]["auroc"] == pytest.approx(roc_auc_score(col, scores[:, j]))
        assert pc[name]["auroc"] == pytest.approx(binary_auroc(torch.tensor(scores[:, j]), torch.tensor(col)).item())
    # One-hot targets and torch inputs give the same result; the result is JSON-safe.
    same = zero_shot_metrics(torch.tensor(scores), np.eye(3, dtype=int)[y], ["a", "b", "c"], "multiclass", n_boot=0)
    assert same == out
    json.dumps(out)


def test_multiclass_f1_leaves_out_absent_and_unpredicted_class():
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0]])
    y = np.array([0, 1, 1, 1])
    out = zero_shot_metrics(scores, y, ["a", "b", "c"], "multiclass", n_boot=0)
    assert out["per_class"]["c"]["f1"] is None
    assert out["macro_f1"] == pytest.approx(f1_score(y, scores.argmax(1), average="macro"))
    assert any("neither present nor predicted" in n for n in out["notes"])


def test_multiclass_bootstrap_ci_deterministic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    scores = rng.normal(size=(60, 3)) + np.eye(3)[y]
    a = zero_shot_metrics(scores, y, ["a", "b", "c"], "multiclass", n_boot=200, seed=3)
    b = zero_shot_metrics(scores, y, ["a", "b", "c"], "multiclass", n_boot=200, seed=3)
    assert a == b
    ci = a["ci"]["accuracy"]
    assert ci["estimate"] == a["accuracy"] and ci["n_boot"] == 200
    assert ci["low"] <= a["accuracy"] <= ci["high"] and ci["low"] < ci["high"]
    assert zero_shot_metrics(scores, y, ["a", "b", "c"], "multiclass", n_boot=200, seed=4)["ci"] != a["ci"]


@pytest.mark.filterwarnings("ignore:No positive samples")
def test_multilabel_matches_torchmetrics_with_ties_and_a_class_without_positives():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (80, 4))
    y[:, 2] = 0  # no positives
    scores = np.round(0.3 * y + rng.normal(0, 0.3, (80, 4)), 1)  # rounding makes many ties
    out = zero_shot_metrics(scores, y, list("wxyz"), "multilabel", n_boot=50)
    tm_auroc = multilabel_auroc(torch.tensor(scores), torch.tensor(y), num_labels=4, average=None).numpy()
    tm_ap = multilabel_average_precision(torch.tensor(scores), torch.tensor(y), num_labels=4, average=None).numpy()
    for j, name in enumerate("wxyz"):
        if name == "y":
            assert out["per_class"][name]["auroc"] is None and out["per_class"][name]["auprc"] is None
            continue
        assert out["per_class"][name]["auroc"] == pytest.approx(tm_auroc[j], abs=1e-6)
        assert out["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(y[:, j], scores[:, j]))
        assert out["per_class"][name]["auprc"] == pytest.approx(tm_ap[j], abs=1e-6)
        assert out["per_class"][name]["auprc"] == pytest.approx(average_precision_score(y[:, j], scores[:, j]))
    keep = [0, 1, 3]
    assert out["macro_auroc"] == pytest.approx(tm_auroc[keep].mean(), abs=1e-6)
    assert out["macro_auprc"] == pytest.approx(tm_ap[keep].mean(), abs=1e-6)
    assert out["undefined_classes"] == ["y"] and out["n_classes_macro"] == 3
    assert out["ci"]["macro_auroc"]["estimate"] == pytest.approx(out["macro_auroc"])
    json.dumps(out)


def test_binary_task_accepts_vectors():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    out = zero_shot_metrics(s, y, ["finding"], "binary", n_boot=0)
    assert out["per_class"]["finding"]["auroc"] == pytest.approx(0.75)
    assert out["per_class"]["finding"]["auprc"] == pytest.approx(5 / 6)
    assert out["macro_auroc"] == pytest.approx(0.75) and out["ci"] is None


def test_metric_errors():
    scores, y = _hand_case()
    with pytest.raises(ConfigError):
        zero_shot_metrics(scores, y, ["a", "b", "c"], "regression")
    with pytest.raises(DataError):
        zero_shot_metrics(scores, y, ["a", "b"], "multiclass")
    with pytest.raises(DataError):
        zero_shot_metrics(scores, np.array([0, 1, 2, 3, 0]), ["a", "b", "c"], "multiclass")
    with pytest.raises(DataError):
        zero_shot_metrics(scores, y[:4], ["a", "b", "c"], "multiclass")
    with pytest.raises(DataError):
        zero_shot_metrics(scores, np.full((5, 3), 2), ["a", "b", "c"], "multilabel")
    with pytest.raises(DataError):
        zero_shot_metrics(np.full((5, 3), np.nan), y, ["a", "b", "c"], "multiclass")
    with pytest.raises(ConfigError):
        zero_shot_metrics(scores, y, ["a", "b", "c"], "multiclass", n_boot=-1)


def test_itertools_reference_for_combination_order():
    # The documented order is itertools.product over the parts as listed.
    parts = {"p": ["a", "b"], "q": ["c"], "r": ["d", "e", "f"]}
    expected = [" ".join(c) for c in itertools.product(*parts.values())]
    assert load_prompts({"K": parts})["K"] == expected
