"""Classification protocols end to end: numbers recomputed independently, pinned subsets, determinism."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from convirt.errors import ConfigError
from convirt.evaluation.embed import embed_images
from convirt.evaluation.encoders import load_encoders
from convirt.evaluation.finetune import FinetuneConfig
from convirt.evaluation.labelled import load_labelled
from convirt.evaluation.protocols import Settings, run_finetune, run_linear
from convirt.evaluation.splits import load_subsets
from tests.helpers import write_labelled_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_labelled(write_labelled_manifest(tmp_path_factory.mktemp("d")), ["bright"])


def _settings(tmp_path, **kw):
    return Settings(**{"fractions": (0.25, 1.0), "seeds": (0, 1), "n_boot": 50, "cache_dir": tmp_path / "cache",
                       "progress": False, "tsne": False, **kw})


def test_linear_matches_an_independent_scikit_learn_fit(data, tmp_path):
    encoders = load_encoders(["random:resnet18", "random:resnet18"], names=["a", "b"], size=32)
    doc = run_linear(encoders, data, tmp_path / "out", _settings(tmp_path))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["models"]["a"]["summary"].keys() == {"0.25", "1.0"}
    assert saved["data"]["manifest_sha256"] == data.manifest_sha256
    assert "| a |" in (tmp_path / "out" / "results.md").read_text()

    subsets = load_subsets(tmp_path / "out" / "subsets.json", row_ids=list(data.train_frame()["image"]))
    enc = encoders[0]  # recalibrated in place by the run: embed with it directly
    x = {s: embed_images(enc.module, data.split_paths(s), enc.transform(), progress=False) for s in ("train", "test")}
    y = {s: data.split_y(s)[:, 0] for s in ("train", "test")}
    for run in doc["models"]["a"]["runs"]:
        idx = subsets[(run["fraction"], run["seed"])]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=run["C"], max_iter=5000, tol=1e-8))
        model.fit(x["train"][idx], y["train"][idx])
        expected = roc_auc_score(y["test"], model.predict_proba(x["test"])[:, 1])
        assert run["test"]["macro"]["auroc"] == pytest.approx(expected, abs=2e-3)
        ci = run["test"]["macro_auroc_ci"]
        assert ci["low"] <= run["test"]["macro"]["auroc"] <= ci["high"]


def test_rerun_with_pinned_subsets_is_identical_and_hits_the_cache(data, tmp_path):
    first = run_linear(load_encoders(["random:resnet18"], size=32), data, tmp_path / "one", _settings(tmp_path))
    again = run_linear(load_encoders(["random:resnet18"], size=32), data, tmp_path / "two",
                       _settings(tmp_path, subsets_file=tmp_path / "one" / "subsets.json"))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("written", "settings", "cache")}  # noqa: E731
    for a, b in zip(first["models"]["Random resnet18"]["runs"], again["models"]["Random resnet18"]["runs"]):
        a, b = dict(a), dict(b)
        a.pop("fit_seconds"), b.pop("fit_seconds")
        assert a == b
    assert again["subsets"]["sha256"] == first["subsets"]["sha256"]
    assert again["cache"]["hits"] == 3 and again["cache"]["misses"] == 0
    assert strip(first)["data"] == strip(again)["data"]


def test_subsets_file_must_hold_the_requested_fractions(data, tmp_path):
    run_linear(load_encoders(["random:resnet18"], size=32), data, tmp_path / "one", _settings(tmp_path, seeds=(0,)))
    with pytest.raises(ConfigError, match=r"no subset for \(fraction, seed\)"):
        run_linear(load_encoders(["random:resnet18"], size=32), data, tmp_path / "two",
                   _settings(tmp_path, seeds=(0, 1), subsets_file=tmp_path / "one" / "subsets.json"))


def test_trained_linear_layer_is_deterministic_and_learns(data, tmp_path):
    cfg = FinetuneConfig(lr=1e-2, batch_size=8, max_epochs=2, patience=2, min_epoch_steps=3, augment="mild")
    settings = _settings(tmp_path, fractions=(1.0,), seeds=(0,))
    a = run_finetune(load_encoders(["random:resnet18"], size=32), data, tmp_path / "a", settings, cfg, freeze=True)
    b = run_finetune(load_encoders(["random:resnet18"], size=32), data, tmp_path / "b", settings, cfg, freeze=True)
    ra, rb = a["models"]["Random resnet18"]["runs"][0], b["models"]["Random resnet18"]["runs"][0]
    assert ra["test"] == rb["test"] and ra["test"]["macro"]["auroc"] > 0.9
    assert a["protocol"] == "linear-trained" and (tmp_path / "a" / "results.md").is_file()
    assert (tmp_path / "a" / "saliency_0.png").is_file() and "saliency_0.png" in (tmp_path / "a" / "results.md").read_text()
