from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.transforms import v2

from convirt.config import PretrainConfig
from convirt.data.transforms import (ImageAugmentConfig, SeparableGaussianBlur, build_transforms, eval_transform,
                                     train_transform)
from convirt.errors import ConfigError

# ConVIRT, Appendix (image transformations), written out independently of the code under test
PAPER = dict(size=224, crop_scale=(0.6, 1.0), hflip_p=0.5, rotation=20.0, translate=0.1, affine_scale=(0.95, 1.05),
             brightness=(0.6, 1.4), contrast=(0.6, 1.4), blur_sigma=(0.1, 3.0), mean=0.5, std=0.5)


def test_config_defaults_are_the_papers():
    cfg = ImageAugmentConfig()
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER
    assert cfg.kernel == 19  # odd, covers +-3 sigma at sigma = 3


def _check_reaches_torchvision(t: v2.Compose, p: dict, kernel: int) -> None:
    crop, flip, affine, jitter, blur, norm = t.transforms
    assert [type(x) for x in t.transforms] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomAffine,
                                               v2.ColorJitter, SeparableGaussianBlur, v2.Normalize]  # the paper's order
    assert isinstance(blur, v2.GaussianBlur)  # torchvision's transform, computed separably
    assert list(crop.size) == [p["size"], p["size"]] and tuple(crop.scale) == p["crop_scale"]
    assert flip.p == p["hflip_p"]
    assert list(affine.degrees) == [-p["rotation"], p["rotation"]]
    assert tuple(affine.translate) == (p["translate"], p["translate"]) and tuple(affine.scale) == p["affine_scale"]
    assert affine.interpolation == v2.InterpolationMode.BILINEAR
    assert tuple(jitter.brightness) == p["brightness"] and tuple(jitter.contrast) == p["contrast"]
    assert jitter.saturation is None and jitter.hue is None
    assert list(blur.sigma) == list(p["blur_sigma"]) and list(blur.kernel_size) == [kernel, kernel]
    assert norm.mean == [p["mean"]] and norm.std == [p["std"]]


def test_paper_parameters_reach_torchvision():
    _check_reaches_torchvision(train_transform(), PAPER, 19)
    _check_reaches_torchvision(build_transforms(ImageAugmentConfig(), train=True), PAPER, 19)
    _check_reaches_torchvision(build_transforms(PretrainConfig(), train=True), PAPER, 19)


def test_custom_parameters_reach_torchvision():
    custom = dict(size=64, crop_scale=(0.5, 0.9), hflip_p=0.0, rotation=5.0, translate=0.2, affine_scale=(0.9, 1.1),
                  brightness=(0.8, 1.2), contrast=(0.7, 1.3), blur_sigma=(0.2, 1.0), mean=0.4, std=0.3)
    _check_reaches_torchvision(train_transform(**custom, blur_kernel=5), custom, 5)
    _check_reaches_torchvision(build_transforms(ImageAugmentConfig(**custom), train=True), custom, 2 * 3 + 1)


def test_yaml_lists_from_pretrain_config():
    cfg = PretrainConfig()
    cfg.image.size, cfg.augment.crop_scale = 96, [0.7, 1.0]
    aug = ImageAugmentConfig.from_config(cfg)
    assert aug.size == 96 and aug.crop_scale == (0.7, 1.0) and aug.mean == cfg.image.mean


def test_output_shape_dtype_and_range():
    image = torch.rand(1, 300, 260)
    out = train_transform(size=128)(image)
    assert out.shape == (1, 128, 128) and out.dtype == torch.float32
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6  # [0, 1] normalised with mean = std = 0.5


def test_eval_transform_is_resize_centre_crop_normalise():
    image = torch.zeros(1, 100, 200)
    image[:, :, 40:160] = 1.0  # shorter side 100 -> 50: the band becomes columns 20..80 of 100
    out = eval_transform(size=50)(image)
    assert out.shape == (1, 50, 50)
    assert torch.allclose(out, torch.ones(1, 50, 50), atol=1e-5)  # centre columns 25..75 are all band: (1 - 0.5) / 0.5
    assert torch.equal(eval_transform(size=50)(image), out)
    image[:, :, 40:60] = 0.0  # now the crop's left edge region is dark
    assert out[0, :, 10:].mean() > 0.99 and eval_transform(size=50)(image)[0, :, :3].max() < -0.99
    assert [type(t) for t in build_transforms(PretrainConfig(), train=False).transforms] == [v2.Resize, v2.CenterCrop, v2.Normalize]


def test_deterministic_under_manual_seed():
    image, t = torch.rand(1, 160, 140), train_transform(size=64)
    torch.manual_seed(3)
    a = t(image)
    torch.manual_seed(3)
    b = t(image)
    torch.manual_seed(4)
    c = t(image)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("field, value, match", [
    ("crop_scale", (0.0, 1.0), "augment.crop_scale must lie in"),
    ("crop_scale", (0.6, 1.2), "augment.crop_scale must lie in"),
    ("crop_scale", (0.9, 0.6), "augment.crop_scale must be"),
    ("hflip_p", 1.5, "augment.hflip_p"),
    ("rotation", -1.0, "augment.rotation"),
    ("translate", 1.0, "augment.translate"),
    ("affine_scale", (0.0, 1.0), "augment.affine_scale must be > 0"),
    ("brightness", (1.4, 0.6), "augment.brightness"),
    ("blur_sigma", (0.0, 3.0), "augment.blur_sigma must be > 0"),
    ("blur_kernel", 4, "augment.blur_kernel must be a positive odd"),
    ("std", 0.0, "augment.std"),
    ("size", 8, "augment.size"),
])
def test_validation_errors(field, value, match):
    cfg = dataclasses.replace(ImageAugmentConfig(), **{field: value})
    with pytest.raises(ConfigError, match=match):
        cfg.validate()
    with pytest.raises(ConfigError, match=match):
        build_transforms(cfg, train=True)


