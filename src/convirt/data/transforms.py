"""The image transformation family T of ConVIRT and the deterministic evaluation transform.

ConVIRT, Sec. 3 / Appendix ("image transformations"), in this order: random crop of 0.6-1.0 of
the image resized back to 224 px, horizontal flip with p = 0.5, affine transform (rotation in
[-20, 20] degrees, translation up to 0.1 of the size, scale in [0.95, 1.05]), brightness and
contrast jitter with ratios in [0.6, 1.4], Gaussian blur with sigma in [0.1, 3.0]. The defaults of
:class:`ImageAugmentConfig` are these values. All transforms take and return float tensors
``(1, H, W)``; inputs are in [0, 1], outputs normalised by ``(x - mean) / std``. Randomness comes
from torch's global generator, so ``torch.manual_seed`` makes a view reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from convirt.data.images import to_tensor
from convirt.errors import ConfigError

__all__ = ["ImageAugmentConfig", "SeparableGaussianBlur", "build_transforms", "eval_transform", "to_tensor",
           "train_transform"]

Range = tuple[float, float]


@dataclass
class ImageAugmentConfig:
    """Parameters of T (paper defaults) plus the output size and normalisation of both transforms.

    ``blur_kernel=None`` picks the smallest odd kernel covering +-3 sigma of the largest sigma (the
    paper gives no kernel size).
    """

    size: int = 224
    crop_scale: Range = (0.6, 1.0)
    hflip_p: float = 0.5
    rotation: float = 20.0
    translate: float = 0.1
    affine_scale: Range = (0.95, 1.05)
    brightness: Range = (0.6, 1.4)
    contrast: Range = (0.6, 1.4)
    blur_sigma: Range = (0.1, 3.0)
    blur_kernel: int | None = None
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:  # YAML gives lists
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))

    @classmethod
    def from_config(cls, cfg) -> ImageAugmentConfig:
        """From a :class:`convirt.config.PretrainConfig`: ``cfg.image`` size/mean/std, ``cfg.augment`` the rest."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(cfg.augment).items() if k in names}
        return cls(size=cfg.image.size, mean=cfg.image.mean, std=cfg.image.std, **values)

    @property
    def kernel(self) -> int:
        return self.blur_kernel if self.blur_kernel is not None else 2 * math.ceil(3 * self.blur_sigma[1]) + 1

    def validate(self) -> ImageAugmentConfig:
        for name in ("crop_scale", "affine_scale", "brightness", "contrast", "blur_sigma"):
            lo_hi = getattr(self, name)
            _check(isinstance(lo_hi, tuple) and len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], name,
                   "must be [low, high] with 0 <= low <= high", lo_hi)
        _check(self.size >= 16, "size", "must be >= 16", self.size)
        _check(0 < self.crop_scale[0] and self.crop_scale[1] <= 1, "crop_scale", "must lie in (0, 1]", self.crop_scale)
        _check(0 <= self.hflip_p <= 1, "hflip_p", "must lie in [0, 1]", self.hflip_p)
        _check(0 <= self.rotation <= 180, "rotation", "must lie in [0, 180] degrees", self.rotation)
        _check(0 <= self.translate < 1, "translate", "must lie in [0, 1)", self.translate)
        _check(self.affine_scale[0] > 0, "affine_scale", "must be > 0", self.affine_scale)
        _check(self.blur_sigma[0] > 0, "blur_sigma", "must be > 0", self.blur_sigma)
        _check(self.kernel >= 1 and self.kernel % 2 == 1, "blur_kernel", "must be a positive odd integer", self.blur_kernel)
        _check(self.kernel // 2 < self.size, "blur_kernel", f"must be smaller than twice the image size ({self.size})", self.kernel)
        _check(self.std > 0, "std", "must be > 0", self.std)
        return self


def _check(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise ConfigError(f"augment.{key} {rule}; got {value!r}")


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernel, computed by the same operations (so the same values)."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    return torch.softmax(torch.linspace(-lim, lim, steps=size, dtype=dtype).div(sigma).pow(2).neg(), dim=0)


def separable_gaussian_blur(image: torch.Tensor, kernel_size: list[int], sigma: list[float]) -> torch.Tensor:
    """``torchvision.transforms.v2.functional.gaussian_blur`` of a float ``(..., C, H, W)`` tensor, as a
    row pass then a column pass: torchvision's 2-D kernel is the outer product of these two 1-D
    kernels, applied after the same reflect padding, so the result is the same up to float rounding."""
    kx, ky = (_gaussian_kernel1d(k, s, image.dtype) for k, s in zip(kernel_size, sigma))
    shape = image.shape
    x = image.reshape(-1, 1, shape[-2], shape[-1])  # channels are blurred independently
    x = F.pad(x, [kernel_size[0] // 2, kernel_size[0] // 2, kernel_size[1] // 2, kernel_size[1] // 2], mode="reflect")
    x = F.conv2d(F.conv2d(x, kx.view(1, 1, 1, -1)), ky.view(1, 1, -1, 1))
    return x.reshape(shape)


class SeparableGaussianBlur(v2.GaussianBlur):
    """``v2.GaussianBlur`` with the same random sigma (drawn by torchvision's own code, so seeded
    views are unchanged) computed separably: 2k instead of k^2 multiplications per pixel. At the
    paper's sigma up to 3 (k = 19) the blur was 90% of the training transform's time and is ~9x
    faster this way (benchmarks/RESULTS.md); the output matches torchvision's to ~1e-6 (tested).
    Plain float tensors only; other inputs go to torchvision's kernel."""

    def transform(self, inpt, params: dict):
        if type(inpt) is torch.Tensor and inpt.is_floating_point() and inpt.ndim >= 3:
            return separable_gaussian_blur(inpt, list(self.kernel_size), params["sigma"])
        return self._call_kernel(v2.functional.gaussian_blur, inpt, self.kernel_size, **params)

    _transform = transform  # the name torchvision < 0.21 calls


def train_transform(size: int = 224, crop_scale: Range = (0.6, 1.0), hflip_p: float = 0.5, rotation: float = 20.0,
                    translate: float = 0.1, affine_scale: Range = (0.95, 1.05), brightness: Range = (0.6, 1.4),
                    contrast: Range = (0.6, 1.4), blur_sigma: Range = (0.1, 3.0), blur_kernel: int | None = None,
                    mean: float = 0.5, std: float = 0.5) -> v2.Compose:
    """One random view t_v ~ T of a ``(1, H, W)`` image in [0, 1] (paper defaults, paper order)."""
    c = ImageAugmentConfig(size, crop_scale, hflip_p, rotation, translate, affine_scale, brightness, contrast,
                           blur_sigma, blur_kernel, mean, std).validate()
    return v2.Compose([
        v2.RandomResizedCrop(c.size, scale=c.crop_scale, antialias=True),
        v2.RandomHorizontalFlip(c.hflip_p),
        v2.RandomAffine(c.rotation, translate=(c.translate, c.translate), scale=c.affine_scale,
                        interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=c.brightness, contrast=c.contrast),
        SeparableGaussianBlur(c.kernel, sigma=c.blur_sigma),
        v2.Normalize([c.mean], [c.std]),
    ])


def eval_transform(size: int = 224, mean: float = 0.5, std: float = 0.5) -> v2.Compose:
    """Deterministic: resize the shorter side to ``size``, centre crop ``size x size``, normalise."""
    ImageAugmentConfig(size=size, mean=mean, std=std).validate()
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.Normalize([mean], [std])])


def build_transforms(cfg, train: bool) -> v2.Compose:
    """The training or evaluation transform of an :class:`ImageAugmentConfig` or a ``PretrainConfig``."""
    if not isinstance(cfg, ImageAugmentConfig):
        cfg = ImageAugmentConfig.from_config(cfg)
    if train:
        return train_transform(**dataclasses.asdict(cfg))
    return eval_transform(cfg.size, cfg.mean, cfg.std)
