"""Download, cache and verify pretrained weight files.

A download is safe to interrupt at any moment and safe to run from several processes at once:

* the bytes go to ``<dest>.part`` and reach ``<dest>`` only by ``os.replace`` once they are complete
  and verified, so ``<dest>`` is either absent or whole and checked;
* an interrupted transfer is resumed with an HTTP ``Range`` request. ``<dest>.part.json`` remembers
  the URL and the server's validator (ETag or Last-Modified), sent back as ``If-Range``, so the bytes
  of two different versions of a file are never stitched together;
* ``<dest>.lock`` is a cross-process lock: a second process wanting the same file waits, then finds
  the finished file;
* a file whose SHA-256 is not known in advance is trusted on first use: its digest is recorded in
  ``<cache>/checksums.json`` and checked on every later use (``verify``);
* a file may have several URLs (mirrors), tried in order: one that fails (HTTP error, unreachable,
  broken off after the resume retries, or wrong content) passes on to the next, and the final error
  lists every URL and why it failed. A partial file is only ever resumed from the URL that produced it.

Cache layout (``cache_dir()``: ``$PNASNET_HOME``, else ``$XDG_CACHE_HOME/pnasnet``, else
``~/.cache/pnasnet``)::

    <cache>/checksums.json          {"files": {KEY: {"sha256", "size", "url", "recorded"}}}
    <cache>/checksums.json.lock     guards read-modify-write of checksums.json
    <cache>/NAME                    a finished, verified file
    <cache>/NAME.part, .part.json   an unfinished download and where it came from
    <cache>/NAME.lock               held while NAME is being fetched
    <cache>/NAME.corrupt            the last copy of NAME that failed verification (never used)

KEY is the file's path relative to the cache folder in POSIX form (``pnasnet-5_large.tar.gz``), or its
absolute path for a file outside the cache. Keying by path rather than URL lets a file fetched from a
mirror be checked against the same record, and lets ``verify`` work from the path alone.

Set ``PNASNET_OFFLINE=1`` to never touch the network (``file://`` URLs still work).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout
from tqdm import tqdm

__all__ = ["ChecksumError", "ChecksumUnknownError", "CorruptFileWarning", "DownloadError", "VerifyResult",
           "cache_dir", "check_existing", "default_cache_dir", "download", "forget", "sha256_file", "verify",
           "verify_cache"]

ENV_HOME = "PNASNET_HOME"
ENV_OFFLINE = "PNASNET_OFFLINE"
CHECKSUMS_NAME = "checksums.json"
CHUNK_SIZE = 1 << 20
CONNECT_TIMEOUT = 5.0       # seconds; a reachable server answers far sooner, an offline machine fails fast
RETRY_PAUSE = 0.5           # seconds before resuming a dropped transfer (times the attempt number)
_USER_AGENT = f"pnasnet-weights/0.1 Python-urllib/{sys.version_info[0]}.{sys.version_info[1]}"
_SCHEMES = ("http", "https", "file")

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A file could not be fetched: offline, unreachable, an HTTP error, or an interrupted transfer.

    ``reason`` is a one-line why (without the advice); ``failures`` lists ``(url, reason)`` for every
    URL tried when a file has several mirrors (empty otherwise).
    """

    def __init__(self, message: str, *, reason: str | None = None,
                 failures: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.reason = reason if reason is not None else message
        self.failures = tuple(failures)


class ChecksumError(DownloadError):
    """A file's size or SHA-256 is not the expected one. The file was not (and will not be) used."""

    def __init__(self, message: str, *, url: str | None = None, path: Path | None = None,
                 expected: str | None = None, actual: str | None = None, reason: str | None = None,
                 failures: Sequence[tuple[str, str]] = ()):
        super().__init__(message, reason=reason, failures=failures)
        self.url, self.path, self.expected, self.actual = url, path, expected, actual


class ChecksumUnknownError(LookupError):
    """``verify`` was asked to check a file for which no digest is given or recorded."""


class CorruptFileWarning(UserWarning):
    """A cached file failed verification; it was moved aside and will be downloaded again."""


# --------------------------------------------------------------------------------------------------
# Cache folder and hashing


def default_cache_dir() -> Path:
    """``$PNASNET_HOME``, else ``$XDG_CACHE_HOME/pnasnet``, else ``~/.cache/pnasnet`` (not created)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "pnasnet"
    return Path.home() / ".cache" / "pnasnet"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override`` when given, else ``default_cache_dir()``."""
    return Path(override).expanduser() if override is not None else default_cache_dir()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_digest(sha256: str | None, *, prefix: bool = False) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,64}" if prefix else r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a SHA-256 hex digest{' prefix' if prefix else ''}: {sha256!r}")
    return digest


