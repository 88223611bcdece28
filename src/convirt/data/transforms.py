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
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from convirt.data.images import to_tensor
from convirt.errors import ConfigError

__all__ = ["FusedTrainTransform", "ImageAugmentConfig", "SeparableGaussianBlur", "build_transforms", "eval_transform",
           "to_tensor", "train_transform"]

Range = tuple[float, float]


@dataclass
class ImageAugmentConfig:
    """Parameters of T (paper defaults) plus the output size and normalisation of both transforms.

    ``blur_kernel=None`` picks the smallest odd kernel covering +-3 sigma of the largest sigma (the
    paper gives no kernel size). ``fused`` computes the same views with crop, flip and affine as one
    resampling (:class:`FusedTrainTransform`; not the default: torchvision's composition is the reference).
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
    fused: bool = False

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
                    mean: float = 0.5, std: float = 0.5, fused: bool = False) -> v2.Compose | FusedTrainTransform:
    """One random view t_v ~ T of a ``(1, H, W)`` image in [0, 1] (paper defaults, paper order)."""
    c = ImageAugmentConfig(size, crop_scale, hflip_p, rotation, translate, affine_scale, brightness, contrast,
                           blur_sigma, blur_kernel, mean, std, fused).validate()
    if c.fused:
        return FusedTrainTransform(c)
    return v2.Compose([
        v2.RandomResizedCrop(c.size, scale=c.crop_scale, antialias=True),
        v2.RandomHorizontalFlip(c.hflip_p),
        v2.RandomAffine(c.rotation, translate=(c.translate, c.translate), scale=c.affine_scale,
                        interpolation=v2.InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=c.brightness, contrast=c.contrast),
        SeparableGaussianBlur(c.kernel, sigma=c.blur_sigma),
        v2.Normalize([c.mean], [c.std]),
    ])


class FusedTrainTransform(nn.Module):
    """T with the random resized crop, the flip and the affine transform done as one resampling.

    torchvision resamples twice (crop -> resize, then affine) and its affine kernel interpolates an
    extra mask channel; here the three maps are composed into one grid and the source is sampled
    once (``grid_sample``, bilinear). Every random parameter is drawn by the torchvision transforms'
    own ``make_params`` in the composition's order, so a seeded view has the same crop, flip,
    angle, shift, scale, jitter and blur as :func:`train_transform`'s; the pixels differ only by
    interpolation (one bilinear pass instead of two) and in a one-pixel band along the rotated
    frame's edge (tested). A crop that shrinks by more than 1.25x is first resized with
    antialiasing, as torchvision's resize would filter it, so large source images do not alias.
    From a 256 px cache it is 1.2-1.6x faster than the composition (benchmarks/RESULTS.md).
    """

    PREFILTER = 1.25  # shrink factor above which the source is antialiased before sampling

    def __init__(self, c: ImageAugmentConfig) -> None:
        super().__init__()
        self.c = c
        self.crop = v2.RandomResizedCrop(c.size, scale=c.crop_scale, antialias=True)
        self.affine = v2.RandomAffine(c.rotation, translate=(c.translate, c.translate), scale=c.affine_scale)
        self.jitter = v2.ColorJitter(brightness=c.brightness, contrast=c.contrast)
        self.blur = SeparableGaussianBlur(c.kernel, sigma=c.blur_sigma)
        centres = torch.arange(c.size, dtype=torch.float32) - (c.size - 1) / 2  # output pixel centres, centred
        self.register_buffer("_centres", centres, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point() or image.ndim != 3:
            raise TypeError(f"FusedTrainTransform takes a float (C, H, W) image in [0, 1]; got {image.dtype} {tuple(image.shape)}")
        c, size = self.c, self.c.size
        crop = self.crop.make_params([image])
        flip = bool(torch.rand(1) < c.hflip_p)  # v2.RandomHorizontalFlip's draw
        affine = self.affine.make_params([torch.empty(1, size, size)])
        jitter = self.jitter.make_params([image])
        blur = self.blur.make_params([image])

        height, width = image.shape[-2:]
        top, left, h, w = crop["top"], crop["left"], crop["height"], crop["width"]
        shrink = max(h, w) / size
        if shrink > self.PREFILTER:  # antialias the crop once, so that it is sampled at about its own scale
            # only the crop and a 1-px margin can reach the output (beyond it lies the affine's fill)
            y0, x0, y1, x1 = max(0, top - 1), max(0, left - 1), min(height, top + h + 1), min(width, left + w + 1)
            new_h, new_w = max(1, round((y1 - y0) / shrink)), max(1, round((x1 - x0) / shrink))
            fy, fx = new_h / (y1 - y0), new_w / (x1 - x0)
            image = TF.resize(image[..., y0:y1, x0:x1], [new_h, new_w], antialias=True)
            height, width, top, left, h, w = new_h, new_w, (top - y0) * fy, (left - x0) * fx, h * fy, w * fx
        # output pixel (centred coords) -> inverse affine -> crop-and-resize frame (centred) -> source
        m = TF._geometry._get_inverse_affine_matrix([0.0, 0.0], affine["angle"], [float(t) for t in affine["translate"]],
                                                     affine["scale"], list(affine["shear"]))
        u, v = self._centres.view(1, -1), self._centres.view(-1, 1)
        x = m[0] * u + m[1] * v + m[2]
        y = m[3] * u + m[4] * v + m[5]
        inside = ((size / 2 + 0.5 - x.abs()).clamp(0, 1) * (size / 2 + 0.5 - y.abs()).clamp(0, 1))  # affine's fill 0
        if flip:
            x = -x
        gx = (left + (x + size / 2) * (w / size)) * (2 / width) - 1
        gy = (top + (y + size / 2) * (h / size)) * (2 / height) - 1
        grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).to(image.dtype)
        out = F.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        out = out * inside
        for fn in jitter["fn_idx"].tolist():  # ColorJitter's own order and kernels
            if fn == 0 and jitter["brightness_factor"] is not None:
                out = TF.adjust_brightness(out, jitter["brightness_factor"])
            elif fn == 1 and jitter["contrast_factor"] is not None:
                out = TF.adjust_contrast(out, jitter["contrast_factor"])
        out = self.blur.transform(out, blur)
        return TF.normalize(out, [c.mean], [c.std])


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
