"""Safe, all-or-nothing extraction of weight tarballs."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from pnasnet.weights.archive import ArchiveError, UnsafeArchiveError, safe_extract

GOOD_FILES = {"pnasnet/model.ckpt.index": b"index bytes", "pnasnet/model.ckpt.data-00000-of-00001": b"d" * 5000}


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tar.addfile(info)


def make_tarball(path: Path, extra=None, mode: str = "w:gz") -> Path:
    """A tarball with a folder and the good files, then (optionally) one extra member."""
    with tarfile.open(path, mode) as tar:
        folder = tarfile.TarInfo("pnasnet")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in GOOD_FILES.items():
            add_file(tar, name, data)
        if extra is not None:
            extra(tar)
    return path


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_good_tarball_extracts(tmp_path, mode, suffix):
    archive = make_tarball(tmp_path / f"good{suffix}", mode=mode)
    dest = tmp_path / "out" / "weights"
    files = safe_extract(archive, dest)
    assert sorted(files) == sorted(dest / name for name in GOOD_FILES)
    for name, data in GOOD_FILES.items():
        assert (dest / name).read_bytes() == data
    assert siblings(dest.parent) == ["weights"]       # no temporary folder left


BAD_MEMBERS = {
    "parent": ("../evil", lambda tar: add_file(tar, "../evil", b"x"), "'..'"),
    "nested-parent": ("pnasnet/../../evil", lambda tar: add_file(tar, "pnasnet/../../evil", b"x"), "'..'"),
    "absolute": ("/tmp/evil", lambda tar: add_file(tar, "/tmp/evil", b"x"), "absolute"),
    "symlink": ("pnasnet/link", lambda tar: add_special(tar, "pnasnet/link", tarfile.SYMTYPE, "/etc/passwd"),
                "symbolic link"),
    "hardlink": ("pnasnet/hard", lambda tar: add_special(tar, "pnasnet/hard", tarfile.LNKTYPE,
                                                         "pnasnet/model.ckpt.index"), "hard link"),
    "device": ("pnasnet/dev", lambda tar: add_special(tar, "pnasnet/dev", tarfile.CHRTYPE), "device"),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_unsafe_member_is_refused_and_nothing_is_extracted(tmp_path, case):
    member, add, reason = BAD_MEMBERS[case]
    archive = make_tarball(tmp_path / "bad.tar.gz", extra=add)
    dest = tmp_path / "out" / "weights"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest)
    message = str(info.value)
    assert str(archive) in message and repr(member) in message and reason in message
    assert info.value.member == member
    assert siblings(tmp_path / "out") == []          # neither the destination nor a temporary folder
    assert not (tmp_path / "evil").exists()


def test_truncated_tarball_raises_archive_error(tmp_path):
    noise = random.Random(0).randbytes(200_000)      # incompressible, so the cut lands inside the data
    archive = make_tarball(tmp_path / "w.tar.gz", extra=lambda tar: add_file(tar, "pnasnet/big", noise))
    archive.write_bytes(archive.read_bytes()[:120_000])
    dest = tmp_path / "out" / "weights"
    with pytest.raises(ArchiveError, match="truncated or corrupt") as info:
        safe_extract(archive, dest)
    assert str(archive) in str(info.value)
    assert not isinstance(info.value, UnsafeArchiveError)
    assert siblings(tmp_path / "out") == []


def test_not_an_archive_raises_archive_error(tmp_path):
    bogus = tmp_path / "w.tar.gz"
    bogus.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ArchiveError, match="w.tar.gz"):
        safe_extract(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_destination_is_kept_unless_overwrite(tmp_path):
    archive = make_tarball(tmp_path / "w.tar.gz")
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        safe_extract(archive, dest)
    assert siblings(dest) == ["old.txt"]
    safe_extract(archive, dest, overwrite=True)
    assert siblings(dest) == ["pnasnet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.tar.gz", "weights"]
