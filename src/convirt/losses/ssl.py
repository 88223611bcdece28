"""Image-only contrastive losses of the baselines ConVIRT is compared with (Zhang et al., Table 1).

NT-Xent (SimCLR; Chen, Kornblith, Norouzi, Hinton, ICML 2020, Eq. 1): for 2N views of N images
(``z1[i]``, ``z2[i]`` of image i), anchor a with positive p(a) and cosine similarity s::

    l_a = -log( exp(s(a, p(a))/tau) / sum_{b != a} exp(s(a, b)/tau) )     L = mean over all 2N anchors

so each anchor has 1 positive and 2N-2 negatives. Under ``torch.distributed`` the views of every
rank are gathered with gradients (:func:`gather_with_grad`): the loss and, after DDP's gradient
averaging, the gradients equal single-process training on the concatenated batch.

InfoNCE with a queue (MoCo; He et al., CVPR 2020, Eq. 1 / Algorithm 1; MoCo v2 keeps it)::

    l_i = -log( exp(q_i.k_i/tau) / (exp(q_i.k_i/tau) + sum_j exp(q_i.queue_j/tau)) )

with the keys k from the momentum encoder (no gradient) and the queue of earlier keys as negatives.
Both are computed in float32 at least: logits divided by a small tau overflow bf16/fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convirt.errors import ConfigError
from convirt.losses.distributed import gather_with_grad

SIMCLR_TEMPERATURE = 0.1  # SimCLR's ImageNet setting (Table 5 best at batch 4096; its README: 0.1 ImageNet, 0.5 CIFAR-10)
MOCOV2_TEMPERATURE = 0.2  # MoCo v2, Sec. 2


def _float(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return [F.normalize(t.to(dtype), dim=-1) for t in tensors]


def _nt_xent_rows(z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor, z2_all: torch.Tensor, offset: int,
                  temperature: float) -> torch.Tensor:
    """Mean NT-Xent over the 2B local anchors, each against all 2N gathered views but itself."""
    b, n = z1.shape[0], z1_all.shape[0]
    a, everything = _float(torch.cat([z1, z2]), torch.cat([z1_all, z2_all]))
    logits = a @ everything.T / temperature  # (2B, 2N)
    local = torch.arange(offset, offset + b, device=a.device)
    self_idx = torch.cat([local, local + n])
    positive = torch.cat([local + n, local])
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * n).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = SIMCLR_TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss on one (single-process) batch: ``z1[i]`` and ``z2[i]`` are two views of image i."""
    if z1.shape != z2.shape:
        raise ValueError(f"the two views' embeddings differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
    return _nt_xent_rows(z1, z2, z1, z2, 0, temperature)


class NTXentLoss(nn.Module):
    """NT-Xent as a module; DDP-aware (each rank contrasts its anchors against the global batch)."""

    def __init__(self, temperature: float = SIMCLR_TEMPERATURE) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"ssl.temperature must be > 0 (SimCLR: {SIMCLR_TEMPERATURE}); got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape:
            raise ValueError(f"the two views' embeddings differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}")
        z1_all, offset = gather_with_grad(z1)
        z2_all, _ = gather_with_grad(z2)
        return _nt_xent_rows(z1, z2, z1_all, z2_all, offset, self.temperature)


def queue_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = MOCOV2_TEMPERATURE) -> torch.Tensor:
    """MoCo's loss: query ``q`` (B, d), its positive key ``k`` (B, d), negatives ``queue`` (K, d).

    The queue rows are used as they are (MoCo stores normalised keys); q and k are normalised here.
    """
    q, k = _float(q, k)
    queue = queue.to(q.dtype)
    positive = (q * k.detach()).sum(dim=-1, keepdim=True)
    negative = q @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
