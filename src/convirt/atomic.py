"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written one.

Write to a temporary file in the same folder, fsync it, rename it over the target (atomic on POSIX),
then fsync the folder so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from convirt.errors import ConvirtError

TMP_SUFFIX = ".tmp"  # temporary files are ".NAME.XXXXXXXX.tmp" beside NAME


def _default_mode() -> int:
    mask = os.umask(0)  # read the umask (there is no getter); done once, at import
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` atomically.

    On any error the temporary file is removed and ``target`` is untouched. A full disk raises a
    :class:`ConvirtError` naming the path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        os.fchmod(fd, _MODE)  # mkstemp makes 0600 files; results are meant to be shared
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise ConvirtError(f"disk full while writing {target}: free space or choose another output folder") from err
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
