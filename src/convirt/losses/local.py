"""GLoRIA's local image-report similarity and loss (Huang et al., ICCV 2021, Sec. 3.2, Eq. 1-5).

For image i (regions r_im, m = 1..M) and report j (words w_jl, l = 1..W_j)::

    a_jlm   = softmax_m(tau1 * <w_jl / |w_jl|, r_im>)         attention of word l over regions
    c_ijl   = sum_m a_jlm r_im                                  the word's visual context
    Z(i, j) = log sum_l exp(tau2 * cos(c_ijl, w_jl))            word-context agreement of the pair
    L_local = mean_i [ CE_j(tau3 Z(i, .)) ] / 2 + mean_j [ CE_i(tau3 Z(., j)) ] / 2

Paper defaults (GLoRIA's released configuration): tau1 = 4, tau2 = 5, tau3 = 10, all three
multipliers. As in the released code, Z is the plain log-sum-exp; the paper's formula raises the
sum to the power 1/tau2, which only rescales Z by a constant that tau3 absorbs (10 x 1/5 = 2 would
then be the scale). GLoRIA sums the two directions; we average them (a constant factor 2 on the
loss, the same relative weight as the global term, which is averaged the same way here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convirt.models.local import PAPER_ATTENTION_SCALE, word_region_attention

PAPER_WORD_SCALE = 5.0  # tau2
PAPER_REPORT_SCALE = 10.0  # tau3


def local_similarity(regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                     attention_scale: float = PAPER_ATTENTION_SCALE, word_scale: float = PAPER_WORD_SCALE,
                     chunk: int = 64) -> torch.Tensor:
    """``Z``: ``(n_images, n_reports)`` from regions ``(n_images, M, D)``, words ``(n_reports, W, D)`` and
    the word mask ``(n_reports, W)``. Computed in float32, ``chunk`` reports at a time (memory
    ``n_images x chunk x W x (M + D)``). A report without words (all special or punctuation tokens) gets 0 against every image:
    it tells no image apart, and a loss over it stays finite."""
    r = regions.float()
    columns = []
    for start in range(0, words.shape[0], chunk):
        w = words[start : start + chunk].float()  # (J, W, D)
        mask = word_mask[start : start + chunk].bool()
        attn = word_region_attention(w[None], r[:, None], attention_scale)  # (I, J, W, M)
        context = attn @ r[:, None]  # (I, J, W, D)
        agreement = F.cosine_similarity(context, w[None].expand_as(context), dim=-1)  # (I, J, W)
        agreement = (word_scale * agreement).masked_fill(~mask[None], float("-inf"))
        z = torch.logsumexp(agreement, dim=-1)
        columns.append(torch.where(mask.any(dim=-1)[None], z, torch.zeros_like(z)))
    return torch.cat(columns, dim=1)


def local_contrastive_loss(regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                           attention_scale: float = PAPER_ATTENTION_SCALE, word_scale: float = PAPER_WORD_SCALE,
                           report_scale: float = PAPER_REPORT_SCALE) -> torch.Tensor:
    """The bidirectional local loss of a batch of N matching (image, report) pairs (row i with row i)."""
    logits = report_scale * local_similarity(regions, words, word_mask, attention_scale, word_scale)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * F.cross_entropy(logits, targets) + 0.5 * F.cross_entropy(logits.T, targets)
