"""Checkpoints that survive crashes: atomic writes, safe loading, and picking the newest good one."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from convirt.atomic import atomic_path
from convirt.errors import ConvirtError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but a crash mid-write leaves the previous file intact
    (temporary file + fsync + rename), and loading never unpickles arbitrary objects."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location)


def load_checkpoint_file(path, map_location=None) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ConvirtError(f"checkpoint {path} is corrupt, truncated or not a plain checkpoint ({type(err).__name__}): {err}") from err


_STEP = re.compile(r"step=(\d+)")


def checkpoint_step(path: Path) -> int:
    m = _STEP.search(path.name)
    return int(m.group(1)) if m else -1


def find_resume_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` that loads; corrupt ones are reported and passed over."""
    directory = Path(directory)
    candidates = sorted(directory.glob("*.ckpt"), key=lambda p: (checkpoint_step(p), p.name == "last.ckpt"), reverse=True)
    for path in candidates:
        try:
            state = load_checkpoint_file(path)
        except ConvirtError as err:
            log.warning("%s; trying an older checkpoint", err)
            continue
        if "state_dict" in state and "loops" in state:
            return path
        log.warning("checkpoint %s lacks the training state; trying an older checkpoint", path)
    return None


class CheckpointOnSigterm(L.Callback):
    """Schedulers pre-empt jobs with SIGTERM: write a checkpoint of the step just finished before
    Lightning stops the loop, so at most that step's successor is lost."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.received_sigterm:
            path = self.directory / f"step={trainer.global_step}.ckpt"
            if not path.exists():
                trainer.save_checkpoint(path)
            log.warning("received SIGTERM: wrote %s; continue with --resume", path)
