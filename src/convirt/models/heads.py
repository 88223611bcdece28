"""Projection heads g_v, g_u: ``W2 ReLU(W1 h)`` with separate weights per modality (ConVIRT, Sec. 2).

The paper fixes one hidden layer with ReLU and output d = 512; it does not state the hidden width.
We use the input width (as SimCLR does), configurable with ``hidden_dim``.
"""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int = 512, hidden_dim: int | None = None) -> None:
        hidden_dim = hidden_dim or in_dim
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
