"""What the image-only baselines share (SimCLR, MoCo v2): no text tower, two augmented views per
image drawn from ConVIRT's transformation family T, and a projection head g from ``ssl.*``.

ConVIRT compares its initialisation with these methods pretrained on the same images (Zhang et
al., MLHC 2022, Table 1); the encoder, data, augmentation and loop are shared so that only the
objective differs.
"""

from __future__ import annotations

import torch

from convirt.config import PretrainConfig, ProjectionConfig
from convirt.methods.base import PretrainMethod
from convirt.models.dual_encoder import DualEncoder


class ImageOnlyMethod(PretrainMethod):
    needs_text = False
    views = 2
    paper_temperature: float = 0.1  # each method sets its paper's value; ssl.temperature overrides it

    def __init__(self, cfg: PretrainConfig, model: DualEncoder) -> None:
        super().__init__(cfg)
        self.model = model
        self.temperature = cfg.ssl.temperature if cfg.ssl.temperature is not None else self.paper_temperature
        if cfg.trainer.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)

    @staticmethod
    def projection_config(cfg: PretrainConfig) -> ProjectionConfig:
        """g from ``ssl.*`` (``projection.*`` is ConVIRT's); saved with the model so it reloads."""
        s = cfg.ssl
        return ProjectionConfig(dim=s.proj_dim, hidden_dim=s.proj_hidden, batchnorm=s.proj_batchnorm)

    @classmethod
    def build_model(cls, cfg: PretrainConfig) -> DualEncoder:
        return DualEncoder.build_image_only(cfg.image, cls.projection_config(cfg))

    def _view(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.trainer.channels_last else images
