"""Configuration: paper defaults, presets, YAML and overrides, and rejection of bad values."""

import pytest

from convirt.config import PretrainConfig, load_config
from convirt.errors import ConfigError


def test_defaults_are_the_papers():
    c = PretrainConfig()
    assert (c.image.model, c.image.pretrained, c.image.size) == ("resnet50", True, 224)
    assert (c.text.model, c.text.pooling, c.text.freeze_layers, c.text.sampling) == (
        "emilyalsentzer/Bio_ClinicalBERT", "max", 6, "sentence")
    assert (c.projection.dim, c.loss.temperature, c.loss.image_weight) == (512, 0.1, 0.75)
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay, c.optim.scheduler) == ("adam", 1e-4, 1e-6, "plateau")
    assert c.data.batch_size == 32
    a = c.augment
    assert (a.crop_scale, a.hflip_p, a.rotation, a.translate) == ([0.6, 1.0], 0.5, 20.0, 0.1)
    assert (a.affine_scale, a.brightness, a.contrast, a.blur_sigma) == ([0.95, 1.05], [0.6, 1.4], [0.6, 1.4], [0.1, 3.0])
    assert load_config("paper").to_dict() | {"trainer": None, "data": None} == c.to_dict() | {"trainer": None, "data": None}


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  temperature: 0.2\noptim:\n  lr: 1e-3\n")
    c = load_config(path, ["loss.temperature=0.05", "trainer.devices=2"])
    assert c.loss.temperature == 0.05 and c.optim.lr == 1e-3 and c.trainer.devices == 2


@pytest.mark.parametrize("override,message", [
    ("loss.tau=0.1", "unknown key"),
    ("loss.temperature=0", "loss.temperature must be > 0"),
    ("loss.image_weight=1.5", "loss.image_weight must lie in"),
    ("data.batch_size=1", "data.batch_size must be >= 2"),
    ("trainer.max_steps=many", "trainer.max_steps must be of type int"),
    ("image.pretrained=yes please", "must be true or false"),
    ("augment.crop_scale=[0.9,0.5]", "augment.crop_scale"),
    ("optim.scheduler=linear", "optim.scheduler must be"),
])
def test_bad_values_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_file_names_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="packaged presets: demo, paper"):
        load_config(tmp_path / "nope.yaml")
