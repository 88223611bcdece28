"""Kill during training: a real SIGKILL or SIGTERM of a `convirt pretrain` process, then `--resume`.

The resumed run must continue from the newest complete checkpoint, lose at most one checkpoint
interval of work, and end with weights bit-identical to an uninterrupted run (CPU, fixed seed).
"""

from __future__ import annotations

import csv
import os
import random
import signal

import lightning as L
import pytest

from convirt.config import load_config
from convirt.training.checkpoint import checkpoint_step, find_resume_checkpoint, load_checkpoint_file
from convirt.training.run import pretrain
from tests.reliability.common import STEPS, assert_same_weights, fast_overrides, model_weights, run_faulty

EVERY = 2  # trainer.checkpoint_every_n_steps in fast_overrides
# The step to kill at, drawn at random after the checkpoint of step 4, which validation follows;
# CONVIRT_FAULT_SEED=n draws another.
KILL_AT = random.Random(int(os.environ.get("CONVIRT_FAULT_SEED", "0"))).randint(4, STEPS - 1)


def _resume(overrides) -> dict:
    return pretrain(load_config(overrides=overrides), resume=True)


def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted(reference, tmp_path):
    sets = fast_overrides(reference.manifest, tmp_path / "run")
    done = run_faulty("sigkill", KILL_AT, sets)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()  # it really died mid-run

    newest = find_resume_checkpoint(tmp_path / "run" / "checkpoints")
    # KILL_AT steps were complete; checkpoints are written every EVERY steps
    assert newest is not None and checkpoint_step(newest) == KILL_AT // EVERY * EVERY
    assert KILL_AT - checkpoint_step(newest) < EVERY  # at most one interval of work lost
    assert load_checkpoint_file(newest)["global_step"] == checkpoint_step(newest)

    summary = _resume(sets)
    assert summary["resumed_from"] == str(newest) and summary["global_step"] == STEPS
    assert_same_weights(model_weights(tmp_path / "run"), reference.weights)
    # step 4's checkpoint was taken after the validation that follows step 4, so the resumed
    # run's reduce-on-plateau scheduler has seen it as the uninterrupted one has
    assert _plateau(reference.out)["last_epoch"] == 1
    assert _plateau(tmp_path / "run") == _plateau(reference.out)


def _plateau(run_dir) -> dict:
    return load_checkpoint_file(run_dir / "checkpoints" / f"step={STEPS}.ckpt")["convirt"]["plateau"]


def test_sigterm_writes_a_final_checkpoint_and_resume_equals_uninterrupted(reference, tmp_path):
    # schedulers signal the whole process group: the loader workers get the SIGTERM too
    sets = fast_overrides(reference.manifest, tmp_path / "run") + ["data.num_workers=2"]
    done = run_faulty("sigterm", 2, sets)  # arrives while step 3 is computed
    assert done.returncode == 143, done.stderr[-3000:]
    final = tmp_path / "run" / "checkpoints" / "step=3.ckpt"  # 3: not a periodic checkpoint (every 2)
    assert f"received SIGTERM: wrote {final}" in done.stderr
    assert sorted(p.name for p in final.parent.iterdir()) == ["step=2.ckpt", "step=3.ckpt"]
    assert find_resume_checkpoint(final.parent) == final
    assert load_checkpoint_file(final)["global_step"] == 3

    summary = _resume(sets)
    assert summary["resumed_from"] == str(final) and summary["global_step"] == STEPS
    assert_same_weights(model_weights(tmp_path / "run"), reference.weights)
    # metrics.csv keeps the rows logged before the SIGTERM, and the resumed ones, once each
    assert _losses(tmp_path / "run") == _losses(reference.out)
    assert _plateau(tmp_path / "run") == _plateau(reference.out)


def _losses(run_dir) -> list[tuple]:
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").read_text().splitlines()))
    return [(r["step"], r["train/loss"], r["val/loss"]) for r in rows]


def test_sigterm_during_validation_still_writes_a_checkpoint(reference, tmp_path):
    # periodic checkpoints every 5 steps: before step 5, only the SIGTERM can have written one
    sets = fast_overrides(reference.manifest, tmp_path / "run") + ["trainer.checkpoint_every_n_steps=5"]
    done = run_faulty("sigterm-in-val", 4, sets)  # validation runs after step 4
    assert done.returncode == 143, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step=4.ckpt"]

    summary = _resume(sets)
    assert summary["resumed_from"].endswith("step=4.ckpt") and summary["global_step"] == STEPS
    assert_same_weights(model_weights(tmp_path / "run"), reference.weights)


class _SigtermAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_on_a_periodic_checkpoint_step_writes_it_once(reference, tmp_path):
    with pytest.raises(SystemExit) as stopped:  # in this process: Lightning's handler turns SIGTERM into an exit
        pretrain(load_config(overrides=fast_overrides(reference.manifest, tmp_path / "run")), callbacks=[_SigtermAt(1)])
    assert stopped.value.code == 143
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step=2.ckpt"]  # not also step=2-v1
