"""One pretraining run, end to end: config -> data -> model -> Lightning Trainer -> exported model.

Run folder layout (``trainer.out_dir``)::

    config.yaml        the resolved configuration
    tokenizer/         the tokenizer (learned once for text.model: scratch, reused on resume)
    checkpoints/       step=N.ckpt (atomic; the two newest kept) for --resume
    logs/              CSV and TensorBoard logs
    model/             the exported model (convirt.load)
    summary.json       steps, losses, skipped/replaced samples, time
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convirt.atomic import atomic_write_text
from convirt.config import EXECUTION_ONLY, PretrainConfig, changed_settings, load_config
from convirt.errors import ConfigError, ConvirtError
from convirt.methods import METHODS
from convirt.models.dual_encoder import DualEncoder
from convirt.models.text import check_text_model
from convirt.training.checkpoint import AtomicCheckpointIO, CheckpointOnSigterm, PeriodicCheckpoint, find_resume_checkpoint
from convirt.training.csv_log import AtomicCSVLogger
from convirt.training.datamodule import PairDataModule, load_split_pairs

log = logging.getLogger(__name__)


def _build_model(cfg: PretrainConfig, train_pairs, out: Path, local: bool = False) -> DualEncoder:
    """Build the towers (with GLoRIA's local features if ``local``); a scratch tokenizer is learned
    once and reused on resume."""
    from transformers import AutoTokenizer

    tok_dir = out / "tokenizer"
    local_cfg = cfg.gloria if local else None
    if cfg.text.model == "scratch" and tok_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False)
        return DualEncoder.build(cfg.image, cfg.text, cfg.projection, tokenizer=tokenizer, local_cfg=local_cfg)
    corpus = [p.text for p in train_pairs] if cfg.text.model == "scratch" else None
    model = DualEncoder.build(cfg.image, cfg.text, cfg.projection, corpus=corpus, local_cfg=local_cfg)
    if not tok_dir.is_dir():  # written whole or not at all: a kill mid-write must not leave half a tokenizer
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=out))
        try:
            model.tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, tok_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model


@contextlib.contextmanager
def _disk_full_names_the_path(out: Path):
    """Writers outside :mod:`convirt.atomic` (TensorBoard, tokenizer files) raise a bare ENOSPC."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise ConvirtError(f"disk full while writing {err.filename or out}: free space or choose another trainer.out_dir") from err


def _on_gpus(accelerator: str) -> bool:
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _check_same_settings(out: Path, cfg: PretrainConfig) -> None:
    """A resumed run goes on with the settings it was trained with; only how long it trains may change."""
    changed = changed_settings(out / "config.yaml", cfg, ignore=EXECUTION_ONLY + ("trainer.max_steps",))
    if changed:
        raise ConfigError(
            f"{out} was trained with other settings: {', '.join(changed)} differ from its config.yaml, and resuming "
            f"would mix the two. Resume with the run's own settings (convirt pretrain --config {out / 'config.yaml'} "
            f"--resume, with --max-steps N to train longer), or start a new run in another trainer.out_dir")
    saved = load_config(out / "config.yaml") if (out / "config.yaml").is_file() else cfg
    if saved.trainer.max_steps != cfg.trainer.max_steps and cfg.optim.scheduler == "cosine":
        log.warning("trainer.max_steps %d -> %d: the cosine schedule is stretched to the new length from here on",
                    saved.trainer.max_steps, cfg.trainer.max_steps)


def pretrain(cfg: PretrainConfig, resume: bool = False, callbacks: list | None = None) -> dict:
    """Train, checkpoint, export. Returns the run summary (also written to ``summary.json``).

    ``callbacks`` are extra Lightning callbacks (monitoring, fault injection in tests).
    """
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {sorted(METHODS)}; got {cfg.method!r}")
    method_cls = METHODS[cfg.method]
    if method_cls.needs_text:  # image-only methods (simclr, mocov2) build no text tower
        check_text_model(cfg.text.model)  # before any work: data checks can take minutes
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(cfg.trainer.out_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_path = None
    if resume:
        ckpt_path = find_resume_checkpoint(ckpt_dir)
        if ckpt_path is None:
            log.warning("no usable checkpoint in %s: starting from scratch", ckpt_dir)
        else:
            _check_same_settings(out, cfg)
    elif ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
        raise ConvirtError(f"{ckpt_dir} already holds checkpoints: pass --resume to continue, or choose another trainer.out_dir")
    with _disk_full_names_the_path(out):
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml")

        L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        train_pairs, val_pairs, skipped_rows = load_split_pairs(cfg, require_text=method_cls.needs_text)
        model = (_build_model(cfg, train_pairs, out, method_cls.local_features) if method_cls.needs_text
                 else method_cls.build_model(cfg))
        method = method_cls(cfg, model)
        data = PairDataModule(cfg, train_pairs, val_pairs, model.tokenizer, views=method_cls.views)

        t = cfg.trainer
        steps_per_pass = max(1, len(train_pairs) // (cfg.data.batch_size * t.accumulate_grad_batches))
        val_every = t.val_every_n_steps or steps_per_pass
        callbacks = list(callbacks or []) + [
            PeriodicCheckpoint(val_every, dirpath=ckpt_dir, filename="step={step}", auto_insert_metric_name=False,
                               every_n_train_steps=t.checkpoint_every_n_steps, monitor="step", mode="max", save_top_k=2),
            CheckpointOnSigterm(ckpt_dir, val_every),
        ]
        if cfg.optim.early_stopping_patience:
            callbacks.append(EarlyStopping("val/loss", patience=cfg.optim.early_stopping_patience, check_on_train_epoch_end=False))
        if t.progress_bar:
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps // 2)))
        trainer = L.Trainer(
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
            precision=t.precision, max_steps=t.max_steps, accumulate_grad_batches=t.accumulate_grad_batches,
            val_check_interval=val_every * t.accumulate_grad_batches, check_val_every_n_epoch=None,
            num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps, callbacks=callbacks,
            logger=[AtomicCSVLogger(out, name="logs", version=""), TensorBoardLogger(out, name="logs", version="")],
            plugins=[AtomicCheckpointIO()], use_distributed_sampler=False, enable_progress_bar=t.progress_bar,
            enable_model_summary=False, deterministic=False, default_root_dir=out,
            sync_batchnorm=method_cls.global_batchnorm and _on_gpus(t.accelerator),  # SyncBatchNorm needs CUDA
        )
        start = time.time()
        try:
            trainer.fit(method, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        except SIGTERMException:
            raise SystemExit(143) from None  # checkpoint written by CheckpointOnSigterm; 128 + SIGTERM
        elapsed = time.time() - start
        if trainer.global_step % val_every != 0 and not trainer.interrupted:
            trainer.validate(method, datamodule=data, verbose=False)  # the summary reports the final model's val loss
        final = ckpt_dir / f"step={trainer.global_step}.ckpt"
        if not final.exists():
            trainer.save_checkpoint(final)
        summary = {
            "method": cfg.method, "global_step": trainer.global_step, "resumed_from": str(ckpt_path) if ckpt_path else None,
            "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "skipped_bad_rows": skipped_rows,
            "replaced_samples": method.replaced_samples, "skipped_steps": method.skipped_steps,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "fit_seconds": round(elapsed, 1), "world_size": trainer.world_size,
        }
        if trainer.is_global_zero:
            model.meta = {"method": cfg.method, "global_step": trainer.global_step}
            model.save(out / "model")
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
