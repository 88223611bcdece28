"""Encoder specs: convirt folders, timm ImageNet (from a local weights file), random init, exported files."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from convirt.config import ImageConfig, ProjectionConfig, ScratchTextConfig, TextConfig
from convirt.errors import ConfigError
from convirt.evaluation.encoders import IMAGENET_GRAY_MEAN, load_encoder, load_encoders
from convirt.models.dual_encoder import DualEncoder

CORPUS = ["There is a small left pleural effusion.", "The heart size is normal."] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    text = TextConfig(model="scratch", freeze_layers=0, max_length=16, scratch=ScratchTextConfig(vocab_size=80, hidden=32, layers=1, heads=2))
    model = DualEncoder.build(ImageConfig(model="resnet18", pretrained=False, size=48), text, ProjectionConfig(dim=8),
                              corpus=CORPUS)
    return model.save(tmp_path_factory.mktemp("m") / "model")


def test_convirt_folder_gives_the_encoder_output_before_the_projection(model_dir):
    enc = load_encoder(str(model_dir))
    model = DualEncoder.load(model_dir)
    x = torch.randn(2, 1, 48, 48)
    expected = model.encode_images(x, projected=False, normalize=False)
    assert torch.allclose(enc.module(x), expected, atol=1e-6)
    assert enc.size == 48 and enc.dual is not None and enc.num_features == 512
    # a run folder (holding model/) is accepted too and named after the run
    assert load_encoder(str(model_dir.parent)).name == model_dir.parent.name


def test_imagenet_spec_loads_local_weights_folded_to_one_channel(tmp_path):
    torch.manual_seed(1)
    rgb = timm.create_model("resnet18", pretrained=False, num_classes=0)
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(file))
    enc = load_encoder(f"imagenet:resnet18@{file}", size=64)
    folded = enc.module.backbone.conv1.weight
    # timm adapts pretrained RGB filters to one channel by summing them over the colour axis
    assert torch.allclose(folded, rgb.conv1.weight.sum(dim=1, keepdim=True), atol=1e-6)
    assert enc.mean == pytest.approx(IMAGENET_GRAY_MEAN) and enc.size == 64


def test_random_init_is_seeded_and_fingerprints_tell_weights_apart():
    a, b, c = load_encoder("random:resnet18", seed=0), load_encoder("random:resnet18", seed=0), load_encoder("random:resnet18", seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.needs_bn_recalibration
    with torch.no_grad():
        a.module.backbone.bn1.running_mean += 1
    a.forget_fingerprint()
    assert a.fingerprint() != b.fingerprint()  # buffers count, not only parameters


def test_exported_file_spec_matches_the_model(model_dir, tmp_path):
    model = DualEncoder.load(model_dir)
    path = model.export_image_encoder(tmp_path / "enc.safetensors")
    enc = load_encoder(f"file:{path}")
    x = torch.randn(2, 1, 48, 48)
    assert torch.allclose(enc.module(x), model.image_encoder(x), atol=1e-6)
    assert (enc.size, enc.mean, enc.std) == (48, model.image_cfg.mean, model.image_cfg.std)


def test_bad_specs_say_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match="imagenet:NAME"):
        load_encoder(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no model named"):
        load_encoder("random:not_a_model_xyz")
    with pytest.raises(ConfigError, match="sidecar"):
        load_encoder(f"file:{tmp_path / 'x.safetensors'}")
    with pytest.raises(ConfigError, match="--names"):
        load_encoders(["random:resnet18"], names=["a", "b"])


def test_duplicate_names_are_made_distinct():
    encs = load_encoders(["random:resnet18", "random:resnet18"])
    assert [e.name for e in encs] == ["Random resnet18", "Random resnet18 (2)"]
