"""SIGTERM (how schedulers pre-empt jobs) writes a checkpoint of the last finished step, exits with
143, and --resume continues from that step."""

import json
import signal
import subprocess
import sys
import time

from convirt.training.checkpoint import checkpoint_step
from tests.helpers import tiny_overrides, write_pair_manifest


def _cmd(sets, *extra):
    return [sys.executable, "-m", "convirt.cli.main", "pretrain", *extra] + [a for s in sets for a in ("--set", s)]


def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    manifest = write_pair_manifest(tmp_path / "data")
    out = tmp_path / "run"
    sets = tiny_overrides(manifest, out, max_steps=100000) + ["trainer.checkpoint_every_n_steps=100000"]
    proc = subprocess.Popen(_cmd(sets), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "logs" / "hparams.yaml").exists() and not (out / "tokenizer").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    time.sleep(8)  # let it train some steps
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-2000:]
    ckpts = list((out / "checkpoints").glob("step=*.ckpt"))
    assert len(ckpts) == 1 and checkpoint_step(ckpts[0]) > 0, (ckpts, output[-2000:])
    stopped_at = checkpoint_step(ckpts[0])

    resume_sets = [s for s in sets if not s.startswith("trainer.max_steps")] + [f"trainer.max_steps={stopped_at + 2}"]
    done = subprocess.run(_cmd(resume_sets, "--resume"), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == stopped_at + 2 and summary["resumed_from"].endswith(ckpts[0].name)
