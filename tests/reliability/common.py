"""Shared pieces of the fault-injection tests: a fast tiny config and a way to run a faulty process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6  # checkpoints every 2 steps, validation every 4 (16 training rows, batch 4) and at the end


def fast_overrides(manifest: Path, out: Path, max_steps: int = STEPS) -> list[str]:
    """tiny_overrides with timm's 0.4M-parameter test ResNet (5 MB checkpoints instead of 130 MB)
    and the paper's reduce-on-plateau scheduler, whose state depends on every validation."""
    return tiny_overrides(manifest, out, max_steps) + ["image.model=test_resnet", "optim.scheduler=plateau"]


def run_faulty(fault: str, step: int, overrides: list[str], *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``convirt pretrain`` in a subprocess that injects ``fault`` at ``step`` (see faulty_run.py).

    One thread, like the test process (see conftest.py): the same arithmetic, so bit-exact comparisons hold.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "tests.reliability.faulty_run", *extra, fault, str(step), "--", *overrides]
    # its own process group: a fault may signal the group
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)


def model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
