import pytest
import torch

from convirt.errors import ConfigError
from convirt.models.image import ImageEncoder


def test_global_and_local_features_of_a_cnn():
    enc = ImageEncoder("resnet18", pretrained=False)
    g, local = enc.forward_features(torch.randn(2, 1, 64, 64))
    assert g.shape == (2, 512) and local.shape == (2, 512, 2, 2)
    assert torch.allclose(g, local.mean(dim=(2, 3)), atol=1e-5)  # global = average of the local map


def test_repeat_grayscale_uses_three_channel_stem():
    enc = ImageEncoder("resnet18", grayscale="repeat")
    assert enc.backbone.conv1.in_channels == 3
    assert enc.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 512)


def test_unknown_model_and_missing_weights_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no model named"):
        ImageEncoder("resnet_does_not_exist")
    with pytest.raises(ConfigError, match="file not found"):
        ImageEncoder("resnet18", weights=str(tmp_path / "missing.safetensors"))


def test_local_weights_file_is_loaded_and_adapted_to_one_channel(tmp_path):
    import timm
    from safetensors.torch import save_file

    rgb = timm.create_model("resnet18", num_classes=0)  # a stand-in for downloaded ImageNet weights
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    enc = ImageEncoder("resnet18", weights=str(path))
    # timm folds RGB filters into one channel by summing them
    assert torch.allclose(enc.backbone.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True), atol=1e-6)
    assert torch.equal(enc.backbone.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
