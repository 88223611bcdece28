"""MoCo v2 (Chen, Fan, Girshick, He, arXiv:2003.04297) on ConVIRT's images, as its image-only baseline.

MoCo (He et al., CVPR 2020, Algorithm 1): a query encoder f_q + g_q trained by back-propagation, a
key encoder f_k + g_k that follows it as an exponential moving average (m = 0.999), and a queue of
the K most recent keys as negatives for InfoNCE (tau = 0.2 in v2). v2 adds the 2-layer MLP head
(2048-d hidden for ResNet-50) and stronger augmentation; here T is ConVIRT's, as for every method.

Shuffling BN (MoCo Sec. 3.3): with several processes, the key batch is gathered, permuted, encoded
in per-rank slices and un-shuffled, so a query and its key never share batch-norm statistics. The
permutation comes from (seed, step), identical on all ranks and on resume. On one device there is
nothing to shuffle across and the key batch is normalised as a whole, as in MoCo's 1-GPU code.

The key encoder, the queue and its pointer are buffers/modules of this LightningModule, so they are
in every checkpoint and ``--resume`` continues exactly. The exported model is the query encoder.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from convirt.config import PretrainConfig
from convirt.errors import ConfigError
from convirt.losses.distributed import world_info
from convirt.losses.ssl import MOCOV2_TEMPERATURE, queue_info_nce
from convirt.methods.image_only import ImageOnlyMethod
from convirt.models.dual_encoder import DualEncoder


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (equal sizes), no gradient: keys and key images need none."""
    world = world_info()[1]
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class MoCoV2(ImageOnlyMethod):
    paper_temperature = MOCOV2_TEMPERATURE

    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg, model)
        self.momentum = cfg.ssl.momentum
        self.key_encoder = copy.deepcopy(model.image_encoder)  # starts equal to the query encoder
        self.key_head = copy.deepcopy(model.image_head)
        for p in self._key_params():
            p.requires_grad_(False)
        # a private generator: building the queue must not move the global RNG
        generator = torch.Generator().manual_seed(cfg.trainer.seed)
        queue = F.normalize(torch.randn(cfg.ssl.queue_size, cfg.ssl.proj_dim, generator=generator), dim=1)
        self.register_buffer("queue", queue)  # (K, d): one key per row, the oldest overwritten first
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _query_params(self) -> list[torch.nn.Parameter]:
        return [*self.model.image_encoder.parameters(), *self.model.image_head.parameters()]

    def _key_params(self) -> list[torch.nn.Parameter]:
        return [*self.key_encoder.parameters(), *self.key_head.parameters()]

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        size, world = self.queue.shape[0], self.trainer.world_size
        if size < self.cfg.data.batch_size * world:
            raise ConfigError(f"ssl.queue_size ({size}) must be >= the global batch (data.batch_size x {world} devices = "
                              f"{self.cfg.data.batch_size * world}): raise it")
        train_set = getattr(self.trainer.datamodule, "train_set", None)
        n = len(train_set) if train_set is not None else size
        if size > n:
            raise ConfigError(f"ssl.queue_size ({size}) is larger than the training set ({n} images): the queue would hold "
                              f"earlier keys of the same images as negatives. Set ssl.queue_size <= {n}")

    # ---------------------------------------------------------------- MoCo's three operations
    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (parameters only; f_k keeps its own BN statistics)."""
        m = self.momentum
        for k, q in zip(self._key_params(), self._query_params()):
            k.mul_(m).add_(q.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (the global batch, in rank order) over the oldest rows, wrapping around."""
        size, ptr = self.queue.shape[0], int(self.queue_ptr)
        index = (ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[index] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's keys, every rank's keys in global order), L2-normalised, with shuffling BN."""
        rank, world = world_info()
        if world == 1 or not self.training:
            k = F.normalize(self.key_head(self.key_encoder(images)).float(), dim=1)
            return k, k
        everything = _gather(images)
        perm = np.random.default_rng([self.cfg.trainer.seed, self.global_step, 0x6D6F636F]).permutation(everything.shape[0])
        perm = torch.from_numpy(perm).to(images.device)
        mine = self._view(everything[perm.view(world, -1)[rank]])
        shuffled = _gather(F.normalize(self.key_head(self.key_encoder(mine)).float(), dim=1))
        k_all = torch.empty_like(shuffled)
        k_all[perm] = shuffled  # un-shuffle: row perm[j] of the global batch was encoded at position j
        b = images.shape[0]
        return k_all[rank * b : (rank + 1) * b], k_all

    # ---------------------------------------------------------------- objective
    def compute_loss(self, batch: dict) -> torch.Tensor:
        q = self.model.image_embedding(self._view(batch["images"]))
        if self.training:
            self.momentum_update()
        k, k_all = self.keys(self._view(batch["images2"]))
        # a copy: the queue is about to change, and backward still needs the negatives used here
        loss = queue_info_nce(q, k, self.queue.clone(), self.temperature)
        if self.training and bool(torch.isfinite(k_all).all()):  # a NaN key would poison every later step
            self.enqueue(k_all)
        return loss
