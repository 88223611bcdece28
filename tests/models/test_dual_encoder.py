"""Save/load round trip of the exported model and the timm-compatible image encoder export."""

import json

import pytest
import timm
import torch

from convirt.config import ImageConfig, ProjectionConfig, ScratchTextConfig, TextConfig
from convirt.errors import ConvirtError
from convirt.models.dual_encoder import DualEncoder

CORPUS = ["There is a small left pleural effusion.", "The heart size is normal.", "No pneumothorax is seen."] * 30


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    text = TextConfig(model="scratch", freeze_layers=1, max_length=16, scratch=ScratchTextConfig(vocab_size=120, hidden=32, layers=2, heads=2))
    return DualEncoder.build(ImageConfig(model="resnet18", pretrained=False, size=32), text, ProjectionConfig(dim=16), corpus=CORPUS).eval()


def test_round_trip_gives_identical_embeddings(model, tmp_path):
    model.save(tmp_path / "m")
    loaded = DualEncoder.load(tmp_path / "m")
    images = torch.randn(3, 1, 32, 32)
    texts = ["The heart size is normal.", "No pneumothorax is seen.", "unseen words entirely"]
    assert torch.equal(model.encode_images(images), loaded.encode_images(images))
    assert torch.equal(model.encode_text(texts), loaded.encode_text(texts))
    assert torch.equal(model.encode_images(images, projected=False, normalize=False),
                       loaded.encode_images(images, projected=False, normalize=False))
    assert loaded.text_encoder.frozen_layers == 1  # the freezing survives the round trip
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "tokenizer"]


def test_embeddings_are_normalised_unless_asked(model):
    emb = model.encode_text(["The heart size is normal."])
    assert emb.shape == (1, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(1))
    raw = model.encode_text(["The heart size is normal."], projected=False, normalize=False)
    assert raw.shape == (1, 32) and not torch.allclose(raw.norm(dim=-1), torch.ones(1))


def test_image_encoder_export_loads_into_plain_timm(model, tmp_path):
    path = model.export_image_encoder(tmp_path / "enc.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    net = timm.create_model(meta["timm_model"], pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                            in_chans=meta["in_chans"], num_classes=0).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(net(x), model.image_encoder.eval()(x), atol=1e-6)


def test_corrupt_or_incomplete_folders_are_refused(model, tmp_path):
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConvirtError, match="corrupt or truncated"):
        DualEncoder.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ConvirtError, match="config.json is missing"):
        DualEncoder.load(tmp_path / "m")
