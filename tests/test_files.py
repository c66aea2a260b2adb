"""distral.files: the one atomic-write helper."""

from __future__ import annotations

import os

import pytest

from distral.files import atomic_output, atomic_write, atomic_write_rows


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, "one")
    atomic_write(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.csv"
    atomic_write_rows(path, [["x", "y"], [1, 2]])
    with pytest.raises(RuntimeError), atomic_output(path) as fh:
        fh.write("half of a new file")
        raise RuntimeError("crash")
    assert path.read_bytes() == b"x,y\r\n1,2\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]
