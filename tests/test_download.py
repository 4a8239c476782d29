"""Download, resume, cache and trust-on-first-use, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from http_fixture_server import FixtureServer, closed_port_url
from pnasnet.weights import download as dl
from pnasnet.weights.download import (ChecksumError, ChecksumUnknownError, CorruptFileWarning, DownloadError,
                                      cache_dir, default_cache_dir, download, forget, sha256_file, verify,
                                      verify_cache)

DATA = random.Random(0).randbytes(300_000)
OTHER = random.Random(1).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()


@pytest.fixture
def server():
    with FixtureServer() as running:
        yield running


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PNASNET_HOME", str(folder))
    monkeypatch.delenv("PNASNET_OFFLINE", raising=False)
    monkeypatch.setattr(dl, "RETRY_PAUSE", 0.05)
    return folder


def leftovers(dest: Path) -> list[str]:
    """Partial-download files next to ``dest`` (lock files are allowed to stay)."""
    return sorted(p.name for p in dest.parent.glob(dest.name + ".part*"))


def records(cache: Path) -> dict:
    return json.loads((cache / "checksums.json").read_text())["files"]


# -- cache folder -------------------------------------------------------------------------------------


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PNASNET_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pnasnet"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pnasnet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "pnasnet"
    monkeypatch.setenv("PNASNET_HOME", str(tmp_path / "pn"))
    assert cache_dir() == tmp_path / "pn"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_sha256_file_streams_across_chunks(tmp_path):
    blob = random.Random(2).randbytes(dl.CHUNK_SIZE * 2 + 123)
    (tmp_path / "f").write_bytes(blob)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(blob).hexdigest()


# -- plain downloads ------------------------------------------------------------------------------------


def test_download_checks_sha256_and_finishes_atomically(server, cache):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    assert download(url, dest, sha256=SHA, progress=False) == dest
    assert dest.read_bytes() == DATA
    assert leftovers(dest) == []
    assert records(cache)["w.bin"]["sha256"] == SHA
    # A second call uses the cached, verified file without asking the server.
    assert download(url, dest, sha256=SHA, progress=False) == dest
    assert len(server.gets("w.bin")) == 1


def test_file_url_and_unsupported_scheme(tmp_path, cache):
    source = tmp_path / "mirror" / "w.bin"
    source.parent.mkdir()
    source.write_bytes(DATA)
    dest = download(source.as_uri(), cache / "w.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == DATA
    with pytest.raises(ValueError, match="ftp"):
        download("ftp://example.org/w.bin", cache / "x.bin", progress=False)


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_becomes_download_error(server, cache, status):
    url = server.serve("w.bin", DATA)
    server.status = status
    dest = cache / "w.bin"
    with pytest.raises(DownloadError, match=str(status)) as info:
        download(url, dest, progress=False)
    assert url in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists() and leftovers(dest) == []


# -- resuming -------------------------------------------------------------------------------------------


def test_next_call_resumes_a_dropped_download_with_a_range_request(server, cache):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.drop_after = 100_000
    with pytest.raises(DownloadError, match="resumes"):
        download(url, dest, sha256=SHA, progress=False, retries=0)
    assert not dest.exists()
    assert (cache / "w.bin.part").stat().st_size == 100_000

    download(url, dest, sha256=SHA, progress=False)
    last = server.gets("w.bin")[-1]
    assert (last.range, last.status, last.body_bytes) == ("bytes=100000-", 206, len(DATA) - 100_000)
    assert dest.read_bytes() == DATA
    assert leftovers(dest) == []


def test_dropped_connection_is_resumed_within_the_same_call(server, cache):
    url = server.serve("w.bin", DATA)
    server.drop_after = 70_000
    dest = download(url, cache / "w.bin", sha256=SHA, progress=False)
    assert [(s.range, s.status) for s in server.gets("w.bin")] == [(None, 200), ("bytes=70000-", 206)]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_starts_over(server, cache):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.drop_after = 50_000
    with pytest.raises(DownloadError):
        download(url, dest, sha256=SHA, progress=False, retries=0)
    server.ignore_range = True
    download(url, dest, sha256=SHA, progress=False)
    last = server.gets("w.bin")[-1]
    assert (last.range, last.status, last.body_bytes) == ("bytes=50000-", 200, len(DATA))
    assert dest.read_bytes() == DATA


def test_wrong_content_range_starts_over_without_range(server, cache):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.drop_after = 50_000
    with pytest.raises(DownloadError):
        download(url, dest, sha256=SHA, progress=False, retries=0)
    server.misreport_range = True
    download(url, dest, sha256=SHA, progress=False)
    assert [(s.range, s.status) for s in server.gets("w.bin")[1:]] == [("bytes=50000-", 206), (None, 200)]
    assert dest.read_bytes() == DATA


def test_complete_partial_answered_416_is_finished(server, cache):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.drop_after = 50_000
    with pytest.raises(DownloadError):
        download(url, dest, sha256=SHA, progress=False, retries=0)
    with open(cache / "w.bin.part", "ab") as part:    # as if the rest had arrived just before a crash
        part.write(DATA[50_000:])
    download(url, dest, sha256=SHA, progress=False)
    last = server.gets("w.bin")[-1]
    assert (last.range, last.status) == (f"bytes={len(DATA)}-", 416)
    assert dest.read_bytes() == DATA


def test_partial_of_a_changed_file_is_not_stitched(server, cache):
    """If-Range carries the old ETag: the server sends the whole new file instead of the rest."""
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.drop_after = 50_000
    with pytest.raises(DownloadError):
        download(url, dest, progress=False, retries=0)      # no digest known: trust on first use
    old_etag = server.etags["w.bin"]
    server.serve("w.bin", OTHER)
    download(url, dest, progress=False)
    last = server.gets("w.bin")[-1]
    assert (last.range, last.if_range, last.status) == ("bytes=50000-", old_etag, 200)
    assert dest.read_bytes() == OTHER
    assert records(cache)["w.bin"]["sha256"] == OTHER_SHA


def test_bad_resumed_file_is_downloaded_again_from_scratch(server, cache):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.drop_after = 50_000
    with pytest.raises(DownloadError):
        download(url, dest, sha256=SHA, progress=False, retries=0)
    part = cache / "w.bin.part"
    part.write_bytes(b"\0" * 50_000)        # damaged on disk, same length
    download(url, dest, sha256=SHA, progress=False)
    assert [(s.range, s.status) for s in server.gets("w.bin")[1:]] == [("bytes=50000-", 206), (None, 200)]
    assert dest.read_bytes() == DATA


# -- checksums ------------------------------------------------------------------------------------------


def test_checksum_mismatch_leaves_nothing(server, cache):
    url = server.serve("w.bin", OTHER)
    dest = cache / "w.bin"
    with pytest.raises(ChecksumError) as info:
        download(url, dest, sha256=SHA, progress=False)
    message = str(info.value)
    for needed in (url, str(dest), SHA, OTHER_SHA):
        assert needed in message
    assert (info.value.expected, info.value.actual) == (SHA, OTHER_SHA)
    assert not dest.exists() and leftovers(dest) == []


def test_size_announced_by_server_is_checked_before_downloading(server, cache, monkeypatch):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    received = []
    monkeypatch.setattr(dl._Download, "_receive", lambda self, body: received.append(body))
    with pytest.raises(ChecksumError, match=f"{len(DATA)} bytes"):
        download(url, dest, size=len(DATA) + 1, progress=False)
    assert received == []
    assert not dest.exists() and leftovers(dest) == []


def test_corrupted_cached_file_is_moved_aside_and_downloaded_again(server, cache):
    url = server.serve("w.bin", DATA)
    dest = download(url, cache / "w.bin", sha256=SHA, progress=False)
    dest.write_bytes(DATA[:-1] + b"?")
    with pytest.warns(CorruptFileWarning, match="failed verification"):
        download(url, dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == DATA
    assert (cache / "w.bin.corrupt").read_bytes() == DATA[:-1] + b"?"
    assert len(server.gets("w.bin")) == 2


def test_trust_on_first_use_records_and_detects_tampering(server, cache):
    url = server.serve("w.bin", DATA)
    dest = download(url, cache / "w.bin", progress=False)
    entry = records(cache)["w.bin"]
    assert (entry["sha256"], entry["size"], entry["url"]) == (SHA, len(DATA), url)
    assert verify(dest) == SHA

    dest.write_bytes(b"x" + DATA[1:])
    with pytest.raises(ChecksumError, match="failed verification"):
        verify(dest)
    assert [r.status for r in verify_cache()] == ["mismatch"]
    with pytest.warns(CorruptFileWarning):
        download(url, dest, progress=False)
    assert dest.read_bytes() == DATA and verify(dest) == SHA


def test_trust_on_first_use_refuses_changed_upstream_file_until_forgotten(server, cache):
    url = server.serve("w.bin", DATA)
    dest = download(url, cache / "w.bin", progress=False)
    dest.unlink()
    server.serve("w.bin", OTHER)
    with pytest.raises(ChecksumError, match="forget"):
        download(url, dest, progress=False)
    assert not dest.exists() and leftovers(dest) == []
    assert forget(dest) is True
    download(url, dest, progress=False)
    assert verify(dest) == OTHER_SHA


def test_verify_without_any_known_digest(tmp_path, cache):
    loose = tmp_path / "loose.bin"
    loose.write_bytes(DATA)
    with pytest.raises(ChecksumUnknownError):
        verify(loose)
    assert verify(loose, sha256=SHA.upper()) == SHA
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "absent.bin", sha256=SHA)


def test_verify_cache_reports_missing_files(server, cache):
    url = server.serve("w.bin", DATA)
    download(url, cache / "w.bin", progress=False)
    assert [(r.path.name, r.status) for r in verify_cache()] == [("w.bin", "ok")]
    (cache / "w.bin").unlink()
    assert [(r.path.name, r.status, r.url) for r in verify_cache()] == [("w.bin", "missing", url)]


# -- offline ----------------------------------------------------------------------------------------------


def test_offline_env_fails_fast_without_network(server, cache, monkeypatch):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(url, dest, progress=False)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert url in message and str(dest) in message and "weights=" in message and "PNASNET_OFFLINE" in message
    assert server.requests == []


def test_offline_env_still_uses_a_cached_file(server, cache, monkeypatch):
    url = server.serve("w.bin", DATA)
    dest = download(url, cache / "w.bin", progress=False)
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    assert download(url, dest, progress=False) == dest
    assert len(server.requests) == 1


def test_unreachable_server_fails_fast_with_advice(cache):
    url = closed_port_url()
    dest = cache / "w.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(url, dest, progress=False)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert url in message and str(dest) in message and "weights=" in message
    assert not dest.exists()


# -- several processes ------------------------------------------------------------------------------------

# The child loads download.py (and its neighbours cache.py, transfer.py and ../atomic_files.py) by its
# path: they need only the standard library, filelock and tqdm, and skipping the packages' __init__
# (which import torch) keeps each child start well under a second.
CHILD = textwrap.dedent("""
    import importlib.util, os, sys, types
    folder = os.path.dirname(sys.argv[4])
    for name, path in (("pnasnet", os.path.dirname(folder)), ("pnasnet.weights", folder)):
        package = sys.modules[name] = types.ModuleType(name)
        package.__path__ = [path]
    spec = importlib.util.spec_from_file_location("pnasnet.weights.download", sys.argv[4])
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("ready", flush=True)
    sys.stdin.readline()
    module.download(sys.argv[1], sys.argv[2], sha256=sys.argv[3], progress=True)
    print("done", flush=True)
