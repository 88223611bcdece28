"""End-to-end pretraining on a tiny manifest: runs, resumes exactly, exports a loadable model."""

import json

import pytest
import torch
from safetensors.torch import load_file

import convirt
from convirt.config import load_config
from convirt.errors import ConfigError, ConvirtError, DataError
from convirt.training.run import pretrain
from tests.helpers import SimulatedCrash, crash_after, tiny_overrides, write_pair_manifest


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data")
    steps = 6
    full = pretrain(load_config(overrides=tiny_overrides(manifest, tmp_path / "full", steps)))
    assert full["global_step"] == steps

    interrupted = load_config(overrides=tiny_overrides(manifest, tmp_path / "resumed", steps))
    with pytest.raises(SimulatedCrash):
        pretrain(interrupted, callbacks=[crash_after(3)])  # checkpoints exist at step 2 only
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("*.ckpt"))
    assert "step=2.ckpt" in ckpts
    (tmp_path / "resumed" / "checkpoints" / "step=3.ckpt").unlink(missing_ok=True)  # lost with the node
    resumed = pretrain(interrupted, resume=True)
    assert resumed["global_step"] == steps and resumed["resumed_from"].endswith("step=2.ckpt")

    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_run_folder_with_checkpoints_needs_resume(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data")
    cfg = load_config(overrides=tiny_overrides(manifest, tmp_path / "run", 2))
    pretrain(cfg)
    with pytest.raises(ConvirtError, match="--resume"):
        pretrain(cfg)


def test_resume_refuses_other_settings_but_may_train_longer(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data")
    run = tmp_path / "run"
    pretrain(load_config(overrides=tiny_overrides(manifest, run, 2)))
    changed = load_config(overrides=tiny_overrides(manifest, run, 2) + ["loss.temperature=0.2", "optim.lr=0.01"])
    with pytest.raises(ConfigError, match=r"loss.temperature, optim.lr differ") as err:
        pretrain(changed, resume=True)
    assert "--config" in str(err.value) and str(run / "config.yaml") in str(err.value)
    assert load_config(run / "config.yaml").loss.temperature == 0.1  # the run's record is left as it was
    longer = load_config(overrides=tiny_overrides(manifest, run, 4) + ["data.num_workers=0", "trainer.progress_bar=false"])
    summary = pretrain(longer, resume=True)
    assert summary["global_step"] == 4 and summary["resumed_from"].endswith("step=2.ckpt")
    assert load_config(run / "config.yaml").trainer.max_steps == 4


def test_exported_model_loads_and_encodes(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data")
    summary = pretrain(load_config(overrides=tiny_overrides(manifest, tmp_path / "run", 2)))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["global_step"] == summary["global_step"] == 2 and "val/loss" in saved["metrics"]
    model = convirt.load(tmp_path / "run" / "model")
    images = model.encode_images([tmp_path / "data" / "images" / "0.png", tmp_path / "data" / "images" / "1.png"])
    texts = model.encode_text(["The heart size is normal.", "No pneumothorax is seen."])
    assert images.shape == texts.shape == (2, 16)
    assert torch.allclose(images.norm(dim=-1), torch.ones(2), atol=1e-5)
    from PIL import Image

    pil = [Image.open(tmp_path / "data" / "images" / f"{i}.png") for i in (0, 1)]
    assert torch.allclose(model.encode_images(pil), images, atol=1e-6)  # PIL input: same preprocessing

    from convirt.cli.main import main

    assert main(["export", str(tmp_path / "run"), "--image-encoder", "--out", str(tmp_path / "enc.safetensors")]) == 0
    import timm

    net = timm.create_model("resnet18", pretrained=True, in_chans=1, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(tmp_path / "enc.safetensors"))).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(net(x), model.image_encoder(x), atol=1e-5)


def test_bad_manifest_is_refused_unless_skipping(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data")
    (tmp_path / "data" / "images" / "3.png").unlink()
    cfg = load_config(overrides=tiny_overrides(manifest, tmp_path / "run", 2))
    with pytest.raises(DataError, match="row 4"):
        pretrain(cfg)
    cfg = load_config(overrides=tiny_overrides(manifest, tmp_path / "run2", 2) + ["data.skip_bad_rows=true"])
    assert pretrain(cfg)["skipped_bad_rows"] == 1
