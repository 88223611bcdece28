"""CLIP (Radford et al., ICML 2021), ConVIRT's successor, in ConVIRT's setting: the same towers,
heads, data and loss code, with CLIP's two changes on top (``METHOD_DEFAULTS`` in config.py sets them):

* attention pooling of the image features (``image.pool: attention``, :class:`AttentionPool`),
  part of the image encoder, hence of every saved model and evaluation;
* a learnable temperature (``loss.learn_temperature``) from CLIP's 0.07 (logit scale 1/0.07),
  kept >= 0.01 (logit scale <= 100) as CLIP does, and CLIP's symmetric loss (``loss.image_weight: 0.5``).

Kept from ConVIRT (deviations from CLIP): the pretrained ClinicalBERT tower with max pooling and
ConVIRT's nonlinear projection heads instead of CLIP's linear ones; batch 32 instead of 32,768.
The contrastive loss gathers embeddings across devices with gradients, as for ConVIRT.
"""

from __future__ import annotations

import logging
import math

import torch

from convirt.config import PretrainConfig
from convirt.methods.convirt import ConVIRT
from convirt.models.dual_encoder import DualEncoder

log = logging.getLogger(__name__)

MIN_TEMPERATURE = 0.01  # CLIP: logit scale clamped at 100


class CLIP(ConVIRT):
    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg, model)
        if model.image_cfg.pool != "attention" or not cfg.loss.learn_temperature:
            log.warning("method clip with image.pool: %s and loss.learn_temperature: %s is not CLIP's setting "
                        "(attention, true)", model.image_cfg.pool, cfg.loss.learn_temperature)

    def training_step(self, batch: dict, batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        tau = self.loss.temperature
        self.log("train/temperature", float(tau.detach()) if torch.is_tensor(tau) else tau, batch_size=batch["images"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """CLIP clamps the parameter itself (logit scale <= 100), not only its use in the loss: a
        value pushed past the bound would otherwise get no gradient to come back."""
        if self.cfg.loss.learn_temperature:
            with torch.no_grad():
                self.loss.log_temperature.clamp_(min=math.log(MIN_TEMPERATURE))
