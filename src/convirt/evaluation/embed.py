"""Images -> encoder features, batched, with a progress bar; and a fair random baseline.

A randomly initialised encoder keeps ImageNet-free batch-norm statistics (mean 0, var 1) that do
not match radiographs; a pretrained one adapted them during pretraining. For a fair comparison
(PROTOTYPE-NOTES), :func:`recalibrate_batchnorm` re-estimates them on the data without training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from convirt.data.images import load_image, to_tensor


class ImageFiles(Dataset):
    """Image files through a (deterministic) evaluation transform."""

    def __init__(self, paths: Sequence[str | Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(to_tensor(load_image(self.paths[i])))


def _loader(paths, transform, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(ImageFiles(paths, transform), batch_size=batch_size, num_workers=num_workers, shuffle=False)


@torch.no_grad()
def embed_images(encode: Callable[[torch.Tensor], torch.Tensor], paths, transform, batch_size: int = 128,
                 num_workers: int = 0, progress: bool = True, desc: str = "embedding images") -> np.ndarray:
    """``encode(batch) -> (B, D)`` over all ``paths``, as a float32 array in path order."""
    out = []
    for batch in tqdm(_loader(paths, transform, batch_size, num_workers), desc=desc, disable=not progress, leave=False):
        out.append(encode(batch).float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, paths, transform, batch_size: int = 128, num_workers: int = 0,
                          progress: bool = True) -> nn.Module:
    """Replace every batch-norm layer's running statistics by their average over ``paths``."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return module
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over all batches
        m.train()
    for batch in tqdm(_loader(paths, transform, batch_size, num_workers), desc="recalibrating batch norm",
                      disable=not progress, leave=False):
        module(batch)
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)
    return module