# --------------------------------------------------------------------------------------------------
# Small file-system helpers


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _part_meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def _lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, data: dict) -> None:
    """Write JSON through a temporary sibling and ``os.replace`` so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(lock_path: Path, waiting_message: str, *, talk: bool) -> Iterator[None]:
    """Hold a cross-process lock; say so once on stderr if another process has it."""
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0.1)
    except Timeout:
        log.info(waiting_message)
        if talk:
            print(f"pnasnet: {waiting_message}", file=sys.stderr, flush=True)
        # No timeout: the OS releases the lock if its holder dies, so this cannot wait on a dead process.
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# Trust-on-first-use record


def _record_location(path: Path, cache: str | os.PathLike | None) -> tuple[Path, str]:
    """(checksums.json, key) for ``path``: key relative to the cache when inside it, else absolute."""
    root = cache_dir(cache).resolve()
    target = Path(path).expanduser().resolve()
    try:
        key = target.relative_to(root).as_posix()
    except ValueError:
        key = target.as_posix()
    return root / CHECKSUMS_NAME, key


def _read_records(json_path: Path) -> dict[str, dict]:
    if not json_path.exists():
        return {}
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                                                  for entry in files.values()):
            raise TypeError("'files' must map each file to an object with a 'sha256'")
    except (OSError, ValueError, KeyError, TypeError) as error:
        # Refuse rather than ignore: ignoring would silently drop the trust we recorded.
        raise DownloadError(f"cannot read the checksum record {json_path} ({error}); repair it or delete it "
                            f"(the files it listed are then trusted again on their next use)") from error
    return files


def _recorded(path: Path, cache: str | os.PathLike | None) -> dict | None:
    json_path, key = _record_location(path, cache)
    return _read_records(json_path).get(key)


def _update_record(path: Path, cache: str | os.PathLike | None, entry: dict | None) -> None:
    """Set (or with ``None`` remove) the record of ``path``, under the record's own lock."""
    json_path, key = _record_location(path, cache)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(json_path.with_name(json_path.name + ".lock"), f"waiting for {json_path}", talk=False):
        files = _read_records(json_path)
        if entry is None:
            if files.pop(key, None) is None:
                return
        else:
            files[key] = entry
        _atomic_write_json(json_path, {"format": "pnasnet-checksums/1", "files": files})


def _record(path: Path, cache: str | os.PathLike | None, *, sha256: str, size: int, url: str | None) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    _update_record(path, cache, {"sha256": sha256, "size": size, "url": url, "recorded": now})


def forget(path: str | os.PathLike, *, cache: str | os.PathLike | None = None) -> bool:
    """Drop the recorded digest of ``path`` (for a file that changed upstream on purpose).

    Returns whether there was a record. The file itself is left alone.
    """
    had = _recorded(Path(path), cache) is not None
    _update_record(Path(path), cache, None)
    return had


@dataclass(frozen=True)
class _Expected:
    """What a file must be: digest and size (either may be unknown), and where that knowledge comes from.

    ``sha256_prefix`` is the start of the digest that a file's published name promises (Cadene's
    ``-bf079911.pth``); it is checked in addition to the full digest, and alone when that is unknown.
    """

    sha256: str | None
    size: int | None
    source: str
    from_record: bool = False
    sha256_prefix: str | None = None

    @property
    def known(self) -> bool:
        return self.sha256 is not None

    def describe(self) -> str:
        """What a download is checked against, for the plain-http notice."""
        if self.sha256 is not None:
            return "the SHA-256 recorded on its first download" if self.from_record else "the SHA-256 given"
        if self.sha256_prefix:
            return f"the SHA-256 prefix {self.sha256_prefix} its name promises"
        return "nothing yet (first use: its SHA-256 is recorded now and checked on every later use)"

    def prefix_problem(self, actual: str) -> str | None:
        if self.sha256_prefix and not actual.startswith(self.sha256_prefix):
            return f"sha256 {actual} does not start with {self.sha256_prefix}, the prefix its name promises"
        return None


