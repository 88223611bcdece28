"""What every pretraining method shares: optimiser and schedules, NaN/Inf guarding, sample
accounting, channels-last input. A method adds only its objective (``compute_loss``)."""

from __future__ import annotations

import math
import time
from collections import defaultdict

import lightning as L
import torch

from convirt.config import PretrainConfig
from convirt.errors import ConvirtError


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite: one fused pass per (device, dtype), GradScaler's
    own check (its multiply by 1 leaves the values as they were), one device sync per group. On CPU ~15x
    faster than ``isfinite(g).all()`` per tensor, which cost 4% of a ResNet-18 step."""
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for t in tensors:
        groups[(t.device, t.dtype)].append(t)
    flags = []
    for (device, _), group in groups.items():
        flags.append(torch.zeros(1, device=device))
        torch._amp_foreach_non_finite_check_and_unscale_(group, flags[-1], torch.ones(1, device=device))
    return not any(bool(flag) for flag in flags)


class NonFiniteLossError(ConvirtError):
    """Too many consecutive steps with a NaN/Inf loss."""


class PretrainMethod(L.LightningModule):
    # what the run builds for a method: reports tokenised (else no text tower, no text read),
    # augmented views per image, batch norm synchronised across GPUs (SimCLR's global BN), local features
    needs_text = True
    views = 1
    global_batchnorm = False
    local_features = False  # GLoRIA: the model gets word-region features (DualEncoder.local_cfg)

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.bad_steps_in_a_row = 0
        self.skipped_steps = 0
        self._rows = torch.empty(0, dtype=torch.long)  # manifest rows of the current batch, for messages
        self.replaced_samples = 0
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._last_step_time: float | None = None

    # ---------------------------------------------------------------- objective
    def compute_loss(self, batch: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _images(self, batch: dict) -> torch.Tensor:
        images = batch["images"]
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.trainer.channels_last else images

    # ---------------------------------------------------------------- loop hooks
    def training_step(self, batch: dict, batch_idx: int):
        loss = self.compute_loss(batch)
        self.replaced_samples += int(batch["replaced"])
        self._rows = batch["rows"]
        if not torch.isfinite(loss):
            return self._skip_non_finite("loss")
        bs = batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, batch_size=bs)
        now = time.perf_counter()
        if self._last_step_time is not None:  # pairs/s on this device, data loading included
            self.log("train/pairs_per_s", bs / (now - self._last_step_time), prog_bar=True, batch_size=bs)
        self._last_step_time = now
        return loss

    def _skip_non_finite(self, what: str):
        """Count a skipped step (NaN/Inf ``what``: loss or gradients); stop after too many in a row.

        Returning None from ``training_step`` makes Lightning skip backward and the update.
        """
        self.bad_steps_in_a_row += 1
        self.skipped_steps += 1
        rows = self._rows.tolist()
        self.print(f"non-finite {what} at step {self.global_step}; skipped (rows {rows[:8]}{'...' if len(rows) > 8 else ''})")
        if self.bad_steps_in_a_row >= self.cfg.trainer.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.bad_steps_in_a_row} steps in a row with a non-finite loss or gradients, up to step {self.global_step} "
                f"({what}); last batch rows: {rows}. "
                "Lower optim.lr, use trainer.precision: bf16-mixed instead of 16-mixed, or check those rows."
            )
        return None

    def validation_step(self, batch: dict, batch_idx: int):
        loss = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["images"].shape[0])
        return loss

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get("val/loss")
        if self.plateau is not None and val is not None and not self.trainer.sanity_checking:
            self.plateau.step(float(val))

    def on_before_optimizer_step(self, optimizer) -> None:
        # non-finite gradients with a finite loss: drop them rather than corrupt the weights
        if self.trainer.precision == "16-mixed":
            return  # the gradient scaler skips overflowing steps itself (and lowers its scale)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:  # the loss was skipped already
            return
        if not all_finite(grads):
            for p in self.parameters():
                p.grad = None
            self._skip_non_finite("gradients")
        else:
            self.bad_steps_in_a_row = 0  # reset only by a step that updates the weights

    def configure_model(self) -> None:
        """Lightning calls this before training: the speed options of ``cfg.trainer``."""
        apply_speed_options(self)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=o.lr, weight_decay=o.weight_decay, **({"fused": True} if o.fused else {}))
        if o.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=o.plateau_factor, patience=o.plateau_patience)
        total, warmup = self.cfg.trainer.max_steps, o.warmup_steps

        def factor(step: int) -> float:
            scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
            if o.scheduler == "cosine" and step >= warmup:
                scale *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
            return scale

        if warmup or o.scheduler == "cosine":
            if o.scheduler == "plateau":
                # warm-up multiplies the lr only while it lasts; the plateau rule owns the lr afterwards
                schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=max(1, warmup - 1))
            else:
                schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        return optimizer

    # ---------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["convirt"] = {
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "skipped_steps": self.skipped_steps,
            "replaced_samples": self.replaced_samples,
            "rng": _rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("convirt", {})
        self._plateau_state = extra.get("plateau")
        self.skipped_steps = extra.get("skipped_steps", 0)
        self.replaced_samples = extra.get("replaced_samples", 0)
        if extra.get("rng"):
            _set_rng_state(extra["rng"])

    def on_train_start(self) -> None:
        state = getattr(self, "_plateau_state", None)
        if state and self.plateau is not None:
            self.plateau.load_state_dict(state)


def apply_speed_options(method: PretrainMethod) -> None:
    """``trainer.gradient_checkpointing`` and ``trainer.compile`` on the method's towers (once).

    Both keep the loss and the gradients (tested): checkpointing recomputes activations in backward
    (dropout replays the same draws; the recomputation updates the batch-norm running statistics of
    the checkpointed stages a second time, as in any checkpointed CNN), and ``nn.Module.compile``
    compiles a tower's forward in place, so parameter names, checkpoints and exported models are
    unchanged (its dropout masks come from inductor's generator, not eager's). Measured effects:
    benchmarks/RESULTS.md.
    """
    if getattr(method, "_speed_options_applied", False):
        return
    t = method.cfg.trainer
    model = getattr(method, "model", None)
    towers = [getattr(model, name, None) for name in ("image_encoder", "text_encoder")]
    for tower in (x for x in towers if x is not None):
        if t.gradient_checkpointing:
            tower.set_grad_checkpointing(True)
        if t.compile:
            tower.compile()
    method._speed_options_applied = True


def _rng_state() -> dict:
    """The global torch RNG (dropout draws from it); data randomness is seeded per sample instead."""
    return {"torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
