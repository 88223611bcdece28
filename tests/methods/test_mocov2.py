"""MoCo v2: the momentum update, the queue, the loss against an explicit loop, a short run whose
loss falls, and an interrupted run that resumes to the same weights, key encoder and queue."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from convirt.config import load_config
from convirt.errors import ConfigError
from convirt.losses.ssl import queue_info_nce
from convirt.methods.mocov2 import MoCoV2
from convirt.training.checkpoint import load_checkpoint_file
from convirt.training.run import pretrain
from tests.helpers import SimulatedCrash, crash_after, tiny_overrides, write_pair_manifest
from tests.methods.test_simclr import LEARNABLE, write_gray_levels
from tests.training.test_pretrain import weights


def tiny_moco(queue: int = 5, momentum: float = 0.9) -> MoCoV2:
    cfg = load_config(overrides=["image.model=test_resnet", "image.pretrained=false", "image.size=32", "method=mocov2",
                                 f"ssl.queue_size={queue}", "data.batch_size=4", "ssl.proj_dim=8", f"ssl.momentum={momentum}"])
    torch.manual_seed(0)
    return MoCoV2(cfg, MoCoV2.build_model(cfg))


def queue_loss_loop(q, k, queue, tau):
    """MoCo Eq. 1 query by query: -log( exp(q.k+/tau) / (exp(q.k+/tau) + sum_j exp(q.queue_j/tau)) )."""
    total = 0.0
    for qi, ki in zip(F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)):
        positive = math.exp(float(qi @ ki) / tau)
        negatives = sum(math.exp(float(qi @ row) / tau) for row in queue.double())
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("size", [1, 6, 33])
def test_queue_loss_equals_the_loop_reference(tau, size):
    g = torch.Generator().manual_seed(size)
    q, k = torch.randn(5, 8, generator=g).double(), torch.randn(5, 8, generator=g).double()
    queue = F.normalize(torch.randn(size, 8, generator=g).double(), dim=1)
    assert queue_info_nce(q, k, queue, tau).item() == pytest.approx(queue_loss_loop(q, k, queue, tau), rel=1e-10)


def test_queue_loss_hand_worked_value_and_no_gradient_to_keys():
    # q = k, K negatives orthogonal to q: l = log(1 + K exp(-1/tau))
    q = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    k = q.detach().clone().requires_grad_(True)
    queue = torch.tensor([[0.0, 1.0, 0.0]] * 3 + [[0.0, 0.0, 1.0]] * 4, dtype=torch.float64)
    loss = queue_info_nce(q, k, queue, 0.2)
    assert loss.item() == pytest.approx(math.log1p(7 * math.exp(-5.0)), rel=1e-12)
    loss.backward()
    assert q.grad is not None and k.grad is None  # keys come from the momentum encoder: no gradient


def test_key_encoder_is_an_ema_of_the_query_encoder():
    moco = tiny_moco(momentum=0.9).train()
    q0 = [p.detach().clone() for p in moco._query_params()]
    assert all(torch.equal(k, q) for k, q in zip(moco._key_params(), q0))  # starts as a copy
    assert not any(p.requires_grad for p in moco._key_params())
    optimizer = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.5)
    images = torch.randn(4, 1, 32, 32)
    batch = {"images": images, "images2": images.flip(-1)}
    moco.compute_loss(batch).backward()  # its EMA: 0.9 q0 + 0.1 q0 = q0
    optimizer.step()
    k1 = [p.detach().clone() for p in moco._key_params()]
    q1 = [p.detach().clone() for p in moco._query_params()]
    assert all(torch.allclose(a, b) for a, b in zip(k1, q0))
    assert any(not torch.equal(a, b) for a, b in zip(q1, q0))  # the step moved the query encoder
    moco.compute_loss(batch)  # the next step's EMA
    for k, before, q in zip(moco._key_params(), k1, q1):
        torch.testing.assert_close(k, 0.9 * before + 0.1 * q, rtol=0, atol=1e-6)


def test_queue_holds_the_newest_keys_and_wraps_around():
    moco = tiny_moco(queue=5)
    a, b, c = (F.normalize(torch.randn(2, 8), dim=1) for _ in range(3))
    moco.enqueue(a)
    assert int(moco.queue_ptr) == 2 and torch.equal(moco.queue[:2], a)
    moco.enqueue(b)
    assert int(moco.queue_ptr) == 4 and torch.equal(moco.queue[2:4], b) and torch.equal(moco.queue[:2], a)
    moco.enqueue(c)  # rows 4 and 0: the oldest key (a[0]) is overwritten first
    assert int(moco.queue_ptr) == 1
    assert torch.equal(moco.queue[4], c[0]) and torch.equal(moco.queue[0], c[1])
    assert torch.equal(moco.queue[1], a[1]) and torch.equal(moco.queue[2:4], b)


def test_a_training_step_enqueues_its_keys_and_validation_changes_nothing():
    moco = tiny_moco(queue=6).train()
    images = torch.randn(4, 1, 32, 32)
    batch = {"images": images, "images2": images.flip(-2)}
    moco.compute_loss(batch)
    keys, _ = moco.keys(images.flip(-2))  # BN in train mode uses batch statistics: the same keys again
    torch.testing.assert_close(moco.queue[:4], keys)
    assert int(moco.queue_ptr) == 4
    moco.eval()
    queue, key_state = moco.queue.clone(), {k: v.clone() for k, v in moco.key_encoder.state_dict().items()}
    assert torch.isfinite(moco.compute_loss(batch))
    assert torch.equal(moco.queue, queue) and int(moco.queue_ptr) == 4
    assert all(torch.equal(v, key_state[k]) for k, v in moco.key_encoder.state_dict().items())


def test_mocov2_run_learns(tmp_path):
    """16 images, batch 8, queue 8 (the other half of the set), 30 steps, m = 0.9 so that the key
    encoder moves within 30 steps (0.999 would keep it at its random start). Step 0 contrasts with
    the random initial queue (loss ~0.3); from step 1 on the queue holds real keys. Measured with
    seeds 0-2: the last 5 steps average 0.46-0.58 of steps 1-5 (chance: ln 9 = 2.2)."""
    manifest = write_gray_levels(tmp_path / "data", n_train=16)
    overrides = tiny_overrides(manifest, tmp_path / "run", 30) + LEARNABLE + [
        "method=mocov2", "data.batch_size=8", "ssl.queue_size=8", "ssl.momentum=0.9"]
    summary = pretrain(load_config(overrides=overrides))
    assert summary["global_step"] == 30 and summary["skipped_steps"] == 0
    loss = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")["train/loss"].dropna().to_numpy()
    first, last = loss[1:6].mean(), loss[-5:].mean()
    assert last < 0.75 * first, (first, last)


def test_queue_longer_than_the_data_is_refused(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data", n_train=8, n_valid=4)
    cfg = load_config(overrides=tiny_overrides(manifest, tmp_path / "run", 2) + [
        "method=mocov2", "ssl.queue_size=16", "image.model=test_resnet"])
    with pytest.raises(ConfigError, match="ssl.queue_size .16. is larger than the training set .8 images"):
        pretrain(cfg)


def test_resume_restores_weights_key_encoder_and_queue_exactly(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data", n_train=16, n_valid=4)

    def config(name):
        return load_config(overrides=tiny_overrides(manifest, tmp_path / name, 6) + [
            "method=mocov2", "ssl.queue_size=8", "ssl.momentum=0.9", "image.model=test_resnet",
            "trainer.checkpoint_every_n_steps=3", "trainer.val_every_n_steps=1000"])

    pretrain(config("full"))
    interrupted = config("resumed")
    with pytest.raises(SimulatedCrash):
        pretrain(interrupted, callbacks=[crash_after(4)])  # the queue has wrapped by the step-3 checkpoint
    (tmp_path / "resumed" / "checkpoints" / "step=4.ckpt").unlink(missing_ok=True)
    resumed = pretrain(interrupted, resume=True)
    assert resumed["global_step"] == 6 and resumed["resumed_from"].endswith("step=3.ckpt")

    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "step=6.ckpt")["state_dict"]
    again = load_checkpoint_file(tmp_path / "resumed" / "checkpoints" / "step=6.ckpt")["state_dict"]
    extra = [k for k in full if k.startswith(("key_encoder.", "key_head.")) or k in ("queue", "queue_ptr")]
    assert "queue" in extra and any(k.startswith("key_encoder.") for k in extra)
    assert int(full["queue_ptr"]) == 6 * 4 % 8
    for k in extra:
        assert torch.equal(full[k], again[k]), k
