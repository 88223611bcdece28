"""CLIP in ConVIRT's setting: attention pooling (saved and evaluated with the encoder), learnable
temperature, training, and an end-to-end `convirt pretrain --method clip` run."""

import json
import math

import pytest
import torch
import yaml

from convirt.config import ImageConfig, ProjectionConfig, ScratchTextConfig, TextConfig, load_config
from convirt.errors import ConfigError, ConvirtError
from convirt.evaluation.encoders import load_encoder
from convirt.losses import ContrastiveLoss, bidirectional_nce
from convirt.models.dual_encoder import DualEncoder
from convirt.models.image import ImageEncoder
from tests.helpers import tiny_overrides, write_pair_manifest
from tests.methods.tiny import TEXTS, tiny_batch, tiny_method, train_losses


def reference_attention_pool(pool, local):
    """CLIP's AttentionPool2d written out: query = mean + pos[0]; keys/values = [mean; positions] + pos."""
    x = local.flatten(2).transpose(1, 2)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.positional_embedding
    (wq, wk, wv), (bq, bk, bv) = pool.attn.in_proj_weight.chunk(3), pool.attn.in_proj_bias.chunk(3)
    q, k, v = x[:, :1] @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv
    width = x.shape[-1] // pool.heads
    heads = []
    for h in range(pool.heads):
        part = slice(h * width, (h + 1) * width)
        weights = (q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(width)).softmax(dim=-1)
        heads.append(weights @ v[..., part])
    return torch.cat(heads, dim=-1)[:, 0] @ pool.attn.out_proj.weight.T + pool.attn.out_proj.bias


def test_attention_pool_is_clips_and_differs_from_average_pooling():
    torch.manual_seed(0)
    avg = ImageEncoder("resnet18").eval()
    att = ImageEncoder("resnet18", pool="attention", size=64).eval()
    att.backbone.load_state_dict(avg.backbone.state_dict())
    assert att.attn_pool.grid == (2, 2) and att.attn_pool.heads == 512 // 64  # CLIP's 64-wide heads
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        g_avg, local_avg = avg.forward_features(x)
        g_att, local_att = att.forward_features(x)
        assert torch.equal(local_avg, local_att) and g_att.shape == g_avg.shape == (3, 512)
        assert torch.allclose(g_att, reference_attention_pool(att.attn_pool, local_att), atol=1e-5)
        assert not torch.allclose(g_att, g_avg, atol=1e-2)
        assert att(torch.randn(2, 1, 96, 96)).shape == (2, 512)  # 3 x 3 map: positions interpolated
    assert att.attn_pool.positions((2, 2)) is att.attn_pool.positional_embedding


def test_bad_pool_settings_are_refused_with_what_to_change():
    with pytest.raises(ConfigError, match="image.pool must be 'avg' or 'attention'"):
        load_config(overrides=["image.pool=max"])
    with pytest.raises(ConfigError, match="image.pool_heads must be >= 1"):
        load_config(overrides=["image.pool_heads=0"])
    with pytest.raises(ConfigError, match=r"image.pool_heads must divide the feature width of resnet18 \(512\)"):
        ImageEncoder("resnet18", pool="attention", pool_heads=3, size=32)


def test_learnable_temperature_starts_at_clips_and_is_clamped():
    loss = ContrastiveLoss(0.07, 0.5, learn_temperature=True)
    assert 1 / float(loss.temperature.detach()) == pytest.approx(1 / 0.07)  # CLIP's initial logit scale
    v, u = torch.randn(6, 8), torch.randn(6, 8)
    loss(v, u).backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad != 0  # learned
    with torch.no_grad():
        loss.log_temperature.fill_(math.log(1e-4))
    assert float(loss.temperature) == pytest.approx(0.01)  # logit scale clamped at 100
    assert torch.allclose(loss(v, u), bidirectional_nce(v, u, 0.01, 0.5))


def test_clip_method_defaults_and_what_overrides_them():
    cfg = load_config(overrides=["method=clip"])
    assert (cfg.image.pool, cfg.loss.learn_temperature, cfg.loss.temperature, cfg.loss.image_weight) == ("attention", True, 0.07, 0.5)
    assert load_config(overrides=["method=clip", "loss.temperature=0.1"]).loss.temperature == 0.1  # --set wins
    paper = load_config("paper", ["method=clip"])  # a file's explicit values win too
    assert (paper.image.pool, paper.loss.learn_temperature, paper.loss.temperature, paper.loss.image_weight) == (
        "attention", True, 0.1, 0.75)
    assert load_config().image.pool == "avg" and not load_config().loss.learn_temperature


def test_saved_model_with_attention_pool_gives_identical_embeddings(tmp_path):
    torch.manual_seed(0)
    text = TextConfig(model="scratch", freeze_layers=0, max_length=16,
                      scratch=ScratchTextConfig(vocab_size=100, hidden=32, layers=1, heads=2))
    model = DualEncoder.build(ImageConfig(model="resnet18", pretrained=False, size=64, pool="attention"), text,
                              ProjectionConfig(dim=8), corpus=TEXTS * 4)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["image"]["pool"] == "attention"
    loaded = DualEncoder.load(tmp_path / "m")
    assert "image_encoder.attn_pool.positional_embedding" in loaded.state_dict()
    x = torch.randn(4, 1, 64, 64)
    for projected in (True, False):
        assert torch.equal(model.encode_images(x, projected=projected), loaded.encode_images(x, projected=projected))
    with pytest.raises(ConvirtError, match="attention.*model folder"):
        loaded.export_image_encoder(tmp_path / "enc.safetensors")  # a timm file would silently average-pool


def test_clip_method_keeps_the_temperature_parameter_in_bounds():
    model = tiny_method("clip")
    with torch.no_grad():
        model.loss.log_temperature.fill_(math.log(1e-4))  # e.g. overshot by Adam's momentum
    model.on_train_batch_end(None, None, 0)
    assert float(model.loss.log_temperature.detach()) == pytest.approx(math.log(0.01))  # can learn its way back


def test_training_lowers_the_clip_loss():
    model = tiny_method("clip", ("image.size=64",))
    assert model.model.image_encoder.attn_pool is not None and model.loss.log_temperature.requires_grad
    losses = train_losses(model, tiny_batch(model, size=64), steps=15, lr=1e-3)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, losses  # seed 0: 2.6 -> 0.8 in 20 steps


def test_convirt_pretrain_method_clip_writes_a_model_that_evaluation_loads(tmp_path, capsys):
    from convirt.cli.main import main

    manifest = write_pair_manifest(tmp_path / "data", n_train=8, n_valid=4)
    args = ["pretrain", "--method", "clip"]
    for item in tiny_overrides(manifest, tmp_path / "run", 3) + ["image.size=64"]:
        args += ["--set", item]
    assert main(args) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["method"] == "clip" and resolved["image"]["pool"] == "attention" and resolved["loss"]["learn_temperature"]
    assert "train/temperature" in (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0]

    encoder = load_encoder(str(tmp_path / "run"))  # what `convirt evaluate ... --model RUN_DIR` uses
    assert encoder.module.attn_pool is not None and encoder.module.attn_pool.grid == (2, 2) and encoder.size == 64
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        features = encoder.module(x)
    assert features.shape == (2, encoder.num_features)
    assert torch.equal(features, DualEncoder.load(tmp_path / "run" / "model").image_encoder(x))
