"""Lightning DDP on 2 CPU processes (gloo), run as a subprocess (Lightning re-launches the command
for rank 1, which must not be pytest itself)."""

import json
import subprocess
import sys

from safetensors.torch import load_file

from tests.helpers import tiny_overrides, write_pair_manifest


def test_two_process_ddp_pretraining_runs_and_exports(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data", n_train=16, n_valid=8)
    out = tmp_path / "ddp"
    sets = tiny_overrides(manifest, out, max_steps=3) + [
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=2"]
    cmd = [sys.executable, "-m", "convirt.cli.main", "pretrain"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    assert "val/loss" in summary["metrics"]
    assert load_file(str(out / "model" / "model.safetensors"))  # rank 0 exported a readable model
