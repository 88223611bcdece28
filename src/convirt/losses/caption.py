"""Teacher-forced captioning loss (the Caption-LSTM / Caption-Transformer baselines of ConVIRT,
Zhang et al., MLHC 2022, Sec. 4): the decoder sees tokens ``0..t-1`` and scores token ``t``::

    L = - sum_{b, t >= 1, mask[b, t]} log p(x_{b,t} | x_{b,<t}, image_b) / #{(b, t >= 1): mask[b, t]}

``x`` are the tokenizer's ids with [CLS] (BOS) first and [SEP] (EOS) last; padding is never a target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``logits (B, T-1, V)`` from decoding ``input_ids[:, :-1]``; mean token cross-entropy in float32 at least."""
    targets, keep = input_ids[:, 1:], attention_mask[:, 1:].bool()
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match the {tuple(targets.shape)} shifted targets")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits[keep], targets[keep])
