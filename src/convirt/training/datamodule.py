"""The pretraining data: manifest(s) -> checked pairs -> resumable, rank-aware loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.accelerators import CUDAAccelerator
import torch
from torch.utils.data import DataLoader

from convirt.config import PretrainConfig
from convirt.data.check import check_manifest
from convirt.data.manifest import read_manifest
from convirt.data.pairs import FixedBatchSampler, PairCollator, PairDataset, StreamBatchSampler, pairs_from_manifest
from convirt.data.reports import SentenceSampler
from convirt.data.transforms import build_transforms
from convirt.errors import DataError

log = logging.getLogger(__name__)


def load_split_pairs(cfg: PretrainConfig):
    """(train pairs, val pairs, train texts, bad-row count) after validating the manifest(s)."""
    d = cfg.data
    if not d.train:
        raise DataError("data.train is not set: give a manifest (CSV/JSONL/Parquet) with image and text columns")
    sources = [(d.train, "train")] + ([(d.val, None)] if d.val else [])
    out, skipped = {}, 0
    for path, split in sources:
        path = Path(path)
        report = check_manifest(path, decode_images=d.check_images, allow_absolute=d.allow_absolute_paths, progress=cfg.trainer.progress_bar)
        bad_rows = {b.row for b in report.bad if b.row is not None}
        if any(b.row is None for b in report.bad):
            raise DataError(f"{path}: " + "; ".join(b.reason for b in report.bad if b.row is None))
        if bad_rows and not d.skip_bad_rows:
            first = "; ".join(f"row {b.row}, {b.column}: {b.reason}" for b in report.bad[:5])
            raise DataError(f"{path} has {len(bad_rows)} bad row(s) ({first}{' ...' if len(report.bad) > 5 else ''}). "
                            "Fix them (see `convirt data check`) or set data.skip_bad_rows: true")
        if bad_rows:
            log.warning("%s: skipping %d bad row(s)", path, len(bad_rows))
            skipped += len(bad_rows)
        df = read_manifest(path)
        good = [i for i in range(len(df)) if i + 1 not in bad_rows]
        if split is None:  # a separate validation manifest: all its rows
            out["val"] = pairs_from_manifest(df, path.parent, good, d.allow_absolute_paths)
            continue
        if "split" in df.columns and not d.val:
            splits = df["split"].astype(str).str.lower().tolist()
            train = [i for i in good if splits[i] == "train"]
            val = [i for i in good if splits[i] in ("valid", "val", "validation")]
            out["val"] = pairs_from_manifest(df, path.parent, val, d.allow_absolute_paths)
        else:
            train = good
        out["train"] = pairs_from_manifest(df, path.parent, train, d.allow_absolute_paths)
    if not out.get("val"):
        raise DataError("no validation rows: give data.val, or a `split` column with 'valid' rows in data.train")
    return out["train"], out["val"], skipped


class PairDataModule(L.LightningDataModule):
    def __init__(self, cfg: PretrainConfig, train_pairs, val_pairs, tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.collate = PairCollator(tokenizer, cfg.text.max_length)
        sampler = SentenceSampler(mode=cfg.text.sampling, sections=tuple(cfg.text.sections))
        seed = cfg.trainer.seed
        self.train_set = PairDataset(train_pairs, build_transforms(cfg, train=True), sampler, seed)
        self.val_set = PairDataset(val_pairs, build_transforms(cfg, train=False), sampler, seed + 1)

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        workers = self.cfg.data.num_workers
        # A private generator: creating a loader iterator must not draw from the global RNG that
        # dropout uses, or a resumed run would diverge from an uninterrupted one.
        generator = torch.Generator().manual_seed(self.cfg.trainer.seed)
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=self.collate, num_workers=workers, generator=generator,
                          pin_memory=self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator),
                          persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # resume exactly where the stream stopped: global_step optimiser steps = that many x accumulate batches
        start = trainer.global_step * trainer.accumulate_grad_batches
        log.info("training stream starts at batch %d", start)
        sampler = StreamBatchSampler(len(self.train_set), self.cfg.data.batch_size, self.cfg.trainer.seed,
                                     trainer.global_rank, trainer.world_size, start_batch=start)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = FixedBatchSampler(len(self.val_set), self.cfg.data.batch_size, trainer.global_rank, trainer.world_size)
        return self._loader(self.val_set, sampler)
