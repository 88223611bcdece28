"""Gathering embeddings across ranks with gradients, so every rank contrasts against the global batch.

Each rank computes the loss only for its own rows (``local x global`` similarities instead of
``global x global``); the backward of the gather sums the incoming gradients over ranks and keeps
the local slice. After DDP averages parameter gradients, the result equals single-process training
on the concatenated batch (tested with 2 gloo processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = world_info()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All rows of ``tensor`` from every rank (equal sizes), and the offset of this rank's rows.

    A no-op returning ``(tensor, 0)`` when not distributed.
    """
    rank, world = world_info()
    if world == 1:
        return tensor, 0
    return _GatherWithGrad.apply(tensor), rank * tensor.shape[0]
