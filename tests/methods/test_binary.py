"""The Contrastive-Binary-Loss baseline: negatives, the BCE objective, training, a resumable run."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from convirt.config import load_config
from convirt.errors import ConfigError
from convirt.losses.binary import binary_matching_loss, cyclic_negatives, shifted_negatives
from convirt.training.run import pretrain
from tests.helpers import SimulatedCrash, crash_after, tiny_overrides, write_pair_manifest
from tests.methods.tiny import TEXTS, tiny_batch, tiny_method, train_losses


@pytest.mark.parametrize("n,k", [(2, 1), (5, 1), (8, 3), (6, 5)])
def test_negatives_are_k_distinct_other_rows(n, k):
    for index in (cyclic_negatives(n, k, torch.Generator().manual_seed(n + k)), shifted_negatives(n, k)):
        assert index.shape == (n, k)
        for i, row in enumerate(index.tolist()):
            assert i not in row and len(set(row)) == k
        for column in index.T.tolist():  # every text serves once per shift
            assert sorted(column) == list(range(n))
    with pytest.raises(ValueError, match="negatives < batch size"):
        cyclic_negatives(4, 4)


def test_binary_loss_matches_a_loop_over_pairs():
    torch.manual_seed(0)
    pos, neg = torch.randn(5) * 3, torch.randn(5, 2) * 3
    keep = torch.ones(5, 2, dtype=torch.bool)
    keep[1, 0] = keep[3, 1] = False
    terms = []
    for i in range(5):
        p = torch.sigmoid(pos[i].double())
        terms.append(float(F.binary_cross_entropy(p, torch.tensor(1.0, dtype=torch.float64))))
        assert terms[-1] == pytest.approx(-math.log(float(p)))  # the formula, by hand
        for j in range(2):
            if keep[i, j]:
                q = torch.sigmoid(neg[i, j].double())
                terms.append(float(F.binary_cross_entropy(q, torch.tensor(0.0, dtype=torch.float64))))
                assert terms[-1] == pytest.approx(-math.log(1 - float(q)))
    assert len(terms) == 5 + 8
    assert float(binary_matching_loss(pos, neg, keep)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert float(binary_matching_loss(pos.bfloat16(), neg.bfloat16(), keep)) == pytest.approx(
        float(binary_matching_loss(pos.bfloat16().float(), neg.bfloat16().float(), keep)), rel=1e-6)  # float32 inside


def test_method_scores_true_pairs_against_mismatched_texts_of_the_batch():
    texts = TEXTS[:6]
    texts[2] = texts[1]  # row 2's text is row 1's: that "negative" is a true pair in content and is left out
    model = tiny_method("binary")
    batch = tiny_batch(model, texts)
    model.eval()  # validation: the fixed shift, row i against row i + 1
    with torch.no_grad():
        loss = model.compute_loss(batch)
        v = model.model.image_embedding(batch["images"])
        u = model.model.text_embedding(batch["input_ids"], batch["attention_mask"])
        terms = []
        for i in range(6):
            terms.append(-F.logsigmoid(model.classifier(v[i], u[i])))  # -log p(true)
            j = (i + 1) % 6
            if texts[j] != texts[i]:
                terms.append(-F.logsigmoid(-model.classifier(v[i], u[j])))  # -log (1 - p(true))
    assert len(terms) == 6 + 5
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


def test_training_lowers_the_binary_loss():
    model = tiny_method("binary")
    losses = train_losses(model, tiny_batch(model, TEXTS[:4]), steps=40, lr=3e-3)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first == pytest.approx(math.log(2), abs=0.05)  # chance: the classifier cannot tell pairs apart yet
    assert last < first - 0.15, losses  # seed 0: 0.69 -> 0.39 (seeds 1, 2: 0.47, 0.43)


def test_negatives_must_leave_room_in_the_batch():
    with pytest.raises(ConfigError, match="binary.negatives must be < data.batch_size"):
        load_config(overrides=["method=binary", "binary.negatives=4", "data.batch_size=4"])
    with pytest.raises(ConfigError, match="binary.negatives must be >= 1"):
        load_config(overrides=["method=binary", "binary.negatives=0"])


def test_binary_run_resumes_to_the_same_weights(tmp_path):
    """The negatives are random: resuming must replay the same draws (the checkpoint keeps the RNG)."""
    manifest = write_pair_manifest(tmp_path / "data", n_train=8, n_valid=4)

    def cfg(name):
        return load_config(overrides=tiny_overrides(manifest, tmp_path / name, 4) + ["method=binary"])

    assert pretrain(cfg("full"))["global_step"] == 4
    with pytest.raises(SimulatedCrash):
        pretrain(cfg("resumed"), callbacks=[crash_after(3)])
    (tmp_path / "resumed" / "checkpoints" / "step=3.ckpt").unlink(missing_ok=True)
    assert pretrain(cfg("resumed"), resume=True)["resumed_from"].endswith("step=2.ckpt")
    a, b = (load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
