"""Each weights source is a list of mirrors tried in order; the timm file is reused from the Hugging
Face cache. Real HTTP servers on 127.0.0.1 (``http_fixture_server``) stand in for the real hosts."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sys
import time
import types
import urllib.parse
from pathlib import Path

import pytest

from http_fixture_server import FixtureServer, closed_port_url
from pnasnet.weights import download as dl
from pnasnet.weights.download import ChecksumError, CorruptFileWarning, DownloadError, download
from pnasnet.weights.hf_cache import HubFile, find_in_hub_cache, hub_cache_dir
from pnasnet.weights.sources import (SOURCES, TIMM_REVISION, WeightsSourceInfo, cached_path, fetch,
                                     find_source)
from test_download import leftovers, records

DATA = random.Random(10).randbytes(120_000)
OTHER = random.Random(11).randbytes(120_000)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()
HF_REPO_FOLDER = "models--timm--pnasnet5large.tf_in1k"      # the hub's layout for timm/pnasnet5large.tf_in1k


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PNASNET_HOME", str(folder))
    monkeypatch.delenv("PNASNET_OFFLINE", raising=False)
    # Never look at the real user's Hugging Face cache; an empty folder unless a test fills it.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)    # import fails: the optional path is off
    monkeypatch.setattr(dl, "RETRY_PAUSE", 0.01)
    return folder


@pytest.fixture
def servers():
    with FixtureServer() as a, FixtureServer() as b, FixtureServer() as c:
        yield a, b, c


def serve_at(server: FixtureServer, url: str, data: bytes) -> None:
    """Serve ``data`` at the path of ``url`` (a registry URL rewritten onto ``server``)."""
    server.serve(urllib.parse.urlsplit(url).path.lstrip("/"), data)


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("pnasnet: warning:")]


def no_network(*args, **kwargs):
    raise AssertionError("the network was used")


# -- the registry -----------------------------------------------------------------------------------------


def test_tf_slim_urls_are_https_with_storage_googleapis_first():
    slim = [source for source in SOURCES if source.name == "tf-slim"]
    assert len(slim) == 2
    for source in slim:
        assert len(source.urls) >= 2 and all(url.startswith("https://") for url in source.urls), source.urls
        assert urllib.parse.urlsplit(source.urls[0]).hostname == "storage.googleapis.com"
        assert all(url.endswith("/models/" + source.filename) for url in source.urls)
        assert source.url == source.urls[0]


def test_registry_mirrors_of_the_other_sources():
    cadene = find_source("pnasnet5_large", "cadene")
    assert cadene.urls[0].startswith("https://github.com/") and cadene.urls[-1].startswith("http://data.lip6.fr/")
    assert cadene.sha256_prefix == "bf079911" and all(url.endswith("-bf079911.pth") for url in cadene.urls)
    timm = find_source("pnasnet5_large", "timm")
    assert len(TIMM_REVISION) == 40 and f"/resolve/{TIMM_REVISION}/model.safetensors" in timm.url
    assert timm.hub_file == HubFile("timm/pnasnet5large.tf_in1k", "model.safetensors", TIMM_REVISION)
    for model in ("pnasnet5_large", "pnasnet5_large_feature_vector"):
        hub = find_source(model, "tf-hub")
        assert hub.urls[0].startswith("https://tfhub.dev/") and hub.urls[0].endswith("?tf-hub-format=compressed")
        assert hub.urls[1].startswith("https://www.kaggle.com/api/v1/models/google/pnasnet/tensorFlow1/")
    assert all(source.urls for source in SOURCES)


def test_source_takes_a_single_url_and_rewrites_prefixes():
    source = WeightsSourceInfo("x", ("pnasnet5_large",), "https://a.example/w.bin", "w.bin", "form", 1001, "d")
    assert source.urls == ("https://a.example/w.bin",) and source.url == "https://a.example/w.bin"
    moved = source.with_url_prefix("https://a.example", "http://127.0.0.1:1")
    assert moved.urls == ("http://127.0.0.1:1/w.bin",) and source.urls == ("https://a.example/w.bin",)
    with pytest.raises(ValueError, match="no URL"):
        source.with_url_prefix("https://b.example", "http://127.0.0.1:1")
    with pytest.raises(ValueError, match="no URL"):
        WeightsSourceInfo("x", ("pnasnet5_large",), (), "w.bin", "form", 1001, "d")


# -- falling through to the next mirror -------------------------------------------------------------------


@pytest.mark.parametrize("failure", [403, 404, 500, 503, "refused"])
def test_failing_first_mirror_falls_through_to_the_second(servers, cache, failure):
    a, b, _ = servers
    first = a.serve("w.bin", DATA) if failure != "refused" else closed_port_url()
    a.status = failure if failure != "refused" else None
    second = b.serve("w.bin", DATA)
    dest = download([first, second], cache / "w.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == DATA and leftovers(dest) == []
    if failure != "refused":
        assert [s.status for s in a.requests] == [failure]
    assert [(s.range, s.status) for s in b.requests] == [(None, 200)]
    assert records(cache)["w.bin"]["url"] == second


def test_fallthrough_is_said_on_stderr_when_progress_is_on(servers, cache, capsys):
    a, b, _ = servers
    a.status = 403
    first, second = a.serve("w.bin", DATA), b.serve("w.bin", DATA)
    download([first, second], cache / "w.bin", sha256=SHA, progress=True)
    err = capsys.readouterr().err
    assert f"pnasnet: {first} failed (HTTP 403 Forbidden); trying the next mirror" in err
    assert f"pnasnet: downloading {second} to {cache / 'w.bin'}" in err


def test_redirect_chain_is_followed(servers, cache, capsys):
    a, b, _ = servers
    final = b.serve("files/w.bin", DATA)
    start = a.redirect("w.bin", 302, a.redirect("moved/w.bin", 301, final))
    dest = download(start, cache / "w.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == DATA
    assert [(s.path, s.status) for s in a.requests] == [("/w.bin", 302), ("/moved/w.bin", 301)]
    assert [(s.path, s.status) for s in b.requests] == [("/files/w.bin", 200)]
    # The notice names where the bytes really came from.
    [warning] = warning_lines(capsys.readouterr().err)
    assert f"downloading {final} (redirected from {start}) over plain http (not encrypted)" in warning


def test_redirect_to_a_non_http_scheme_is_a_failed_mirror(servers, cache):
    """urllib alone would follow a redirect to ftp://; only http(s) is followed."""
    a, b, _ = servers
    elsewhere = closed_port_url().replace("http://", "ftp://")
    first = a.redirect("w.bin", 302, elsewhere)
    with pytest.raises(DownloadError, match=f"refusing to follow a redirect to {elsewhere}"):
        download(first, cache / "w.bin", sha256=SHA, progress=False)
    second = b.serve("w.bin", DATA)
    dest = download([first, second], cache / "w.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == DATA and len(b.requests) == 1


def test_mirror_breaking_off_every_time_falls_through_after_the_retries(servers, cache):
    a, b, _ = servers
    a.drop_every = 10_000
    first, second = a.serve("w.bin", DATA), b.serve("w.bin", DATA)
    dest = download([first, second], cache / "w.bin", sha256=SHA, progress=False, retries=2)
    assert [s.range for s in a.requests] == [None, "bytes=10000-", "bytes=20000-"]
    # The second mirror starts clean: the first one's 30000 bytes are never stitched onto its own.
    assert [(s.range, s.status, s.body_bytes) for s in b.requests] == [(None, 200, len(DATA))]
    assert dest.read_bytes() == DATA and leftovers(dest) == []


def test_a_partial_is_resumed_only_from_its_own_url_and_survives_other_mirrors(servers, cache):
    a, b, _ = servers
    a.status = 403
    first, second = a.serve("w.bin", DATA), b.serve("w.bin", DATA)
    dest = cache / "w.bin"
    b.drop_after = 50_000
    with pytest.raises(DownloadError) as info:
        download([first, second], dest, sha256=SHA, progress=False, retries=0)
    assert f"The 50000 bytes received from {second} are kept in {cache / 'w.bin.part'}" in str(info.value)
    # Next call: the first mirror fails again without touching the second one's partial, which resumes.
    download([first, second], dest, sha256=SHA, progress=False)
    assert [(s.range, s.status) for s in a.requests] == [(None, 403), (None, 403)]  # asked twice, never resumed
    assert [(s.range, s.status) for s in b.requests] == [(None, 200), ("bytes=50000-", 206)]
    assert dest.read_bytes() == DATA and leftovers(dest) == []


def test_partial_from_another_url_is_replaced_not_resumed(servers, cache):
    a, b, _ = servers
    first, second = a.serve("w.bin", DATA), b.serve("w.bin", DATA)
    dest = cache / "w.bin"
    a.drop_after = 50_000
    with pytest.raises(DownloadError):
        download(first, dest, sha256=SHA, progress=False, retries=0)
    assert (cache / "w.bin.part").stat().st_size == 50_000
    download(second, dest, sha256=SHA, progress=False)
    assert [(s.range, s.status) for s in b.requests] == [(None, 200)]
    assert dest.read_bytes() == DATA


def test_wrong_file_from_one_mirror_falls_through(servers, cache):
    a, b, _ = servers
    first, second = a.serve("w.bin", OTHER), b.serve("w.bin", DATA)
    dest = download([first, second], cache / "w.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == DATA and leftovers(dest) == []


def test_every_url_and_why_it_failed_are_in_the_final_error(servers, cache):
    a, b, c = servers
    a.status = 403
    first = a.serve("w.bin", DATA)
    second = closed_port_url()
    b.status = 500
    third = b.serve("w.bin", DATA)
    c.drop_every = 10_000
    fourth = c.serve("w.bin", DATA)
    dest = cache / "w.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download([first, second, third, fourth], dest, sha256=SHA, progress=False)
    assert time.monotonic() - start < 5
    error = info.value
    assert not isinstance(error, ChecksumError)
    message = str(error)
    assert "from any of its 4 URLs" in message
    for url, reason in [(first, "HTTP 403"), (second, "cannot reach the server"),
                        (third, "HTTP 500"), (fourth, "the transfer broke off 3 times")]:
        assert f"\n  {url}\n      {reason}" in message, message
    assert [url for url, _ in error.failures] == [first, second, third, fourth]
    assert str(dest) in message and "weights=" in message
    assert f"are kept in {cache / 'w.bin.part'}" in message
    assert not dest.exists()


def test_every_mirror_delivering_a_wrong_file_is_a_checksum_error(servers, cache):
    a, b, _ = servers
    first, second = a.serve("w.bin", OTHER), b.serve("w.bin", OTHER)
    dest = cache / "w.bin"
    with pytest.raises(ChecksumError) as info:
        download([first, second], dest, sha256=SHA, progress=False)
    message = str(info.value)
    for url in (first, second):
        assert f"\n  {url}\n      checksum mismatch: got sha256 {OTHER_SHA}, expected {SHA}" in message
    assert info.value.expected == SHA
    assert not dest.exists() and leftovers(dest) == []


def test_a_recorded_digest_is_checked_whichever_mirror_delivers(servers, cache):
    """Trust on first use is keyed by the cache path, so a later download from a mirror that serves
    something else is refused, and the next mirror serving the recorded file is used."""
    a, b, _ = servers
    first, second = a.serve("w.bin", DATA), b.serve("w.bin", DATA)
    dest = download([first, second], cache / "w.bin", progress=False)
    dest.unlink()
    a.serve("w.bin", OTHER)
    download([first, second], dest, progress=False)
    assert dest.read_bytes() == DATA and [s.status for s in b.requests] == [200]


# -- offline ----------------------------------------------------------------------------------------------


def test_offline_fails_at_once_listing_every_url(servers, cache, monkeypatch):
    a, b, _ = servers
    first, second = a.serve("w.bin", DATA), b.serve("w.bin", DATA)
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    monkeypatch.setattr(dl, "_open_http", no_network)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download([first, second], cache / "w.bin", progress=False)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert first in message and second in message and "PNASNET_OFFLINE" in message and "weights=" in message
    assert str(cache / "w.bin") in message
    assert a.requests == [] and b.requests == []


def test_offline_registry_fetch_names_all_mirrors(cache, monkeypatch):
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    monkeypatch.setattr(dl, "_open_http", no_network)
    source = find_source("pnasnet5_large", "cadene")
    with pytest.raises(DownloadError) as info:
        fetch(source, progress=False)
    assert all(url in str(info.value) for url in source.urls)
    assert str(cached_path(source)) in str(info.value)


# -- plain http -------------------------------------------------------------------------------------------


def test_plain_http_fallback_is_announced_and_checked(servers, cache, tmp_path, capsys):
    a, _, _ = servers
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(OTHER)
    url = a.serve("w.bin", DATA)
    download([wrong.as_uri(), url], cache / "w.bin", sha256=SHA, progress=False)
    [warning] = warning_lines(capsys.readouterr().err)      # only the http mirror, even with progress off
    assert warning.startswith(f"pnasnet: warning: downloading {url} over plain http (not encrypted)")
    assert "checked against the SHA-256 given" in warning

    # The next use reads the cached, verified file: nothing is fetched and nothing is said.
    download([wrong.as_uri(), url], cache / "w.bin", sha256=SHA, progress=False)
    assert warning_lines(capsys.readouterr().err) == [] and len(a.requests) == 1


def test_plain_http_first_use_says_it_records_the_digest(servers, cache, capsys):
    a, _, _ = servers
    download(a.serve("w.bin", DATA), cache / "w.bin", progress=False)
    [warning] = warning_lines(capsys.readouterr().err)
    assert "first use" in warning


def test_file_url_gives_no_plain_http_notice(cache, tmp_path, capsys):
    source = tmp_path / "w.bin"
    source.write_bytes(DATA)
    download(source.as_uri(), cache / "w.bin", sha256=SHA, progress=False)
    assert warning_lines(capsys.readouterr().err) == []


# -- Cadene's hash prefix -----------------------------------------------------------------------------------


def cadene_on(first: FixtureServer, second: FixtureServer, prefix: str) -> WeightsSourceInfo:
    """The registry's Cadene source with its two hosts moved onto local servers. Its real prefix
    (bf079911) cannot be met by test data, so the test's own prefix stands in for it."""
    source = find_source("pnasnet5_large", "cadene")
    source = source.with_url_prefix("https://github.com", first.base)
    source = source.with_url_prefix("http://data.lip6.fr", second.base)
    return dataclasses.replace(source, sha256_prefix=prefix)


def test_cadene_prefix_mismatch_falls_through_to_the_next_mirror(servers, cache):
    a, b, _ = servers
    source = cadene_on(a, b, SHA[:8])
    assert not OTHER_SHA.startswith(SHA[:8])
    serve_at(a, source.urls[0], OTHER)
    serve_at(b, source.urls[1], DATA)
    path = fetch(source, progress=False)
    assert path == cached_path(source) and path.read_bytes() == DATA
    assert leftovers(path) == []                    # the wrong file from the first mirror is gone
    assert records(cache)[path.name]["url"] == source.urls[1]
    assert [s.status for s in a.requests] == [200] and [s.status for s in b.requests] == [200]


def test_cadene_prefix_mismatch_everywhere_names_the_prefix(servers, cache):
    a, b, _ = servers
    source = cadene_on(a, b, SHA[:8])
    serve_at(a, source.urls[0], OTHER)
    serve_at(b, source.urls[1], OTHER)
    with pytest.raises(ChecksumError, match=f"does not start with {SHA[:8]}") as info:
        fetch(source, progress=False)
    assert all(url in str(info.value) for url in source.urls)
    assert not cached_path(source).exists() and leftovers(cached_path(source)) == []


def test_cached_file_with_the_wrong_prefix_is_moved_aside(servers, cache):
    a, b, _ = servers
    source = cadene_on(a, b, SHA[:8])
    serve_at(a, source.urls[0], DATA)
    cache.mkdir()
    cached_path(source).write_bytes(OTHER)          # e.g. left by an older version that kept it
    with pytest.warns(CorruptFileWarning, match=f"does not start with {SHA[:8]}"):
        path = fetch(source, progress=False)
    assert path.read_bytes() == DATA
    assert path.with_name(path.name + ".corrupt").read_bytes() == OTHER


# -- timm: pinned revision, and the Hugging Face cache --------------------------------------------------------


def make_hub_snapshot(hub: Path, revision: str, data: bytes) -> Path:
    """A file as huggingface_hub stores it: a blob, a snapshot symlink to it, refs/main naming the revision."""
    repo = hub / HF_REPO_FOLDER
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / revision / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_timm_source_requests_the_pinned_revision(servers, cache):
    a, _, _ = servers
    source = find_source("pnasnet5_large", "timm").with_url_prefix("https://huggingface.co", a.base)
    serve_at(a, source.url, DATA)
    path = fetch(source, progress=False)
    assert path == cached_path(source) and path.read_bytes() == DATA
    [seen] = a.requests
    assert seen.path.endswith(f"/resolve/{TIMM_REVISION}/model.safetensors") and seen.status == 200


def test_timm_file_in_the_hugging_face_cache_is_used_in_place(tmp_path, cache, monkeypatch):
    hub = tmp_path / "hf-hub"
    snapshot = make_hub_snapshot(hub, TIMM_REVISION, DATA)
    monkeypatch.setattr(dl, "_open_http", no_network)       # no server exists; any download attempt fails
    source = find_source("pnasnet5_large", "timm")
    assert fetch(source, progress=False) == snapshot
    assert not cached_path(source).exists()                 # used where it is, not copied
    # Checked against the SHA-256 its blob is named by; nothing recorded for a file that is not ours
    # (the user may clean that cache: `pnasnet weights verify` must not then report it missing).
    assert not (cache / "checksums.json").exists()
    assert fetch(source, progress=False) == snapshot

    # Checked on every use: once changed, it is left alone (not ours) and not used.
    snapshot.resolve().write_bytes(OTHER)
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    with pytest.warns(CorruptFileWarning, match="Hugging Face cache"):
        with pytest.raises(DownloadError, match="PNASNET_OFFLINE"):
            fetch(source, progress=False)
    assert snapshot.read_bytes() == OTHER


def test_a_hub_blob_whose_content_is_not_its_name_is_not_used(tmp_path, cache, monkeypatch):
    """The blob's name is the SHA-256 the hub published for the file: a copy that differs from it
    (corrupted, or replaced) is refused even on its first use here."""
    snapshot = make_hub_snapshot(tmp_path / "hf-hub", TIMM_REVISION, DATA)
    snapshot.resolve().write_bytes(OTHER)           # the blob keeps DATA's digest as its name
    monkeypatch.setenv("PNASNET_OFFLINE", "1")
    with pytest.warns(CorruptFileWarning, match="Hugging Face cache"):
        with pytest.raises(DownloadError, match="PNASNET_OFFLINE"):
            fetch(find_source("pnasnet5_large", "timm"), progress=False)


def test_hugging_face_snapshot_of_another_revision_is_not_used(servers, tmp_path, cache):
    a, _, _ = servers
    make_hub_snapshot(tmp_path / "hf-hub", "0" * 40, OTHER)    # refs/main points at it, too
    source = find_source("pnasnet5_large", "timm").with_url_prefix("https://huggingface.co", a.base)
    serve_at(a, source.url, DATA)
    path = fetch(source, progress=False)
    assert path == cached_path(source) and path.read_bytes() == DATA and len(a.requests) == 1


def test_hub_cache_dir_follows_the_hub_environment(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_cache_dir() == tmp_path / "hub"


def test_huggingface_hub_is_asked_for_the_pinned_revision_when_installed(tmp_path, cache, monkeypatch):
    elsewhere = tmp_path / "elsewhere" / "model.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(DATA)
    calls = []

    def try_to_load_from_cache(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        return str(elsewhere) if revision == TIMM_REVISION else None

    fake = types.ModuleType("huggingface_hub")
    fake.try_to_load_from_cache = try_to_load_from_cache
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    file = find_source("pnasnet5_large", "timm").hub_file
    assert find_in_hub_cache(file) == elsewhere
    assert calls == [("timm/pnasnet5large.tf_in1k", "model.safetensors", TIMM_REVISION)]
    fake.try_to_load_from_cache = lambda *args, **kwargs: object()     # the hub's "known absent" sentinel
    assert find_in_hub_cache(file) is None
