"""Image encoder f_v: any timm backbone, exposing a global vector and local (spatial) features.

ConVIRT uses ResNet-50 initialised from ImageNet (Sec. 3). Radiographs are grayscale: by default
the first convolution takes one channel (``in_chans=1``; timm folds pretrained RGB filters into it);
``grayscale="repeat"`` keeps three channels and repeats the gray channel instead.

``pool="attention"`` replaces global average pooling by CLIP's attention pooling (Radford et al.,
ICML 2021, Sec. 2.4): part of the encoder, so probes, retrieval and saved models all use it.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
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


POOLS = ("avg", "attention")


class AttentionPool(nn.Module):
    """CLIP's ``AttentionPool2d``: one query, the mean feature plus its positional embedding, attends
    with multi-head attention over the mean and every spatial position (each with a learned
    positional embedding); an output projection keeps the width. CLIP's ResNets use it instead of
    average pooling so that the image embedding can weight regions. Init as CLIP's: positional
    embeddings and projections N(0, 1/dim). ``grid`` is the feature map size the embeddings are
    learned for; other sizes are served by bicubic interpolation (as CLIP does for new resolutions).
    """

    def __init__(self, dim: int, grid: tuple[int, int], heads: int) -> None:
        super().__init__()
        self.dim, self.grid, self.heads = dim, (int(grid[0]), int(grid[1])), heads
        self.positional_embedding = nn.Parameter(torch.randn(self.grid[0] * self.grid[1] + 1, dim) / dim**0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        nn.init.normal_(self.attn.in_proj_weight, std=dim**-0.5)
        nn.init.normal_(self.attn.out_proj.weight, std=dim**-0.5)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.grid:
            return self.positional_embedding
        first, spatial = self.positional_embedding[:1], self.positional_embedding[1:]
        spatial = spatial.reshape(1, *self.grid, self.dim).permute(0, 3, 1, 2)
        spatial = F.interpolate(spatial, size=tuple(grid), mode="bicubic", align_corners=False)
        return torch.cat([first, spatial.permute(0, 2, 3, 1).reshape(-1, self.dim)])

    def forward(self, local: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` feature map, or ``(B, N, C)`` tokens (a grid of N x 1) -> ``(B, C)``."""
        if local.ndim == 4:
            grid, tokens = tuple(local.shape[-2:]), local.flatten(2).transpose(1, 2)
        else:
            grid, tokens = (local.shape[1], 1), local
        x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        x = x + self.positions(grid).to(x.dtype)
        out, _ = self.attn(x[:, :1], x, x, need_weights=False)
        return out[:, 0]


def default_pool_heads(dim: int) -> int:
    """CLIP's head width is 64 (ResNet-50: 2048 / 64 = 32 heads)."""
    return dim // 64 if dim % 64 == 0 else 1


class ImageEncoder(nn.Module):
    """timm backbone -> (global vector h_v, local features).

    Local features are the last feature map ``(B, C, H, W)`` for CNNs or the token sequence
    ``(B, N, C)`` for transformers; later methods (GLoRIA, localized tasks) attend over them.
    The global vector is timm's own pooling (``pool="avg"``) or :class:`AttentionPool`
    (``pool="attention"``, sized for ``size`` px input).
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        grayscale: str = "in_chans",
        pool: str = "avg",
        pool_heads: int | None = None,
        size: int = 224,
    ) -> None:
        super().__init__()
        if grayscale not in ("in_chans", "repeat"):
            raise ConfigError(f"image.grayscale must be 'in_chans' or 'repeat'; got {grayscale!r}")
        if pool not in POOLS:
            raise ConfigError(f"image.pool must be one of {', '.join(POOLS)}; got {pool!r}")
        self.name, self.grayscale, self.pool = name, grayscale, pool
        self.in_chans = 1 if grayscale == "in_chans" else 3
        self.backbone = create_backbone(name, pretrained, weights, self.in_chans)
        self.num_features: int = self.backbone.num_features
        self.attn_pool: AttentionPool | None = None
        if pool == "attention":
            heads = pool_heads or default_pool_heads(self.num_features)
            if self.num_features % heads:
                raise ConfigError(f"image.pool_heads must divide the feature width of {name} ({self.num_features}); got {heads}")
            self.attn_pool = AttentionPool(self.num_features, self._grid(size), heads)

    @classmethod
    def from_config(cls, cfg, pretrained: bool | None = None) -> ImageEncoder:
        """From an :class:`~convirt.config.ImageConfig` (``pretrained`` overrides its flag)."""
        pretrained = cfg.pretrained if pretrained is None else pretrained
        return cls(cfg.model, pretrained, cfg.weights if pretrained else None, cfg.grayscale, cfg.pool, cfg.pool_heads, cfg.size)

    @torch.no_grad()
    def _grid(self, size: int) -> tuple[int, int]:
        """Shape of the local features for ``size`` px input (one eval-mode pass: no statistics change)."""
        was_training = self.backbone.training
        self.backbone.eval()
        local = self._local(torch.zeros(1, self.in_chans, size, size))
        self.backbone.train(was_training)
        return tuple(local.shape[-2:]) if local.ndim == 4 else (local.shape[1], 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's activations in backward instead of keeping them (timm's stage-wise
        checkpointing): less memory for large batches, about one more forward pass of time."""
        self.backbone.set_grad_checkpointing(enable)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_chans == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images

    def _local(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self._prepare(images))

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global ``(B, C)``, local features) in one pass."""
        local = self._local(images)
        if self.attn_pool is not None:
            tokens = local if local.ndim == 4 else local[:, getattr(self.backbone, "num_prefix_tokens", 0):]
            return self.attn_pool(tokens), local
        return self.backbone.forward_head(local, pre_logits=True), local

    def stage_index(self, stage: int) -> int:
        """A feature stage by position in timm's ``feature_info`` (negative counts from the end)."""
        n = len(self.backbone.feature_info)
        if not -n <= stage < n:
            raise ConfigError(f"{self.name} has {n} feature stages; stage {stage} does not exist (use -{n}..{n - 1})")
        return stage % n

    def stage_channels(self, stage: int) -> int:
        return int(self.backbone.feature_info[self.stage_index(stage)]["num_chs"])

    def forward_with_stage(self, images: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(global ``(B, C)``, the feature map of ``stage`` ``(B, C_s, h, w)``) in one pass (GLoRIA's
        sub-region features come from an intermediate stage: ResNet ``layer3``)."""
        final, (feature_map,) = self.backbone.forward_intermediates(
            self._prepare(images), indices=[self.stage_index(stage)], intermediates_only=False)
        if self.attn_pool is not None:
            tokens = final if final.ndim == 4 else final[:, getattr(self.backbone, "num_prefix_tokens", 0):]
            return self.attn_pool(tokens), feature_map
        return self.backbone.forward_head(final, pre_logits=True), feature_map

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)[0]
