"""Every output goes through pnasnet.atomic_files: a file appears whole or not at all."""

import pytest

from pnasnet.atomic_files import atomic_path, write_bytes_atomically


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes_atomically(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_hidden_temporary_for_listed_folders(tmp_path):
    with atomic_path(tmp_path / "part-0.parquet", hidden=True) as tmp:
        assert tmp.name.startswith(".part-0.parquet.")
        tmp.write_bytes(b"x")
    assert (tmp_path / "part-0.parquet").read_bytes() == b"x"
