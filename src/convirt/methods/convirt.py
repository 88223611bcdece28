"""ConVIRT pretraining (Zhang et al., MLHC 2022): image and text towers, projection heads, and the
bidirectional contrastive loss between an augmented view and one sampled sentence (Fig. 2)."""

from __future__ import annotations

import torch

from convirt.config import PretrainConfig
from convirt.losses import ContrastiveLoss
from convirt.methods.base import PretrainMethod
from convirt.models.dual_encoder import DualEncoder


class ConVIRT(PretrainMethod):
    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg)
        self.model = model
        self.loss = ContrastiveLoss(cfg.loss.temperature, cfg.loss.image_weight, cfg.loss.learn_temperature)
        if cfg.trainer.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        v = self.model.image_embedding(self._images(batch))
        u = self.model.text_embedding(batch["input_ids"], batch["attention_mask"])
        return self.loss(v, u)