@pytest.mark.parametrize("shape, kernel, sigma", [((1, 224, 224), 19, (0.1, 3.0)), ((3, 40, 57), 7, (0.5, 2.0)),
                                                  ((2, 1, 33, 30), 5, (1.0, 1.0))])
def test_separable_blur_is_torchvisions_blur(shape, kernel, sigma):
    """Same sigma draw (the generator ends in the same state) and the same output to float rounding."""
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    want, after_want = v2.GaussianBlur(kernel, sigma)(image), torch.rand(3)
    torch.manual_seed(0)
    got, after_got = SeparableGaussianBlur(kernel, sigma)(image), torch.rand(3)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    assert torch.equal(after_got, after_want)


def test_separable_blur_leaves_other_inputs_to_torchvision():
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.randint(0, 256, (1, 20, 20), dtype=torch.uint8))
    torch.manual_seed(0)
    want = v2.GaussianBlur(5, (0.5, 1.5))(image)
    torch.manual_seed(0)
    got = SeparableGaussianBlur(5, (0.5, 1.5))(image)
    assert type(got) is type(want) and torch.equal(got, want)


def test_training_views_match_the_torchvision_composition():
    """The whole training transform gives the views torchvision's own GaussianBlur would give."""
    t = train_transform()
    reference = v2.Compose([*t.transforms[:4], v2.GaussianBlur(19, sigma=(0.1, 3.0)), t.transforms[5]])
    image = torch.rand(1, 300, 260, generator=torch.Generator().manual_seed(2))
    for seed in range(3):
        torch.manual_seed(seed)
        got = t(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(got, reference(image), rtol=0, atol=1e-5)


def _smooth_image(height: int = 256, width: int = 300) -> torch.Tensor:
    """Two blobs on a ramp: every crop, flip and rotation of it looks different."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    img = 0.5 + 0.3 * torch.exp(-((xx - 0.3) ** 2 + (yy + 0.2) ** 2) / 0.1) \
        - 0.2 * torch.exp(-((xx + 0.4) ** 2 + (yy - 0.3) ** 2) / 0.05) + 0.1 * xx
    return img[None].clamp(0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_fused_transform_draws_the_same_views_as_the_composition(seed):
    """Same seed -> same crop, flip, affine, jitter and blur: the views agree up to interpolation,
    except in the one-pixel band along the rotated frame's edge."""
    from convirt.data.transforms import FusedTrainTransform

    image = _smooth_image()
    reference, fused = train_transform(), train_transform(fused=True)
    assert isinstance(fused, FusedTrainTransform)
    torch.manual_seed(seed)
    want = reference(image)
    torch.manual_seed(seed)
    got = fused(image)
    assert got.shape == want.shape == (1, 224, 224)
    diff = (got - want).abs()
    assert diff.mean() < 0.005
    assert (diff > 0.05).float().mean() < 0.01  # the frame-edge band: at most ~2 px of 224 per side
    assert torch.rand(1).item() == pytest.approx(_next_draw_after(reference, image, seed))  # same number of draws


def _next_draw_after(transform, image, seed: int) -> float:
    torch.manual_seed(seed)
    transform(image)
    return torch.rand(1).item()


def test_fused_transform_antialiases_a_large_source_like_torchvision():
    """A 1-px checkerboard shrunk ~3x: torchvision's antialiased resize averages it to grey; sampling
    it bilinearly without the prefilter would alias into a pattern."""
    board = ((torch.arange(900)[:, None] + torch.arange(900)[None, :]) % 2).float()[None]
    reference, fused = train_transform(blur_sigma=(0.1, 0.1)), train_transform(blur_sigma=(0.1, 0.1), fused=True)
    for seed in range(3):
        torch.manual_seed(seed)
        want = reference(board)
        torch.manual_seed(seed)
        got = fused(board)
        inner = (slice(None), slice(40, -40), slice(40, -40))  # inside the frame whatever the affine
        assert got[inner].std() <= want[inner].std() + 0.05
        assert (got[inner].mean() - want[inner].mean()).abs() < 0.05


def test_fused_transform_is_a_config_switch_and_refuses_integer_images():
    from convirt.config import load_config
    from convirt.data.transforms import FusedTrainTransform

    cfg = load_config("paper", ["augment.fused=true"])
    assert isinstance(build_transforms(cfg, train=True), FusedTrainTransform)
    assert not isinstance(build_transforms(load_config("paper"), train=True), FusedTrainTransform)
    with pytest.raises(TypeError, match="float"):
        train_transform(fused=True)(torch.zeros(1, 64, 64, dtype=torch.uint8))
