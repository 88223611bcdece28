import numpy as np
import pytest
import torch
from torch import nn

from convirt.errors import ConfigError, DataError
from convirt.evaluation.saliency import default_gradcam_layer, grad_cam
from convirt.models.image import ImageEncoder

H = W = 16


class RegionNet(nn.Module):
    """Class 1 depends only on the top-right quadrant, class 0 only on the rest (constructed weights).

    The input is split into "inside" and "outside" channels by a fixed mask; a stride-2 conv averages
    2x2 blocks (so the feature map is 8x8 and Grad-CAM must upsample); class 1 reads the inside
    channel, class 0 the outside one, through global average pooling. The quadrant is not symmetric
    under a transpose, so a map with swapped axes would fail the tests.
    """

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, H, W)
        mask[..., : H // 2, W // 2 :] = 1
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(2, 2, kernel_size=2, stride=2, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 0.25
            self.conv.weight[1, 1] = 0.25
            self.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x):
        z = torch.cat([x * self.mask, x * (1 - self.mask)], dim=1)
        return self.head(self.act(self.conv(z)).mean(dim=(2, 3)))


def _images(seed=0, b=3):
    rng = np.random.default_rng(seed)
    x = 0.2 * rng.random((b, 1, H, W))
    x[:, :, 2:6, 10:14] += 0.8  # a blob inside the region ...
    x[:, :, 9:13, 2:6] += 0.8  # ... and one outside it
    return torch.tensor(x, dtype=torch.float32)


def _inside_fraction(maps):
    return maps[:, : H // 2, W // 2 :].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


@pytest.mark.parametrize("use_default_layer", [True, False])
def test_map_mass_concentrates_in_the_region_the_class_depends_on(use_default_layer):
    model = RegionNet()
    x = _images()
    layer = None if use_default_layer else model.act
    assert default_gradcam_layer(model) is model.conv  # no timm backbone: the last Conv2d
    inside = grad_cam(model, x, 1, layer)
    outside = grad_cam(model, x, 0, layer)
    for maps in (inside, outside):
        assert maps.shape == (3, H, W) and maps.dtype == np.float32
        assert maps.min() >= 0 and np.allclose(maps.reshape(3, -1).max(axis=1), 1.0)
    assert (_inside_fraction(inside) > 0.9).all()
    assert (_inside_fraction(outside) < 0.1).all()
    # Within the region, the blob (bright) dominates the background.
    assert inside[:, 3:5, 11:13].mean() > 3 * inside[:, 6:8, 14:16].mean()


def test_frozen_model_mode_restored_and_zero_evidence():
    model = RegionNet().train()
    for p in model.parameters():
        p.requires_grad_(False)
    maps = grad_cam(model, _images(b=2), 1)
    assert model.training and (_inside_fraction(maps) > 0.9).all()
    dark = torch.zeros(1, 1, H, W)
    dark[..., 10:14, 2:6] = 1.0  # nothing inside the region: no positive evidence for class 1
    assert (grad_cam(model, dark, 1) == 0).all()


def test_default_layer_is_final_timm_stage_and_runs_through_wrapper():
    encoder = ImageEncoder("resnet18", pretrained=False)
    assert default_gradcam_layer(encoder) is encoder.backbone.layer4
    classifier = nn.Sequential(encoder, nn.Linear(encoder.num_features, 3))
    assert default_gradcam_layer(classifier) is encoder.backbone.layer4
    torch.manual_seed(0)
    maps = grad_cam(classifier, torch.rand(2, 1, 64, 64), 2)
    assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, stride=4)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.head(self.block(tokens).mean(1))


def test_errors():
    model = RegionNet()
    with pytest.raises(DataError):
        grad_cam(model, torch.rand(1, H, W), 0)
    with pytest.raises(ConfigError):
        grad_cam(model, _images(), 2)
    with pytest.raises(ConfigError):
        grad_cam(model, _images(), 0, layer=nn.ReLU())  # not part of the model
    with pytest.raises(ConfigError):
        default_gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    tokens = _Tokens()
    with pytest.raises(ConfigError, match="feature map"):
        grad_cam(tokens, torch.rand(1, 1, 16, 16), 0, layer=tokens.block)
