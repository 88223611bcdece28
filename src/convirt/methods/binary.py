"""ConVIRT's Contrastive-Binary-Loss baseline (Zhang et al., MLHC 2022, Sec. 4; adapted there from
Chauhan et al., MICCAI 2020): the same towers and projections as ConVIRT, but instead of contrasting
each pair against the whole batch, an MLP on the concatenated projections ``[g_v(h_v); g_u(h_u)]``
classifies single pairs as true or "fake" with binary cross-entropy.

Fake pairs: each image with the texts of ``binary.negatives`` (default 1, as the paper's one random
text per pair) other studies of the batch, drawn along a random cycle (:func:`cyclic_negatives`), so
true and fake pairs are 1 : k. A fake pair whose text is token-identical to the image's own text
(the same sentence, e.g. "No pneumothorax.") is a true pair in content and is left out of the loss.
Validation uses a fixed shift instead of a random cycle, so that its loss is comparable across checks.
Under DDP the fake pairs come from the device's own slice of the batch.
"""

from __future__ import annotations

import torch

from convirt.config import PretrainConfig
from convirt.losses.binary import binary_matching_loss, cyclic_negatives, shifted_negatives
from convirt.methods.base import PretrainMethod
from convirt.models.dual_encoder import DualEncoder
from convirt.models.heads import PairClassifier


class ContrastiveBinary(PretrainMethod):
    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg)
        self.model = model
        self.classifier = PairClassifier(cfg.projection.dim, cfg.binary.hidden_dim)
        self.negatives = cfg.binary.negatives
        if cfg.trainer.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        v = self.model.image_embedding(self._images(batch))
        ids = batch["input_ids"]
        u = self.model.text_embedding(ids, batch["attention_mask"])
        n = v.shape[0]
        # drawn on the CPU from the global RNG, whose state the checkpoints keep: resuming stays exact
        index = cyclic_negatives(n, self.negatives) if self.training else shifted_negatives(n, self.negatives)
        index = index.to(v.device)
        same_text = (ids[index] == ids[:, None]).all(dim=-1)  # (n, k)
        pos = self.classifier(v, u)
        neg = self.classifier(v[:, None].expand(-1, self.negatives, -1), u[index])
        return binary_matching_loss(pos, neg, ~same_text)
