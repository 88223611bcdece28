"""The pretraining data: manifest(s) -> checked pairs -> resumable, rank-aware loaders."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.accelerators import CUDAAccelerator
import torch
from torch.utils.data import DataLoader

from convirt.config import PretrainConfig
from convirt.data.check import check_manifest
from convirt.data.images import load_image
from convirt.data.manifest import read_manifest
from convirt.data.pairs import FixedBatchSampler, PairCollator, PairDataset, StreamBatchSampler, pairs_from_manifest
from convirt.data.reports import SentenceSampler
from convirt.data.shards import ShardPairStream
from convirt.data.transforms import build_transforms
from convirt.errors import DataError

log = logging.getLogger(__name__)


def load_split_pairs(cfg: PretrainConfig, require_text: bool = True):
    """(train pairs, val pairs, train texts, bad-row count) after validating the manifest(s).

    ``require_text=False`` (image-only methods) also accepts manifests without a ``text`` column.
    """
    d = cfg.data
    if not d.train:
        raise DataError("data.train is not set: give a manifest (CSV/JSONL/Parquet) with image and text columns")
    sources = [(d.train, "train")] + ([(d.val, None)] if d.val else [])
    out, skipped = {}, 0
    for path, split in sources:
        path = Path(path)
        report = check_manifest(path, decode_images=d.check_images and not d.image_cache and not d.shards,
                                allow_absolute=d.allow_absolute_paths, progress=cfg.trainer.progress_bar,
                                require_text=require_text)
        if not require_text:  # the reports are never read: an empty or broken one costs no row
            report.bad = [b for b in report.bad if b.column != "text"]
        if d.shards and split == "train":  # rows whose images are in the shards need no local file
            from convirt.data.shards import ShardSet

            in_shards = ShardSet(d.shards).all_rows
            report.bad = [b for b in report.bad
                          if not (b.column == "image" and b.row in in_shards and b.reason.startswith("file not found"))]
        bad_rows = {b.row for b in report.bad if b.row is not None}
        if any(b.row is None for b in report.bad):
            raise DataError(f"{path}: " + "; ".join(b.reason for b in report.bad if b.row is None))
        if bad_rows and not d.skip_bad_rows:
            first = "; ".join(f"row {b.row}, {b.column}: {b.reason}" for b in report.bad[:5])
            raise DataError(f"{path} has {len(bad_rows)} bad row(s) ({first}{' ...' if len(report.bad) > 5 else ''}). "
                            "Fix them (see `convirt data check`) or set data.skip_bad_rows: true")
        if bad_rows:
            listed = "; ".join(f"row {b.row}, {b.column}: {b.reason}" for b in report.bad[:20])
            log.warning("%s: skipping %d bad row(s): %s%s", path, len(bad_rows), listed, " ..." if len(report.bad) > 20 else "")
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


_exiting = None  # set when the main process exits; see _worker_init


def _exiting_event():
    global _exiting
    if _exiting is None:
        _exiting = torch.multiprocessing.get_context().Event()
        atexit.register(_exiting.set)  # runs before multiprocessing's own exit hook, which terminates workers
    return _exiting


def _worker_init(exiting, worker_id: int) -> None:
    """Loader workers ignore SIGTERM until the main process exits. Schedulers signal the whole
    process group, and a worker that died first would make the main process fail before it writes
    its SIGTERM checkpoint; at exit, multiprocessing stops the workers with a SIGTERM of its own."""

    def on_sigterm(signum, frame) -> None:
        if exiting.is_set():
            os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    if os.environ.get("PL_SEED_WORKERS") == "1":  # what Lightning installs when no worker_init_fn is given
        pl_worker_init_function(worker_id)


def image_loader(cfg: PretrainConfig):
    """Decode the files, or read ``data.image_cache`` (built by ``convirt data cache`` from ``data.train``)."""
    if not cfg.data.image_cache:
        return load_image
    from convirt.data.cache import CachedImageLoader, ImageCache

    return CachedImageLoader(ImageCache(cfg.data.image_cache), Path(cfg.data.train).parent)


def open_shards(cfg: PretrainConfig, train_pairs):
    """``data.shards`` restricted to the training rows, checked to hold all of them."""
    from convirt.data.manifest import file_sha256
    from convirt.data.shards import ShardSet

    rows = {p.row for p in train_pairs}
    shards = ShardSet(cfg.data.shards, rows=rows)
    missing = sorted(rows - set(shards.row_of.tolist()))
    if missing:
        raise DataError(f"data.shards {cfg.data.shards} lacks {len(missing)} training row(s) of {cfg.data.train} "
                        f"(rows {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}): rewrite it with "
                        f"`convirt data shard {cfg.data.train} --out {cfg.data.shards}"
                        f"{' --split all' if cfg.data.val else ''}`"
                        f"{' (with data.val set, every row of data.train is a training row)' if cfg.data.val else ''}")
    if shards.index.get("manifest_sha256") != file_sha256(Path(cfg.data.train)):
        log.warning("data.shards %s was written from another version of %s (sha256 differs): the images and reports "
                    "trained on are the shards' ones", cfg.data.shards, cfg.data.train)
    if shards.size < cfg.image.size:
        log.warning("data.shards holds %d px images, below image.size %d: they are upscaled", shards.size, cfg.image.size)
    return shards


class PairDataModule(L.LightningDataModule):
    """``tokenizer=None``: no text is read (image-only methods). ``views=2``: two augmented views per
    image, in validation too (the same seeded draws at every validation, so its loss is comparable).

    With ``data.shards`` the training batches stream from WebDataset shards
    (:class:`convirt.data.shards.ShardPairStream`) through the same :class:`PairDataset` code."""

    def __init__(self, cfg: PretrainConfig, train_pairs, val_pairs, tokenizer, views: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.collate = PairCollator(tokenizer, cfg.text.max_length)
        sampler = None if tokenizer is None else SentenceSampler(mode=cfg.text.sampling, sections=tuple(cfg.text.sections))
        seed, load = cfg.trainer.seed, image_loader(cfg)
        self.train_set = PairDataset(train_pairs, build_transforms(cfg, train=True), sampler, seed, views=views, load=load)
        self.val_set = PairDataset(val_pairs, build_transforms(cfg, train=views == 2), sampler, seed + 1, views=views,
                                   load=load)
        self.shards = open_shards(cfg, train_pairs) if cfg.data.shards else None
        self._restored_streams: dict | None = None

    def _streams(self) -> dict:
        trainer = self.trainer
        return {"world_size": trainer.world_size, "num_workers": self.cfg.data.num_workers, "seed": self.cfg.trainer.seed}

    def state_dict(self) -> dict:
        """With shards: how the stream was split, so that a resume with another split can say so."""
        return {"shard_streams": self._streams()} if self.shards is not None and self.trainer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._restored_streams = state.get("shard_streams")

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        """``batch_sampler=None``: ``dataset`` yields whole batches (lists of samples; the shard stream)."""
        workers = self.cfg.data.num_workers
        # A private generator: creating a loader iterator must not draw from the global RNG that
        # dropout uses, or a resumed run would diverge from an uninterrupted one.
        generator = torch.Generator().manual_seed(self.cfg.trainer.seed)
        batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": None}
        return DataLoader(dataset, **batching, collate_fn=self.collate, num_workers=workers, generator=generator,
                          pin_memory=self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator),
                          persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                          worker_init_fn=functools.partial(_worker_init, _exiting_event()) if workers else None)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # resume exactly where the stream stopped: global_step optimiser steps = that many x accumulate batches
        start = trainer.global_step * trainer.accumulate_grad_batches
        log.info("training stream starts at batch %d", start)
        if self.shards is not None:
            if self._restored_streams not in (None, self._streams()):
                log.warning("the checkpoint's shard stream was split as %s, this run's as %s: the rest of the current "
                            "epoch is cut differently (some samples may repeat or be missed until the next epoch)",
                            self._restored_streams, self._streams())
            stream = ShardPairStream(self.shards, self.train_set, self.cfg.data.batch_size, self.cfg.trainer.seed,
                                     trainer.global_rank, trainer.world_size, start_batch=start,
                                     buffer=self.cfg.data.shard_shuffle_buffer)
            return self._loader(stream, None)
        sampler = StreamBatchSampler(len(self.train_set), self.cfg.data.batch_size, self.cfg.trainer.seed,
                                     trainer.global_rank, trainer.world_size, start_batch=start)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = FixedBatchSampler(len(self.val_set), self.cfg.data.batch_size, trainer.global_rank, trainer.world_size)
        return self._loader(self.val_set, sampler)
