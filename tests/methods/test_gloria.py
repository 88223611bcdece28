"""GLoRIA: the combined objective against independently computed parts, training, defaults, and an
end-to-end `convirt pretrain --method gloria` whose saved model keeps its local features."""

import json

import pytest
import torch
import torch.nn.functional as F

from convirt.config import load_config
from convirt.errors import ConfigError, ConvirtError
from convirt.losses import bidirectional_nce
from convirt.models.dual_encoder import DualEncoder
from tests.helpers import tiny_overrides, write_pair_manifest
from tests.losses.test_local import reference_loss, reference_z
from tests.methods.tiny import tiny_batch, tiny_method, train_losses


def test_gloria_defaults_are_the_papers_and_validated():
    cfg = load_config(overrides=["method=gloria"])
    g = cfg.gloria
    assert (g.attention_scale, g.word_scale, g.report_scale, g.local_weight, g.global_weight) == (4.0, 5.0, 10.0, 1.0, 1.0)
    assert (g.stage, g.word_layers, cfg.text.sampling, cfg.loss.image_weight) == (-2, 4, "report", 0.5)
    assert load_config().text.sampling == "sentence"  # ConVIRT keeps its own
    with pytest.raises(ConfigError, match="gloria.word_scale must be > 0"):
        load_config(overrides=["method=gloria", "gloria.word_scale=0"])


def test_gloria_loss_is_the_weighted_sum_of_convirts_global_loss_and_the_local_loss():
    method = tiny_method("gloria", ("image.size=64", "gloria.local_weight=0.7", "gloria.global_weight=0.3"))
    method.eval()  # no dropout: the parts below are recomputed from the same forward
    batch = tiny_batch(method, size=64)
    m = method.model
    with torch.no_grad():
        loss = method.compute_loss(batch)
        # the pieces recomputed by hand from the towers
        out = m.text_encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   output_hidden_states=True)
        tokens = torch.stack(out.hidden_states[-4:]).sum(0)
        h_u = out.last_hidden_state.masked_fill(~batch["attention_mask"].bool()[..., None], float("-inf")).amax(1)
        backbone = m.image_encoder.backbone
        x = backbone.maxpool(backbone.act1(backbone.bn1(backbone.conv1(batch["images"]))))
        layer3 = backbone.layer3(backbone.layer2(backbone.layer1(x)))
        h_v = backbone.layer4(layer3).mean(dim=(2, 3))
        global_loss = bidirectional_nce(m.image_head(h_v), m.text_head(h_u), 0.1, 0.5)
        regions = m.local_head(layer3).flatten(2).transpose(1, 2).double()
        words, n_words = [], []
        for row, ids in enumerate(batch["input_ids"].tolist()):
            index, _ = m.word_merger.word_index(batch["input_ids"][row : row + 1], batch["attention_mask"][row : row + 1])
            index = index[0]
            count = int(index.max()) + 1
            words.append(torch.stack([tokens[row][index == w].sum(0) for w in range(count)]))
            n_words.append(count)
        padded = torch.zeros(len(words), max(n_words), words[0].shape[-1], dtype=torch.float64)
        for row, w in enumerate(words):
            padded[row, : len(w)] = w
        local = reference_loss(reference_z(regions, padded, n_words, 4.0, 5.0), 10.0)
    torch.testing.assert_close(loss.double(), 0.3 * global_loss.double() + 0.7 * local, rtol=1e-4, atol=1e-4)


def test_training_lowers_both_parts_of_the_gloria_loss():
    method = tiny_method("gloria", ("image.size=64",))
    batch = tiny_batch(method, size=64)
    with torch.no_grad():
        before = {k: float(v) for k, v in method.losses(batch).items()}
    losses = train_losses(method, batch, steps=15, lr=1e-3)
    with torch.no_grad():
        after = {k: float(v) for k, v in method.losses(batch).items()}
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    assert after["local"] < before["local"] and after["global"] < before["global"], (before, after)


def test_a_model_without_local_features_says_so():
    method = tiny_method("convirt")
    with pytest.raises(ConvirtError, match="no local .* features: trained with .*not gloria"):
        method.model.local_features(torch.zeros(1, 1, 32, 32))


def test_convirt_pretrain_method_gloria_saves_and_reloads_the_local_branch(tmp_path):
    from convirt.cli.main import main

    manifest = write_pair_manifest(tmp_path / "data", n_train=8, n_valid=4)
    args = ["pretrain", "--method", "gloria"]
    for item in tiny_overrides(manifest, tmp_path / "run", 3) + ["image.size=64"]:
        args += ["--set", item]
    assert main(args) == 0
    header = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_local" in header and "train/loss_global" in header
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["local"]["attention_scale"] == 4.0 and config["meta"]["method"] == "gloria"
    loaded = DualEncoder.load(tmp_path / "run" / "model")
    assert loaded.has_local
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        h, regions = loaded.local_features(x)
        torch.testing.assert_close(h, loaded.image_encoder(x))
    assert regions.shape == (2, loaded.text_encoder.num_features, 4, 4)
    assert F.normalize(regions.flatten(1), dim=-1).std() > 0
