"""Checkpoints that survive crashes: atomic writes, safe loading, and picking the newest good one."""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convirt.atomic import TMP_SUFFIX, atomic_path
from convirt.errors import ConvirtError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but a crash mid-write leaves the previous file intact
    (temporary file + fsync + rename), and loading never unpickles arbitrary objects."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        # through a Python file: a full disk then raises OSError(ENOSPC), not torch's opaque RuntimeError
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location)


def load_checkpoint_file(path, map_location=None) -> dict[str, Any]:
    """A checkpoint as plain tensors and containers (``weights_only``: nothing else is unpickled).

    The zip's CRC-32s are verified first: torch.load alone accepts flipped bytes in tensor data.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ValueError(f"checksum mismatch in {damaged}")
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
    """The newest checkpoint in ``directory`` that loads; corrupt ones are reported and passed over.

    Temporary files of writes that a crash interrupted are removed (they were never checkpoints).
    """
    directory = Path(directory)
    for stale in directory.glob(f".*.ckpt.*{TMP_SUFFIX}"):
        log.warning("removing %s, left by a checkpoint write that did not finish", stale)
        stale.unlink(missing_ok=True)
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


class PeriodicCheckpoint(ModelCheckpoint):
    """``step=N.ckpt`` every N steps; on a step that validation follows, after that validation.

    Lightning resumes from a checkpoint taken at a step's end by skipping the validation due then,
    so the plateau scheduler and early stopping would miss it and a resumed run would drift from an
    uninterrupted one."""

    def __init__(self, val_every: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_every = val_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self._every_n_train_steps == 0 and step % self.val_every == 0:
            self._defer_save_until_validation = True  # ModelCheckpoint saves in on_validation_end
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class CheckpointOnSigterm(Checkpoint):
    """Schedulers pre-empt jobs with SIGTERM: write a checkpoint of the step just finished before
    Lightning stops the loop, so at most that step's successor is lost. On a step that validation
    follows, the checkpoint is written when Lightning stops that validation (a resumed run finishes it).

    A :class:`Checkpoint`, so Lightning runs it after ModelCheckpoint: on a periodic step the
    file is then already there, rather than written twice (``step=N-v1.ckpt``)."""

    def __init__(self, directory: str | Path, val_every: int = 0) -> None:
        self.directory, self.val_every = Path(directory), val_every
        self._written: Path | None = None

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.received_sigterm and not (self.val_every and trainer.global_step % self.val_every == 0):
            self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a SIGTERM during validation stops the loop before the next on_train_batch_end
        if isinstance(exception, SIGTERMException):
            self._save(trainer)

    def _save(self, trainer) -> None:
        path = self.directory / f"step={trainer.global_step}.ckpt"
        if path == self._written:
            return
        if not path.exists():
            trainer.save_checkpoint(path)
        self._written = path
        log.warning("received SIGTERM: wrote %s; continue with --resume", path)
