"""GLoRIA (Huang et al., "GLoRIA: A Multimodal Global-Local Representation Learning Framework for
Label-efficient Medical Image Recognition", ICCV 2021): ConVIRT's global image-report contrast plus
a local one, in which every word of the report attends over the image's sub-regions and the
word-context agreement is contrasted at the report level (:mod:`convirt.losses.local`).

Same towers, heads, data and global loss code as ConVIRT (the global term *is* ConVIRT's loss, with
GLoRIA's symmetric weighting ``loss.image_weight: 0.5`` and whole reports, ``text.sampling: report``,
set by ``METHOD_DEFAULTS``). Deviations from GLoRIA: ConVIRT's MLP projection heads and max-pooled
text vector for the global term (GLoRIA: a linear head and the mean of the token vectors).

The local loss is computed over each device's own batch (no cross-device gather: the word and region
tensors are large and of varying length); the global loss still sees the global batch.
"""

from __future__ import annotations

import torch

from convirt.config import PretrainConfig
from convirt.losses.local import local_contrastive_loss
from convirt.methods.convirt import ConVIRT
from convirt.models.dual_encoder import DualEncoder


class GLoRIA(ConVIRT):
    local_features = True

    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg, model)
        self.g = cfg.gloria

    def compute_loss(self, batch: dict) -> torch.Tensor:
        losses = self.losses(batch)
        self._last_parts = losses
        return self.g.global_weight * losses["global"] + self.g.local_weight * losses["local"]

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.model
        h_v, regions = m.local_features(self._images(batch))
        h_u, words, word_mask = m.word_features(batch["input_ids"], batch["attention_mask"])
        global_loss = self.loss(m.image_head(h_v), m.text_head(h_u))
        regions = regions.flatten(2).transpose(1, 2)  # (B, h*w, D)
        local_loss = local_contrastive_loss(regions, words, word_mask, self.g.attention_scale, self.g.word_scale,
                                            self.g.report_scale)
        return {"global": global_loss, "local": local_loss}

    def training_step(self, batch: dict, batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        parts, bs = getattr(self, "_last_parts", None), batch["images"].shape[0]
        if parts is not None and loss is not None:
            self.log("train/loss_global", parts["global"].detach(), batch_size=bs)
            self.log("train/loss_local", parts["local"].detach(), batch_size=bs)
        return loss
