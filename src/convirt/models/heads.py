"""Projection heads g_v, g_u: ``W2 ReLU(W1 h)`` with separate weights per modality (ConVIRT, Sec. 2).

The paper fixes one hidden layer with ReLU and output d = 512; it does not state the hidden width.
We use the input width (as SimCLR does), configurable with ``hidden_dim``.

``batchnorm=True`` (not in the paper; off by default) inserts batch norm after the hidden layer, as
SimCLR v2 / MoCo v3 heads do. Freshly initialised encoders give nearly identical vectors for every
input (mean pairwise cosine ~0.9: ReLU-pooled image features, max-pooled token vectors), so the
contrastive loss sits at ln(N) for hundreds of steps; centring the hidden layer removes that shared
component. The CPU demo, which trains both towers from scratch in minutes, needs it.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int = 512, hidden_dim: int | None = None, batchnorm: bool = False) -> None:
        hidden_dim = hidden_dim or in_dim
        layers = [nn.Linear(in_dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if batchnorm else [])
        super().__init__(*layers, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim


class PairClassifier(nn.Module):
    """The Contrastive-Binary-Loss baseline's pair scorer (ConVIRT, Sec. 4): the two projections
    concatenated, then ``Linear -> ReLU -> Linear`` to one logit (is this a true pair?)."""

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 1))

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(..., d), (..., d) -> (...)`` logits."""
        return self.mlp(torch.cat([image_emb, text_emb], dim=-1)).squeeze(-1)