""")


def start_child(url: str, dest: Path, stderr_path: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(dest), SHA, dl.__file__], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=open(stderr_path, "w"), text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_two_processes_download_the_file_once(server, cache, tmp_path):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    server.gate = threading.Event()       # hold the body back until the second process is waiting
    errs = [tmp_path / "a.err", tmp_path / "b.err"]
    children = [start_child(url, dest, err) for err in errs]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    someone_waits = wait_until(lambda: any("waiting for another process" in e.read_text() for e in errs))
    server.gate.set()
    outputs = [child.communicate(timeout=30)[0] for child in children]
    assert someone_waits, [e.read_text() for e in errs]
    assert [child.returncode for child in children] == [0, 0], [e.read_text() for e in errs]
    assert all("done" in out for out in outputs)
    assert len(server.gets("w.bin")) == 1 and server.body_bytes_sent == len(DATA)
    assert dest.read_bytes() == DATA and leftovers(dest) == []


def test_killed_download_leaves_only_a_partial_that_the_next_call_resumes(server, cache, tmp_path):
    url = server.serve("w.bin", DATA)
    dest = cache / "w.bin"
    part = cache / "w.bin.part"
    server.chunk_size, server.chunk_delay = 8 * 1024, 0.05      # about 2 s for the whole file
    child = start_child(url, dest, tmp_path / "child.err")
    child.stdin.write("go\n")
    child.stdin.flush()
    started = wait_until(lambda: part.exists() and part.stat().st_size >= 40_000)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert started and child.returncode == -signal.SIGKILL
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept < len(DATA)

    server.chunk_delay = 0.0
    download(url, dest, sha256=SHA, progress=False)
    last = server.gets("w.bin")[-1]
    assert (last.range, last.status) == (f"bytes={kept}-", 206)
    assert dest.read_bytes() == DATA and leftovers(dest) == []


def test_unreadable_checksum_record_is_refused_not_ignored(server, cache):
    url = server.serve("w.bin", DATA)
    cache.mkdir()
    (cache / "checksums.json").write_text("{not json")
    with pytest.raises(DownloadError, match="checksums.json"):
        download(url, cache / "w.bin", progress=False)
    assert not (cache / "w.bin").exists()
