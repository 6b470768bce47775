"""tinymoe.atomic: a write either replaces the file whole or leaves the old one, and never litters."""

import pytest

from tinymoe.atomic import atomic_write, atomic_write_text


def test_a_completed_write_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"  # missing folders are created
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
