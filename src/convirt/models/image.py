"""Image encoder f_v: any timm backbone, exposing a global vector and local (spatial) features.

ConVIRT uses ResNet-50 initialised from ImageNet (Sec. 3). Radiographs are grayscale: by default
the first convolution takes one channel (``in_chans=1``; timm folds pretrained RGB filters into it);
``grayscale="repeat"`` keeps three channels and repeats the gray channel instead.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from convirt.errors import ConfigError


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None, in_chans: int = 1) -> nn.Module:
    """A timm model without classifier. ``weights`` is a local file (safetensors/pth) in timm format."""
    kwargs = dict(num_classes=0, in_chans=in_chans)
    if weights:
        if not Path(weights).is_file():
            raise ConfigError(f"image.weights: file not found: {weights}")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err) or "Unknown model" in repr(err):
            raise ConfigError(f"image.model: timm has no model named {name!r} (see timm.list_models())") from err
        if pretrained:
            raise ConfigError(
                f"image.model: could not load pretrained weights for {name!r} ({err}). Offline? "
                "Set image.pretrained: false, or image.weights: /path/to/weights.safetensors"
            ) from err
        raise
    except (OSError, ValueError) as err:
        if pretrained:
            raise ConfigError(
                f"image.model: could not load pretrained weights for {name!r} ({type(err).__name__}: {err}). "
                "Offline? Set image.pretrained: false, or image.weights: /path/to/weights.safetensors"
            ) from err
        raise


class ImageEncoder(nn.Module):
    """timm backbone -> (global vector h_v, local features).

    Local features are the last feature map ``(B, C, H, W)`` for CNNs or the token sequence
    ``(B, N, C)`` for transformers; later methods (GLoRIA, localized tasks) attend over them.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        grayscale: str = "in_chans",
    ) -> None:
        super().__init__()
        if grayscale not in ("in_chans", "repeat"):
            raise ConfigError(f"image.grayscale must be 'in_chans' or 'repeat'; got {grayscale!r}")
        self.name, self.grayscale = name, grayscale
        self.in_chans = 1 if grayscale == "in_chans" else 3
        self.backbone = create_backbone(name, pretrained, weights, self.in_chans)
        self.num_features: int = self.backbone.num_features

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_chans == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global ``(B, C)``, local features) in one pass."""
        local = self.backbone.forward_features(self._prepare(images))
        return self.backbone.forward_head(local, pre_logits=True), local

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)[0]
