"""Atomic writes: the complete new file or the old one, with the permissions of a normally created file."""

import os

import pytest

from convirt.atomic import atomic_path, atomic_write_text


def test_written_file_has_the_umask_permissions_of_an_ordinary_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    (tmp_path / "plain.txt").write_text("hello")  # created by open(): 0666 & ~umask
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
