"""Disk full while writing checkpoints or logs: a clear error naming the path, no corrupt files left.

The full disk is real: the writer's temporary file is a link to /dev/full, where every write fails
with ENOSPC in the kernel. Writers that do not go through convirt.atomic (TensorBoard) are given
an ENOSPC directly.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger

import convirt.atomic
from convirt.config import load_config
from convirt.errors import ConvirtError
from convirt.training.run import pretrain
from tests.helpers import write_pair_manifest
from tests.reliability.common import fast_overrides

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")


def _full_disk_in(monkeypatch, folder: Path) -> None:
    """Temporary files that convirt.atomic creates in ``folder`` are links to /dev/full."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        fd, name = real_mkstemp(*args, dir=dir, **kwargs)
        if Path(dir).resolve() == folder.resolve():
            os.unlink(name)  # fd stays on the created file: settings made through it never reach /dev/full
            os.symlink("/dev/full", name)
        return fd, name

    monkeypatch.setattr(convirt.atomic.tempfile, "mkstemp", mkstemp)


@pytest.fixture(autouse=True)
def dev_full_untouched():
    """/dev/full is shared by the whole machine: a write path that changed it through the link is a bug."""
    before = os.stat("/dev/full").st_mode
    yield
    after = os.stat("/dev/full").st_mode
    if after != before:
        os.chmod("/dev/full", before)
    assert after == before, "the write path changed /dev/full's mode through a link"


@pytest.mark.parametrize("folder, file", [("checkpoints", "step=2.ckpt"), ("logs", "metrics.csv")])
def test_disk_full_names_the_file_and_leaves_nothing_behind(tmp_path, monkeypatch, folder, file):
    manifest = write_pair_manifest(tmp_path / "data")
    out = tmp_path / "run"
    (out / folder).mkdir(parents=True)
    _full_disk_in(monkeypatch, out / folder)
    with pytest.raises(ConvirtError) as caught:
        pretrain(load_config(overrides=fast_overrides(manifest, out, max_steps=3)))
    assert str(caught.value).startswith(f"disk full while writing {out / folder / file}: free space or choose another")
    left = sorted(p.name for p in (out / folder).iterdir())
    if folder == "checkpoints":
        assert left == []  # neither the temporary file nor a partial step=2.ckpt
    else:
        assert file not in left and not [n for n in left if n.endswith(".tmp")], left


def test_disk_full_in_a_writer_outside_convirt_names_the_run_folder(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(TensorBoardLogger, "log_metrics", full)
    manifest = write_pair_manifest(tmp_path / "data")
    with pytest.raises(ConvirtError, match=f"disk full while writing {tmp_path / 'run'}: free space"):
        pretrain(load_config(overrides=fast_overrides(manifest, tmp_path / "run", max_steps=3)))
    assert not list((tmp_path / "run").rglob("*.tmp"))
