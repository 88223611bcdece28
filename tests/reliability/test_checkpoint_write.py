"""Kill during a checkpoint write, and checkpoints that are truncated or corrupt on disk.

The previous checkpoint must stay loadable and be the one `--resume` uses; the bad file is named in
a clear message; the resumed run still ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import io
import logging
import shutil
import signal
import zipfile

import pytest

from convirt.config import load_config
from convirt.errors import ConvirtError
from convirt.training.checkpoint import find_resume_checkpoint, load_checkpoint_file
from convirt.training.run import pretrain
from tests.reliability.common import STEPS, assert_same_weights, fast_overrides, model_weights, run_faulty


def _flip_tensor_bytes(data: bytes) -> bytes:
    """``data`` (a checkpoint) with 64 bytes in the middle of its largest tensor overwritten."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)
    start = member.header_offset + 30 + len(member.filename) + len(member.extra) + member.file_size // 2
    flipped = bytearray(data)
    flipped[start : start + 64] = bytes(255 - b for b in flipped[start : start + 64])
    return bytes(flipped)


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(reference, tmp_path, caplog):
    sets = fast_overrides(reference.manifest, tmp_path / "run")
    done = run_faulty("die-in-write", 4, sets)  # SIGKILL with half of step=4.ckpt written
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert not (ckpts / "step=4.ckpt").exists()  # the half-written file never took the checkpoint's name
    partial = [p for p in ckpts.iterdir() if p.name.startswith(".step=4.ckpt.")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert load_checkpoint_file(ckpts / "step=2.ckpt")["global_step"] == 2  # the previous one is intact

    with caplog.at_level(logging.WARNING, logger="convirt"):
        summary = pretrain(load_config(overrides=sets), resume=True)
    assert summary["resumed_from"] == str(ckpts / "step=2.ckpt") and summary["global_step"] == STEPS
    assert f"removing {partial[0]}, left by a checkpoint write that did not finish" in caplog.text
    assert not partial[0].exists()
    assert_same_weights(model_weights(tmp_path / "run"), reference.weights)


def test_truncated_or_corrupt_checkpoints_are_reported_and_passed_over(reference, tmp_path, caplog):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(reference.out / "checkpoints" / "step=4.ckpt", ckpts)
    whole = (reference.out / "checkpoints" / "step=6.ckpt").read_bytes()
    (ckpts / "step=6.ckpt").write_bytes(whole[: len(whole) // 3])  # truncated (a copy cut short)
    (ckpts / "step=8.ckpt").write_bytes(_flip_tensor_bytes(whole))  # bit rot inside tensor data
    (ckpts / "step=10.ckpt").write_bytes(b"")  # empty
    (ckpts / "step=12.ckpt").write_bytes(bytes(range(256)) * 100)  # not a checkpoint at all
    bad = ("step=6.ckpt", "step=8.ckpt", "step=10.ckpt", "step=12.ckpt")
    for name in bad:
        with pytest.raises(ConvirtError, match=rf"checkpoint .*{name} is corrupt, truncated or not a plain checkpoint"):
            load_checkpoint_file(ckpts / name)

    with caplog.at_level(logging.WARNING, logger="convirt"):
        assert find_resume_checkpoint(ckpts) == ckpts / "step=4.ckpt"
    for name in bad:
        assert f"{ckpts / name} is corrupt, truncated or not a plain checkpoint" in caplog.text
        assert "trying an older checkpoint" in caplog.text

    summary = pretrain(load_config(overrides=fast_overrides(reference.manifest, tmp_path / "run")), resume=True)
    assert summary["resumed_from"] == str(ckpts / "step=4.ckpt") and summary["global_step"] == STEPS
    assert_same_weights(model_weights(tmp_path / "run"), reference.weights)
