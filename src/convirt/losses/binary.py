"""The Contrastive-Binary-Loss baseline of ConVIRT (Zhang et al., MLHC 2022, Sec. 4, adapted there
from Chauhan et al., MICCAI 2020): a classifier scores image-text pairs, trained with binary
cross-entropy to tell the true pairs (label 1) from mismatched ones (label 0)::

    L = ( sum_i BCE(s(v_i, u_i), 1) + sum_{i, j in N(i)} BCE(s(v_i, u_j), 0) ) / (n_pos + n_neg)

with N(i) the texts paired with image i as negatives: other rows of the same batch (a random sample
of the data set, as the paper's "randomly sampled" text), ``k`` per image, ``k = 1`` as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cyclic_negatives(n: int, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, k)`` row indices: for row i, k distinct rows other than i.

    One random cycle through the batch; row i takes the k rows that follow it on the cycle. So no
    row is its own negative and, for each shift, every text serves as a negative exactly once.
    """
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= negatives < batch size; got {k} negatives for a batch of {n}")
    order = torch.randperm(n, generator=generator)
    index = torch.empty(n, k, dtype=torch.long)
    for shift in range(1, k + 1):
        index[order, shift - 1] = order.roll(-shift)
    return index


def shifted_negatives(n: int, k: int = 1) -> torch.Tensor:
    """The deterministic ``(n, k)`` choice (row i takes rows i+1 .. i+k): for validation, comparable across checks."""
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= negatives < batch size; got {k} negatives for a batch of {n}")
    return (torch.arange(n)[:, None] + torch.arange(1, k + 1)[None, :]) % n


def binary_matching_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the positives ``(n,)`` (label 1) and the negatives ``(n, k)``
    (label 0) that ``neg_mask`` keeps (all by default). Logits, not probabilities: computed stably in
    float32 at least."""
    dtype = torch.promote_types(pos_logits.dtype, torch.float32)
    pos, neg = pos_logits.to(dtype), neg_logits.to(dtype)
    keep = torch.ones_like(neg, dtype=torch.bool) if neg_mask is None else neg_mask.bool()
    pos_sum = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
    neg_sum = F.binary_cross_entropy_with_logits(neg[keep], torch.zeros_like(neg[keep]), reduction="sum")
    return (pos_sum + neg_sum) / (pos.numel() + keep.sum())
