"""Linear layer on a frozen encoder vs fine-tuning: what is trained, determinism, and the metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from convirt.errors import ConfigError
from convirt.evaluation.encoders import load_encoder
from convirt.evaluation.finetune import FinetuneConfig, default_config, train_classifier
from convirt.evaluation.labelled import load_labelled
from tests.helpers import write_labelled_manifest

CFG = FinetuneConfig(lr=1e-2, batch_size=8, max_epochs=2, patience=2, min_epoch_steps=3, augment="mild")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_labelled(write_labelled_manifest(tmp_path_factory.mktemp("d")), ["bright"])


def _run(data, freeze, cfg=CFG, seed=0, labels=None):
    enc = load_encoder("random:resnet18", size=32)
    y = {s: data.split_y(s) for s in data.splits}
    r = train_classifier(enc, data.split_paths("train"), y["train"], data.split_paths("valid"), y["valid"],
                         data.split_paths("test"), y["test"], labels or data.label_names, data.task == "multiclass",
                         freeze, cfg, seed=seed, progress=False)
    return enc, r


def test_frozen_encoder_is_untouched_and_the_linear_layer_learns(data):
    enc, r = _run(data, freeze=True)
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in enc.module.state_dict().items())  # caller's copy untouched
    y = data.split_y("test")[:, 0]
    auroc = roc_auc_score(y, r["scores"][:, 0])
    assert r["test"]["macro"]["auroc"] == pytest.approx(auroc)
    assert auroc > 0.9  # brightness is linearly visible in any encoder's features
    assert r["n_train"] == 40 and r["epochs"] >= 1


def test_same_seed_same_numbers(data):
    _, a = _run(data, freeze=True)
    _, b = _run(data, freeze=True)
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert a["best_val_macro_auroc"] == b["best_val_macro_auroc"]


def test_frozen_batchnorm_stays_fixed_but_finetuning_updates_it(data):
    from convirt.evaluation.finetune import LinearClassifier

    enc = load_encoder("random:resnet18", size=32)
    model = LinearClassifier(enc.module, enc.num_features, 1, False, True, CFG).train()
    assert not model.encoder.training and model.head.training
    ft = LinearClassifier(load_encoder("random:resnet18", size=32).module, 512, 1, False, False, CFG).train()
    assert ft.encoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in ft.encoder.parameters())


def test_multiclass_uses_argmax_metrics(data, tmp_path):
    multi = load_labelled(data.manifest, ["kind"])
    y = {s: multi.split_y(s) for s in multi.splits}
    enc = load_encoder("random:resnet18", size=32)
    r = train_classifier(enc, multi.split_paths("train"), y["train"], multi.split_paths("valid"), y["valid"],
                         multi.split_paths("test"), y["test"], multi.label_names, True, True, CFG, progress=False)
    assert np.allclose(r["scores"].sum(axis=1), 1, atol=1e-5)  # softmax over classes
    expected = accuracy_score(y["test"].argmax(axis=1), r["scores"].argmax(axis=1))
    assert r["test"]["multiclass"]["accuracy"] == pytest.approx(expected)


def test_defaults_and_validation():
    assert default_config(True).lr == 1e-3 and default_config(False).lr == 1e-4
    assert default_config(False, lr=5e-5, max_epochs=None).lr == 5e-5
    with pytest.raises(ConfigError, match="augment"):
        default_config(True, augment="strong")
    with pytest.raises(ConfigError, match="lr > 0"):
        default_config(True, lr=0.0)