def _expectation(path: Path, sha256: str | None, size: int | None,
                 cache: str | os.PathLike | None, sha256_prefix: str | None = None) -> _Expected:
    """A given digest wins over the record; the record is used only when it is all we know."""
    if sha256 is not None:
        return _Expected(sha256, size, "given", sha256_prefix=sha256_prefix)
    entry = _recorded(path, cache)
    if entry is None:
        return _Expected(None, size, "unknown", sha256_prefix=sha256_prefix)
    json_path, _ = _record_location(path, cache)
    return _Expected(entry["sha256"], size if size is not None else entry.get("size"),
                     f"recorded on first download in {json_path}", from_record=True, sha256_prefix=sha256_prefix)


def _inspect(path: Path, expected: _Expected) -> tuple[str | None, str | None]:
    """(why ``path`` does not meet ``expected`` or None, its SHA-256 if it had to be computed)."""
    actual_size = path.stat().st_size
    if expected.size is not None and actual_size != expected.size:
        return f"size {actual_size} bytes, expected {expected.size}", None
    if expected.sha256 is None and expected.sha256_prefix is None:
        return None, None
    actual = sha256_file(path)
    if expected.sha256 is not None and actual != expected.sha256:
        return f"sha256 {actual}, expected {expected.sha256} ({expected.source})", actual
    return expected.prefix_problem(actual), actual


def _mismatch(path: Path, expected: _Expected) -> tuple[str, str | None] | None:
    """None if ``path`` meets ``expected``; else (reason, actual digest or None)."""
    problem, actual = _inspect(path, expected)
    return None if problem is None else (problem, actual)


# --------------------------------------------------------------------------------------------------
# Verification of finished files


def verify(path: str | os.PathLike, *, sha256: str | None = None,
           cache: str | os.PathLike | None = None) -> str:
    """Check ``path`` against ``sha256`` or, when not given, its trust-on-first-use record.

    Returns the file's SHA-256. Raises ``FileNotFoundError``, ``ChecksumError`` on a mismatch and
    ``ChecksumUnknownError`` when there is nothing to check against.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    expected = _expectation(path, _normalise_digest(sha256), None, cache)
    if not expected.known:
        raise ChecksumUnknownError(f"no checksum is known for {path}: pass sha256= or download it with "
                                   f"pnasnet so that its digest is recorded")
    problem = _mismatch(path, expected)
    if problem is not None:
        reason, actual = problem
        entry = _recorded(path, cache) or {}
        raise ChecksumError(f"{path} failed verification: {reason}", url=entry.get("url"), path=path,
                            expected=expected.sha256, actual=actual)
    return expected.sha256


@dataclass(frozen=True)
class VerifyResult:
    """One recorded file checked by ``verify_cache``: status is "ok", "missing" or "mismatch"."""

    path: Path
    status: str
    expected: str
    actual: str | None
    url: str | None


def verify_cache(cache: str | os.PathLike | None = None) -> list[VerifyResult]:
    """Check every file recorded in ``<cache>/checksums.json`` (for ``pnasnet weights verify``)."""
    root = cache_dir(cache).resolve()
    results = []
    for key, entry in sorted(_read_records(root / CHECKSUMS_NAME).items()):
        path = root / key   # an absolute key stays absolute under the / operator
        expected = entry["sha256"]
        if not path.is_file():
            results.append(VerifyResult(path, "missing", expected, None, entry.get("url")))
            continue
        actual = sha256_file(path)
        status = "ok" if actual == expected else "mismatch"
        results.append(VerifyResult(path, status, expected, actual, entry.get("url")))
    return results


# --------------------------------------------------------------------------------------------------
# Opening a URL (with a short connect timeout) at a byte offset


class _ShortConnect:
    """Connection mixin: connect within ``CONNECT_TIMEOUT``, then let reads wait the caller's timeout."""

    def connect(self):
        read_timeout = self.timeout
        if isinstance(read_timeout, (int, float)):
            self.timeout = min(read_timeout, CONNECT_TIMEOUT)
        try:
            super().connect()   # for HTTPS this includes the TLS handshake
        finally:
            self.timeout = read_timeout
        if isinstance(read_timeout, (int, float)):
            self.sock.settimeout(read_timeout)


