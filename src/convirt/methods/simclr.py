"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020) on ConVIRT's images, as its image-only baseline.

Two views of each image from T, one encoder f, a 2-layer ReLU MLP g to 128-d (Sec. 2.1), NT-Xent
over the 2N views (2N - 2 negatives per anchor) gathered across ranks with gradients. Both views go
through the encoder in one batch, and on GPUs batch norm is synchronised across devices ("global
BN", Sec. 2.2): per-device statistics would let positives recognise each other.
"""

from __future__ import annotations

import torch

from convirt.config import PretrainConfig
from convirt.losses.ssl import SIMCLR_TEMPERATURE, NTXentLoss
from convirt.methods.image_only import ImageOnlyMethod
from convirt.models.dual_encoder import DualEncoder


class SimCLR(ImageOnlyMethod):
    paper_temperature = SIMCLR_TEMPERATURE
    global_batchnorm = True

    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg, model)
        self.loss = NTXentLoss(self.temperature)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        views = self._view(torch.cat([batch["images"], batch["images2"]]))
        z1, z2 = self.model.image_embedding(views).chunk(2)
        return self.loss(z1, z2)
