"""NaN/Inf in the loss or in the gradients: the step is skipped (weights untouched) and counted, and
trainer.max_bad_steps of them in a row stop the run with the step number and the batch's manifest rows."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from convirt.config import load_config
from convirt.methods.base import NonFiniteLossError
from convirt.methods.convirt import ConVIRT
from convirt.training.checkpoint import load_checkpoint_file
from convirt.training.run import pretrain
from tests.helpers import write_pair_manifest
from tests.reliability.common import fast_overrides

BAD = {1, 3, 4, 5}  # batches that go wrong; 3, 4, 5 are three in a row
N_TRAIN, BATCH, SEED = 16, 4, 0  # write_pair_manifest: rows 1-16 are the training split


def batch_rows(b: int) -> list[int]:
    """Manifest rows of training batch ``b``, from the documented stream: position p is row
    perm(seed, p // n)[p % n] + 1."""
    rows = []
    for p in range(b * BATCH, (b + 1) * BATCH):
        epoch, offset = divmod(p, N_TRAIN)
        rows.append(int(np.random.default_rng([SEED, epoch]).permutation(N_TRAIN)[offset]) + 1)
    return rows


class Watch(L.Callback):
    """Injects NaN gradients (kind "gradients") and records the weights around each step."""

    def __init__(self, kind: str) -> None:
        self.kind, self.before, self.changed, self.method = kind, {}, {}, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.method = pl_module
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.kind == "gradients" and trainer.global_step in BAD:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        after = list(pl_module.parameters())
        self.changed[trainer.global_step - 1] = any(not torch.equal(a, b) for a, b in zip(self.before, after))


@pytest.mark.parametrize("kind", ["loss", "gradients"])
def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, monkeypatch, capsys, kind):
    if kind == "loss":
        real = ConVIRT.compute_loss

        def compute_loss(self, batch):
            loss = real(self, batch)
            return loss * float("nan") if self.training and self.global_step in BAD else loss

        monkeypatch.setattr(ConVIRT, "compute_loss", compute_loss)
    watch = Watch(kind)
    manifest = write_pair_manifest(tmp_path / "data")
    cfg = load_config(overrides=fast_overrides(manifest, tmp_path / "run", max_steps=10) + ["trainer.max_bad_steps=3"])
    with pytest.raises(NonFiniteLossError) as caught:
        pretrain(cfg, callbacks=[watch])

    message = str(caught.value)
    assert f"3 steps in a row with a non-finite loss or gradients, up to step 5 ({kind})" in message
    assert f"last batch rows: {batch_rows(5)}" in message
    printed = capsys.readouterr().out
    for b in range(6):
        assert (f"non-finite {kind} at step {b}; skipped (rows {batch_rows(b)})" in printed) == (b in BAD), b
    assert watch.method.skipped_steps == len(BAD)
    # skipped steps leave the weights alone; the others change them
    assert [watch.changed[b] for b in range(5)] == [b not in BAD for b in range(5)]
    # the count travels with the checkpoints (and from there into summary.json after a resume)
    assert load_checkpoint_file(tmp_path / "run" / "checkpoints" / "step=4.ckpt")["convirt"]["skipped_steps"] == 2


def test_skipped_steps_end_up_in_the_summary(tmp_path, monkeypatch):
    real = ConVIRT.compute_loss

    def compute_loss(self, batch):
        loss = real(self, batch)
        return loss * float("inf") if self.training and self.global_step in (1, 2) else loss

    monkeypatch.setattr(ConVIRT, "compute_loss", compute_loss)
    manifest = write_pair_manifest(tmp_path / "data")
    summary = pretrain(load_config(overrides=fast_overrides(manifest, tmp_path / "run", max_steps=4) + ["trainer.max_bad_steps=3"]))
    assert summary["global_step"] == 4 and summary["skipped_steps"] == 2
