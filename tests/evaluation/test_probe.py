import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from convirt.errors import DataError
from convirt.evaluation.probe import DEFAULT_CS, fit_linear_probe, linear_probe_over_fractions
from convirt.evaluation.splits import label_fraction_subsets


def linear_data(n: int, d: int = 32, labels: int = 3, noise: float = 0.0, seed: int = 0):
    """Features with a (nearly) linear rule per label, on an arbitrary scale (the probe standardises)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 20, d) + rng.normal(0, 5, d)
    w = rng.normal(size=(d, labels)) / x.std(axis=0)[:, None]
    logits = (x - x.mean(axis=0)) @ w
    y = (logits + noise * logits.std(axis=0) * rng.normal(size=logits.shape) > 0).astype(int)
    return x, y


def test_separable_problem_is_learned():
    x, y = linear_data(900, seed=1)
    probe = fit_linear_probe(x[:500], y[:500], x[500:700], y[500:700])
    scores = probe.predict_scores(x[700:])
    assert scores.shape == (200, 3) and ((scores >= 0) & (scores <= 1)).all()
    aurocs = [roc_auc_score(y[700:, j], scores[:, j]) for j in range(3)]
    assert min(aurocs) > 0.95


def test_pure_noise_gives_chance():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2000, 32)), rng.integers(0, 2, (2000, 3))
    probe = fit_linear_probe(x[:600], y[:600], x[600:1000], y[600:1000])
    scores = probe.predict_scores(x[1000:])
    macro = np.mean([roc_auc_score(y[1000:, j], scores[:, j]) for j in range(3)])
    assert abs(macro - 0.5) < 0.06


def test_selected_C_is_best_on_validation_by_an_independent_loop():
    x, y = linear_data(560, d=60, noise=0.3, seed=3)  # 60 training rows, 60 dims: C matters
    tx, ty, vx, vy = x[:60], y[:60], x[60:], y[60:]
    probe = fit_linear_probe(tx, ty, vx, vy)
    loop = {}
    for C in DEFAULT_CS:  # cold fits, sklearn pipeline per label: the specification
        scores = []
        for j in range(y.shape[1]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, tol=1e-8))
                model.fit(tx, ty[:, j])
            scores.append(roc_auc_score(vy[:, j], model.decision_function(vx)))
        loop[C] = float(np.mean(scores))
        assert probe.val_auroc[repr(float(C))] == pytest.approx(loop[C], abs=2e-3)
    assert loop[probe.C] >= max(loop.values()) - 2e-3
    assert max(loop.values()) - min(loop.values()) > 0.01  # the choice was not vacuous


def test_accepts_torch_and_handles_single_class_training_label():
    x, y = linear_data(400, seed=4)
    y[:200, 2] = 0
    probe = fit_linear_probe(torch.tensor(x[:200], dtype=torch.float32), torch.tensor(y[:200]), x[200:300], y[200:300],
                             label_names=["a", "b", "c"])
    assert any("'c'" in n for n in probe.notes)
    scores = probe.predict_scores(torch.tensor(x[300:]))
    assert np.allclose(scores[:, 2], 0.0) and scores[:, 0].std() > 0


def test_rejects_bad_input():
    x, y = linear_data(100)
    with pytest.raises(DataError, match="NaN"):
        fit_linear_probe(np.where(x > 10, np.nan, x), y, x, y)
    with pytest.raises(DataError):
        fit_linear_probe(x, y[:50], x, y)


@pytest.fixture(scope="module")
def fraction_run():
    x, y = linear_data(1500, d=48, labels=4, noise=0.8, seed=5)
    names = ["a", "b", "c", "d"]
    train_df = pd.DataFrame(y[:1000], columns=names).assign(patient_id=[f"p{i // 2}" for i in range(1000)])
    subsets = label_fraction_subsets(train_df, (0.05, 0.2, 1.0), (0, 1), names)
    feats = {"train": x[:1000], "valid": x[1000:1200], "test": x[1200:]}
    labels = {"train": y[:1000], "valid": y[1000:1200], "test": y[1200:]}
    return linear_probe_over_fractions(feats, labels, subsets, names, Cs=(0.01, 1.0, 100.0)), subsets


def test_over_fractions_runs_and_summary(fraction_run):
    result, subsets = fraction_run
    json.dumps(result, allow_nan=False)
    assert len(result["runs"]) == len(subsets)
    for run in result["runs"]:
        assert run["n_train"] == len(subsets[(run["fraction"], run["seed"])])
        assert run["C"] in (0.01, 1.0, 100.0)
    s = result["summary"]
    assert list(s) == ["0.05", "0.2", "1.0"]
    for key, entry in s.items():
        vals = [r["test"]["macro"]["auroc"] for r in result["runs"] if repr(r["fraction"]) == key]
        assert entry["macro_auroc"]["mean"] == pytest.approx(np.mean(vals))
        assert entry["macro_auroc"]["std"] == pytest.approx(np.std(vals, ddof=1))
    # More labels help on a learnable problem.
    assert s["1.0"]["macro_auroc"]["mean"] > s["0.05"]["macro_auroc"]["mean"]
    # 100% is the same rows for every seed: identical numbers, fit once.
    full = [r for r in result["runs"] if r["fraction"] == 1.0]
    assert full[0]["test"] == full[1]["test"] and s["1.0"]["macro_auroc"]["std"] == 0.0


def test_over_fractions_accepts_val_key_and_checks_indices():
    x, y = linear_data(300, labels=2, seed=6)
    feats = {"train": x[:100], "val": x[100:200], "test": x[200:]}
    labels = {"train": y[:100], "val": y[100:200], "test": y[200:]}
    out = linear_probe_over_fractions(feats, labels, {(1.0, 0): np.arange(100)}, ["a", "b"], Cs=(1.0,))
    assert out["runs"][0]["C"] == 1.0
    with pytest.raises(DataError, match="outside"):
        linear_probe_over_fractions(feats, labels, {(1.0, 0): np.arange(101)}, ["a", "b"], Cs=(1.0,))
    with pytest.raises(DataError, match="valid"):
        linear_probe_over_fractions({"train": x, "test": x}, labels, {(1.0, 0): np.arange(10)}, ["a", "b"])