class _ShortConnectHTTPConnection(_ShortConnect, http.client.HTTPConnection):
    pass


class _ShortConnectHTTPSConnection(_ShortConnect, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_ShortConnectHTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_ShortConnectHTTPSConnection, req, context=self._context)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects (release assets live behind them) but only to http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"refusing to follow a redirect to {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler, _RedirectHandler)


@dataclass
class _Body:
    """A response body positioned at byte ``start`` of the file.

    ``length`` is how many bytes it should deliver and ``total`` the whole file's size (None when the
    server does not say); ``validator`` is the ETag or Last-Modified to resume this version with;
    ``url`` is where the bytes really come from, after redirects (None: the URL asked for).
    """

    stream: BinaryIO
    start: int
    length: int | None
    total: int | None
    validator: str | None = None
    url: str | None = None


class _FetchFailed(Exception):
    """Internal: the request failed before any body arrived (turned into DownloadError with advice)."""


class _Interrupted(Exception):
    """Internal: the body stopped before its end; what arrived is kept in the .part file."""


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


def _header_int(headers, name: str) -> int | None:
    value = headers.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


def _validator(headers) -> str | None:
    """A validator usable in If-Range: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _open_file_url(url: str, offset: int) -> _Body:
    path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    try:
        stream = open(path, "rb")
    except OSError as error:
        raise _FetchFailed(f"cannot open {path} ({error.strerror or error})") from error
    total = os.fstat(stream.fileno()).st_size
    start = offset if offset <= total else 0
    stream.seek(start)
    return _Body(stream, start, total - start, total)


def _open_http(url: str, offset: int, validator: str | None, timeout: float) -> _Body:
    """GET ``url`` from byte ``offset``; returns a body starting at ``offset`` or at 0 (start over)."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator   # the server sends the whole (new) file if it changed
    try:
        response = _opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        with contextlib.closing(error):
            if error.code == 416 and offset:
                return _after_unsatisfiable_range(url, offset, error.headers, timeout)
            raise _FetchFailed(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise _FetchFailed(f"cannot reach the server ({reason})") from error

    final_url = response.geturl()
    if response.status == 206 and offset:
        match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
        if match and int(match.group(1)) == offset and int(match.group(2)) >= offset:
            total = None if match.group(3) == "*" else int(match.group(3))
            return _Body(response, offset, int(match.group(2)) - offset + 1, total, validator, final_url)
        # A range we did not ask for: do not guess how it lines up with our bytes, start over.
        response.close()
        return _open_http(url, 0, None, timeout)
    if response.status == 200:
        # Also what a server that ignores Range (or whose file changed, via If-Range) answers.
        length = _header_int(response.headers, "Content-Length")
        return _Body(response, 0, length, length, _validator(response.headers), final_url)
    response.close()
    raise _FetchFailed(f"unexpected HTTP status {response.status}")


def _after_unsatisfiable_range(url: str, offset: int, headers, timeout: float) -> _Body:
    """416: our partial file is already complete (``bytes */offset``) or longer than the file."""
    match = _UNSATISFIED_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if match and int(match.group(1)) == offset:
        return _Body(_EmptyStream(), offset, 0, offset)
    return _open_http(url, 0, None, timeout)


class _EmptyStream:
    """Body of a transfer with nothing left to send."""

    def read1(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# One download: the .part file, resuming, retrying, verifying, finishing


def _is_offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower()


def _advice_tail(dest: Path) -> str:
    return (f"\n  destination: {dest}\n"
            f"Download the file by other means and save it at that path, or pass a local file or folder "
            f"instead of downloading (e.g. weights='/path/to/model.ckpt').")


def _advice(urls: Sequence[str], dest: Path) -> str:
    """Where the file is published, where to put it by hand, and how to do without downloading."""
    label = "URL:        " if len(urls) == 1 else "URLs:       "
    return f"\n  {label} {urls[0]}" + "".join(f"\n               {url}" for url in urls[1:]) + _advice_tail(dest)


def _partial_meta(dest: Path) -> dict | None:
    """What ``<dest>.part.json`` says about the partial download (None if absent or unreadable)."""
    try:
        meta = json.loads(_part_meta_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _read_chunk(stream: BinaryIO) -> bytes:
    """Whatever has arrived (up to CHUNK_SIZE); a broken connection becomes ``_Interrupted``."""
    try:
        return stream.read1(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as error:   # reset, timeout, IncompleteRead
        raise _Interrupted(f"{type(error).__name__}: {error}") from error


class _Download:
    """Fetches one ``url`` into ``dest`` through ``dest.part``; the caller holds ``dest``'s lock.

    Errors are raised without the advice (``download`` adds it, once, for all the URLs it tried).
    """

    def __init__(self, url: str, dest: Path, expected: _Expected, *, cache: str | os.PathLike | None,
                 progress: bool, timeout: float, retries: int):
        self.url, self.dest, self.expected, self.cache = url, dest, expected, cache
        self.progress, self.timeout, self.retries = progress, timeout, retries
        self.part, self.meta = _part_path(dest), _part_meta_path(dest)
        self._warned_plain_http = False

    def run(self) -> str:
        """Download, verify and move into place; returns the file's SHA-256."""
        resumed = self._fetch()
        try:
            return self._verify_and_finish()
        except ChecksumError:
            if not resumed or not (self.expected.known or self.expected.sha256_prefix):
                raise
        # The kept partial may have been damaged, or belong to an older version of the file that the
        # server did not tell us about: one more try from scratch before giving up.
        log.warning("resumed download of %s failed verification; downloading it again from the start", self.url)
        self._fetch()
        return self._verify_and_finish()

    def discard_partial(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _partial_is_ours(self) -> bool:
        meta = _partial_meta(self.dest)
        return meta is not None and meta.get("url") == self.url

    # -- transfer ----------------------------------------------------------------------------------

    def _fetch(self) -> bool:
        """Fill ``.part`` completely, resuming and retrying dropped transfers. Returns whether it resumed."""
        resumed = False
        attempt = 0
        while True:
            body = self._open()
            resumed = resumed or body.start > 0
            try:
                self._check_announced_size(body)
                self._receive(body)
                return resumed
            except _Interrupted as error:
                kept = self.part.stat().st_size if self.part.exists() else 0
                if attempt >= self.retries:
                    raise DownloadError(f"the download of {self.url} was interrupted ({error}); the {kept} bytes "
                                        f"received are kept in {self.part} and the next attempt resumes from "
                                        f"there.",
                                        reason=f"the transfer broke off {attempt + 1} times (last: {error})") \
                        from error
                attempt += 1
                log.warning("download of %s interrupted (%s); resuming from byte %d", self.url, error, kept)
                time.sleep(RETRY_PAUSE * attempt)
            finally:
                body.stream.close()

    def _open(self) -> _Body:
        offset, validator = self._resumable_offset()
        try:
            if _scheme(self.url) == "file":
                body = _open_file_url(self.url, offset)
            else:
                body = _open_http(self.url, offset, validator, self.timeout)
        except _FetchFailed as error:
            raise DownloadError(f"could not download {self.url}: {error}.", reason=str(error)) from error
        self._notice_plain_http(body)
        return body

    def _notice_plain_http(self, body: _Body) -> None:
        """Say once, whatever ``progress``, when the bytes travel unencrypted (also after a redirect)."""
        where = body.url or self.url
        if self._warned_plain_http or _scheme(where) != "http":
            return
        self._warned_plain_http = True
        via = "" if where == self.url else f" (redirected from {self.url})"
        message = (f"downloading {where}{via} over plain http (not encrypted); the file is checked against "
                   f"{self.expected.describe()}")
        log.info(message)    # printed below in any case: not log.warning, which would say it twice
        print(f"pnasnet: warning: {message}", file=sys.stderr, flush=True)

    def _resumable_offset(self) -> tuple[int, str | None]:
        """Bytes already in ``.part`` that may be resumed (0 if none or of unknown origin), and the validator."""
        if not self.part.exists():
            return 0, None
        meta = _partial_meta(self.dest)
        offset = self.part.stat().st_size
        too_long = self.expected.size is not None and offset > self.expected.size
        if meta is None or too_long or offset == 0:
            self.discard_partial()
            return 0, None
        if meta.get("url") != self.url:
            # Another mirror's bytes: never resumed from here (two hosts are not known to serve the same
            # bytes, and the validator is the other host's), but left alone until a body from this URL
            # arrives and replaces them, so a mirror that fails at once does not cost the other its partial.
            return 0, None
        return offset, meta.get("validator")

    def _check_announced_size(self, body: _Body) -> None:
        """Fail before transferring anything if the server announces a size other than the expected one."""
        if body.total is None or self.expected.size is None or body.total == self.expected.size:
            return
        if self._partial_is_ours():
            self.discard_partial()
        reason = f"the server announces {body.total} bytes, {self.expected.size} are expected ({self.expected.source})"
        raise ChecksumError(f"{self.url} is {body.total} bytes according to the server, but {self.expected.size} "
                            f"are expected ({self.expected.source}); not downloading it to {self.dest}",
                            url=self.url, path=self.dest, expected=self.expected.sha256, reason=reason)

    def _receive(self, body: _Body) -> None:
        """Append the body to ``.part`` (or rewrite it when the body starts at byte 0)."""
        if body.start == 0:
            # Remember where these bytes come from before writing any, so a resume can check it.
            _atomic_write_json(self.meta, {"url": self.url, "validator": body.validator, "total": body.total})
        received = 0
        with open(self.part, "ab" if body.start else "wb") as out, self._progress_bar(body) as bar:
            try:
                while chunk := _read_chunk(body.stream):
                    out.write(chunk)    # a write error (disk full) is not an interruption: it propagates
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                out.flush()
                os.fsync(out.fileno())
        if body.length is not None and received < body.length:
            raise _Interrupted(f"connection closed after {body.start + received} of "
                               f"{body.start + body.length} bytes")

    def _progress_bar(self, body: _Body) -> tqdm:
        # disable=None lets tqdm switch itself off when stderr is not a terminal.
        return tqdm(total=body.total, initial=body.start, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=self.dest.name, file=sys.stderr, disable=None if self.progress else True,
                    leave=False)

    # -- finish --------------------------------------------------------------------------------------

    def _verify_and_finish(self) -> str:
        actual_size = self.part.stat().st_size
        actual = sha256_file(self.part)
        expected = self.expected
        reason, hint = None, ""
        if expected.size is not None and actual_size != expected.size:
            reason = f"got {actual_size} bytes, expected {expected.size} ({expected.source})"
        elif expected.known and actual != expected.sha256:
            reason = f"checksum mismatch: got sha256 {actual}, expected {expected.sha256} ({expected.source})"
        if reason is not None and expected.from_record:
            hint = (f" If the file changed upstream on purpose, drop the old record with "
                    f"pnasnet.weights.download.forget({str(self.dest)!r}) and download again.")
        reason = reason or expected.prefix_problem(actual)
        if reason is not None:
            self.discard_partial()
            raise ChecksumError(f"{self.url}: {reason}; the downloaded file {self.part} was deleted and "
                                f"{self.dest} was not written.{hint}",
                                url=self.url, path=self.dest, expected=expected.sha256, actual=actual, reason=reason)
        _record(self.dest, self.cache, sha256=actual, size=actual_size, url=self.url)
        # Record first, then rename: a kill in between leaves a complete .part that the next call
        # checks (against this record) and finishes, never a file without a record.
        os.replace(self.part, self.dest)
        _fsync_dir(self.dest.parent)
        self.meta.unlink(missing_ok=True)
        return actual


def download(url: str | Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
             sha256_prefix: str | None = None, size: int | None = None, progress: bool = True,
             timeout: float = 10.0, retries: int = 2, cache: str | os.PathLike | None = None) -> Path:
    """Make ``dest`` a complete, verified copy of ``url`` and return its path.

    - ``url`` is one URL or a sequence of mirrors of the same file, tried in order: a mirror that
      answers an HTTP error, cannot be reached, breaks off (after ``retries`` resumes) or delivers a file
      that fails verification passes on to the next. A partial file is resumed only from its own URL.
    - An existing ``dest`` is checked (against ``sha256``/``size`` if given, else the digest recorded
      when it was first downloaded) and returned; one that fails is moved to ``<dest>.corrupt`` with a
      ``CorruptFileWarning`` and downloaded again.
    - Otherwise the file is fetched into ``<dest>.part`` (resuming one left by an earlier attempt),
      checked, and moved into place atomically. Dropped connections are resumed up to ``retries`` times.
    - Its digest is recorded in ``<cache>/checksums.json`` (trust on first use); ``cache`` defaults to
      ``cache_dir()``. ``sha256_prefix`` (hex) is a start the digest must have, checked in addition.

    URLs are http(s) or ``file://``. ``timeout`` bounds each read; connecting is bounded by
    ``CONNECT_TIMEOUT`` as well, so an offline machine fails within seconds. ``progress`` shows a
    progress bar on a terminal (stderr); a transfer over plain http is announced on stderr whatever
    ``progress`` says. Raises ``DownloadError`` (with every URL tried and why it failed, the
    destination and what to do instead) or its subclass ``ChecksumError`` (when every URL delivered a
    wrong file); with ``PNASNET_OFFLINE=1`` nothing is fetched over the network.
    """
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise ValueError("no URL to download from")
    for one in urls:
        if _scheme(one) not in _SCHEMES:
            raise ValueError(f"unsupported URL scheme {_scheme(one)!r} in {one!r}; use http, https or file")
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and not dest.is_file():
        raise DownloadError(f"{dest} exists and is not a file; cannot download {urls[0]} there")
    sha256 = _normalise_digest(sha256)
    sha256_prefix = _normalise_digest(sha256_prefix, prefix=True)
    dest.parent.mkdir(parents=True, exist_ok=True)

    # Fast path without the lock: a finished file only ever appears whole (os.replace).
    if dest.is_file() and _existing_ok(dest, urls[0], sha256, sha256_prefix, size, cache, repair=False):
        return dest
    with _locked(_lock_path(dest), f"waiting for another process that is downloading {dest.name}",
                 talk=progress):
        # Another process may have finished (or a bad file may still be here): look again, under the lock.
        if dest.is_file() and _existing_ok(dest, urls[0], sha256, sha256_prefix, size, cache, repair=True):
            return dest
        failures: list[tuple[str, DownloadError | None, str]] = []
        for index, one in enumerate(urls):
            if _is_offline() and _scheme(one) != "file":
                failures.append((one, None, f"not tried: {ENV_OFFLINE} is set, so the network is not used"))
                continue
            if progress:
                print(f"pnasnet: downloading {one} to {dest}", file=sys.stderr, flush=True)
            expected = _expectation(dest, sha256, size, cache, sha256_prefix)
            try:
                _Download(one, dest, expected, cache=cache, progress=progress, timeout=timeout,
                          retries=retries).run()
                return dest
            except DownloadError as error:
                failures.append((one, error, error.reason))
                if index + 1 < len(urls):
                    log.warning("%s failed (%s); trying the next mirror", one, error.reason)
                    if progress:
                        print(f"pnasnet: {one} failed ({error.reason}); trying the next mirror",
                              file=sys.stderr, flush=True)
        raise _all_failed(urls, failures, dest, sha256)


def _all_failed(urls: tuple[str, ...], failures: list[tuple[str, DownloadError | None, str]], dest: Path,
                sha256: str | None) -> DownloadError:
    """The error for a file that no URL delivered: every URL, why it failed, and what to do instead."""
    listed = [(url, reason) for url, _, reason in failures]
    errors = [error for _, error, _ in failures if error is not None]
    if len(urls) == 1:      # as before mirrors existed: the one error, with the advice
        url, error, reason = failures[0]
        if isinstance(error, ChecksumError):
            return error    # says what was expected and what arrived; advice to fetch it by hand would not help
        message = f"not downloading {url}: {ENV_OFFLINE} is set, so the network is not used." if error is None \
            else str(error)
        combined = DownloadError(message + _advice(urls, dest), reason=reason, failures=listed)
        combined.__cause__ = error
        return combined
    if not errors:          # offline, nothing but network URLs
        return DownloadError(f"not downloading {dest.name}: {ENV_OFFLINE} is set, so the network is not used."
                             + _advice(urls, dest), reason=f"{ENV_OFFLINE} is set", failures=listed)
    lines = [f"could not download {dest.name} from any of its {len(urls)} URLs (tried in order):"]
    lines += [f"  {url}\n      {reason}" for url, reason in listed]
    message = "\n".join(lines)
    part, meta = _part_path(dest), _partial_meta(dest)
    if part.exists() and meta is not None and meta.get("url") in urls:
        message += (f"\nThe {part.stat().st_size} bytes received from {meta['url']} are kept in {part} and are "
                    f"resumed when that URL is tried again.")
    message += _advice_tail(dest)
    reason = f"all {len(urls)} URLs failed"
    if len(errors) == len(failures) and all(isinstance(error, ChecksumError) for error in errors):
        combined = ChecksumError(message, path=dest, expected=sha256, reason=reason, failures=listed)
    else:
        combined = DownloadError(message, reason=reason, failures=listed)
    combined.__cause__ = errors[-1]
    return combined


def _record_if_new(path: Path, cache: str | os.PathLike | None, sha256: str | None, url: str | None) -> None:
    """Record a file used for the first time, or whose record disagrees with a digest given by the caller."""
    entry = _recorded(path, cache)
    digest = sha256 or sha256_file(path)
    if entry is None or entry.get("sha256") != digest:
        _record(path, cache, sha256=digest, size=path.stat().st_size, url=url)


def check_existing(path: str | os.PathLike, *, url: str | None = None, sha256: str | None = None,
                   sha256_prefix: str | None = None, cache: str | os.PathLike | None = None) -> str | None:
    """Check a finished file that pnasnet did not download (one in another tool's cache) the way a
    cached file is checked: against ``sha256`` when given, else its trust-on-first-use record (keyed
    by its absolute path, recorded now if it has none), and against ``sha256_prefix``.

    Returns None when the file may be used, else why not. The file itself is never moved or changed
    (it is not ours); ``url`` is only noted in the record.
    """
    path = Path(path).expanduser().absolute()
    expected = _expectation(path, _normalise_digest(sha256), None, cache,
                            _normalise_digest(sha256_prefix, prefix=True))
    problem, actual = _inspect(path, expected)
    if problem is not None:
        return problem
    if not expected.from_record:
        _record_if_new(path, cache, expected.sha256 or actual, url)
    return None


def _existing_ok(dest: Path, url: str, sha256: str | None, sha256_prefix: str | None, size: int | None,
                 cache: str | os.PathLike | None, *, repair: bool) -> bool:
    """Whether the existing ``dest`` may be used. With ``repair``, a bad one is moved aside.

    A file with no known digest is trusted now (first use) and its digest recorded.
    """
    expected = _expectation(dest, sha256, size, cache, sha256_prefix)
    problem, actual = _inspect(dest, expected)
    if problem is None:
        if not expected.from_record:
            _record_if_new(dest, cache, expected.sha256 or actual, url)
        return True
    if repair:
        aside = dest.with_name(dest.name + ".corrupt")
        os.replace(dest, aside)
        warnings.warn(CorruptFileWarning(f"{dest} failed verification ({problem}); moved it to {aside} "
                                         f"and downloading {url} again"), stacklevel=3)
    return False
