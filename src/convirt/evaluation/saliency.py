"""Grad-CAM saliency maps of an image classifier (e.g. image encoder + linear head), via captum.

Grad-CAM (Selvaraju et al. 2017): weight each channel of a layer's feature map by the spatial mean
of the target logit's gradient, sum over channels, keep the positive part (ReLU), upsample
bilinearly to the input size. Here each map is then divided by its own maximum, so maps are in
[0, 1] and show *where* the evidence is within an image; their magnitudes are not comparable
across images. An all-zero map means no positive evidence for the class at that layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from convirt.errors import ConfigError, DataError


def _timm_models(model: nn.Module):
    """timm models inside ``model`` (outermost first): they list their feature stages in ``feature_info``."""
    for m in model.modules():
        info = getattr(m, "feature_info", None)
        if isinstance(info, list) and info and isinstance(info[-1], dict) and "module" in info[-1]:
            yield m


def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM uses when none is given.

    If ``model`` is or contains a timm model (an :class:`~convirt.models.image.ImageEncoder`'s
    backbone, say), its final feature stage: ``feature_info[-1]["module"]``, i.e. the stage whose
    output ``forward_features`` returns (``layer4`` of a ResNet, ``blocks.6`` of an EfficientNet).
    That is the usual Grad-CAM choice: the most semantic map that still has a spatial layout.
    With several timm models the first one found in ``model.modules()`` order is used. Otherwise,
    the last ``nn.Conv2d`` in registration order; a model without either needs an explicit layer.
    """
    for timm_model in _timm_models(model):
        return timm_model.get_submodule(timm_model.feature_info[-1]["module"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return convs[-1]
    raise ConfigError("grad_cam: the model has no timm backbone and no Conv2d layer; pass layer= explicitly")


def grad_cam(model: nn.Module, images: Any, target_class: int, layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in [0, 1] of ``target_class`` for ``images`` ``(B, C, H, W)``.

    ``model`` maps images to class logits ``(B, n_classes)``. ``layer`` defaults to
    :func:`default_gradcam_layer`; its output must be a ``(B, C, h, w)`` feature map (transformer
    token outputs are not supported). The model runs in eval mode (its previous mode is restored)
    on the device of its parameters; its parameters need not require gradients.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise DataError(f"grad_cam needs a (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError("grad_cam got an empty batch")
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)):
        raise ConfigError(f"target_class must be an integer class index, got {target_class!r}")
    layer = default_gradcam_layer(model) if layer is None else layer
    if not any(m is layer for m in model.modules()):
        raise ConfigError("grad_cam: layer is not a submodule of model")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = x.detach().to(device, torch.float32 if not x.is_floating_point() else x.dtype).clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x[:1])
        if logits.ndim != 2:
            raise DataError(f"grad_cam: the model must return (B, n_classes) logits, got shape {tuple(logits.shape)}")
        if not 0 <= int(target_class) < logits.shape[1]:
            raise ConfigError(f"target_class {target_class} is outside the model's {logits.shape[1]} classes")
        with torch.enable_grad():
            attr = LayerGradCam(model, layer).attribute(x, target=int(target_class), relu_attributions=True)
    finally:
        model.train(was_training)
    if isinstance(attr, tuple):
        attr = attr[0]
    if attr.ndim != 4:
        raise ConfigError(f"grad_cam: the layer's output must be a (B, C, h, w) feature map, got an attribution of "
                          f"shape {tuple(attr.shape)} (transformer tokens need reshaping; pick a conv layer)")
    maps = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    maps = maps.float().cpu().numpy().clip(min=0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1)
    maps = np.divide(maps, peak[:, None, None], out=np.zeros_like(maps), where=peak[:, None, None] > 0)
    return maps.clip(0.0, 1.0)
