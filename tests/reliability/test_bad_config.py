"""Bad configuration is rejected before any work starts (no run folder, no data check, no model),
with a message that names the key and says what to change."""

from __future__ import annotations

import huggingface_hub.constants
import pytest

from convirt.cli.main import main


@pytest.mark.parametrize("override, message", [
    ("loss.tau=0.1", "unknown key(s) loss.tau; valid keys: image_weight, learn_temperature, temperature"),
    ("trainer.maxsteps=5", "unknown key(s) trainer.maxsteps; valid keys: "),
    ("trainer.max_steps=many", "trainer.max_steps must be of type int; got 'many'"),
    ("data.skip_bad_rows=maybe", "data.skip_bad_rows must be true or false; got 'maybe'"),
    ("loss.temperature=0", "loss.temperature must be > 0 (paper: 0.1); got 0.0"),
    ("loss.temperature=-0.1", "loss.temperature must be > 0 (paper: 0.1); got -0.1"),
    ("loss.image_weight=1.5", "loss.image_weight must lie in [0, 1] (paper: 0.75); got 1.5"),
    ("loss.image_weight=-0.25", "loss.image_weight must lie in [0, 1] (paper: 0.75); got -0.25"),
    ("text.model=/nonexistent/encoder", "text.model: cannot load '/nonexistent/encoder' (OSError). Offline machines need a local "
                                        "folder (save_pretrained) or text.model: scratch"),
    ("text.model=no-such-org/no-such-model", "text.model: cannot load 'no-such-org/no-such-model' (OSError). Offline"),
])
def test_bad_pretrain_config_is_refused_before_any_work(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never ask the network
    out = tmp_path / "run"
    # the manifest does not exist: had any work started, the error would be about the data
    argv = ["pretrain", "--train", str(tmp_path / "missing.csv"), "--out", str(out), "--set", "text.model=scratch",
            "--set", override]
    assert main(argv) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_label_fraction_zero_is_refused_before_any_work(tmp_path, capsys):
    pytest.importorskip("convirt.cli.evaluate")
    out = tmp_path / "eval"
    argv = ["evaluate", "linear", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "missing.csv"),
            "--out", str(out), "--fractions", "0", "0.1"]
    assert main(argv) == 2
    assert "error: label fractions must be in (0, 1], got [0.0, 0.1]" in capsys.readouterr().err
    assert not out.exists()
