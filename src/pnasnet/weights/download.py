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

The cache layout and the checksum record are :mod:`.cache`'s; the HTTP transfer (short connects,
ranges, validators) is :mod:`.transfer`'s. Their public names are importable from here too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..atomic_files import fsync_dir
from ..env_flags import env_flag

# Callers and tests know these names from this module: it re-exports them.
from .cache import (CHECKSUMS_NAME, CHUNK_SIZE, ENV_HOME, ChecksumError, ChecksumUnknownError,  # noqa: F401
                    CorruptFileWarning, DownloadError, VerifyResult, _atomic_write_json, _expectation, _Expected,
                    _inspect, _lock_path, _locked, _normalise_digest, _part_meta_path, _part_path, _record,
                    _recorded, cache_dir, default_cache_dir, forget, sha256_file, verify, verify_cache)
from .transfer import (CONNECT_TIMEOUT, _Body, _FetchFailed, _Interrupted, _open_file_url, _open_http,  # noqa: F401
                       _read_chunk, _scheme)

__all__ = ["ChecksumError", "ChecksumUnknownError", "CorruptFileWarning", "DownloadError", "VerifyResult",
           "cache_dir", "check_existing", "default_cache_dir", "download", "forget", "sha256_file", "verify",
           "verify_cache"]

ENV_OFFLINE = "PNASNET_OFFLINE"
RETRY_PAUSE = 0.5           # seconds before resuming a dropped transfer (times the attempt number)
_SCHEMES = ("http", "https", "file")

log = logging.getLogger(__name__)


def _is_offline() -> bool:
    return env_flag(ENV_OFFLINE, False)


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
        expected = self.expected
        reason, actual = _inspect(self.part, expected)    # a file of the wrong size is not hashed
        if reason is not None:
            hint = "" if not expected.from_record else (
                f" If the file changed upstream on purpose, drop the old record with "
                f"pnasnet.weights.download.forget({str(self.dest)!r}) and download again.")
            self.discard_partial()
            raise ChecksumError(f"{self.url}: {reason}; the downloaded file {self.part} was deleted and "
                                f"{self.dest} was not written.{hint}",
                                url=self.url, path=self.dest, expected=expected.sha256, actual=actual, reason=reason)
        actual = actual or sha256_file(self.part)     # hashed above only when there was something to check
        _record(self.dest, self.cache, sha256=actual, size=self.part.stat().st_size, url=self.url)
        # Record first, then rename: a kill in between leaves a complete .part that the next call
        # checks (against this record) and finishes, never a file without a record.
        os.replace(self.part, self.dest)
        fsync_dir(self.dest.parent)
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
                    # Once: on stderr when talking to a person, else through logging (whose
                    # last-resort handler would otherwise print the same line a second time).
                    if progress:
                        print(f"pnasnet: {one} failed ({error.reason}); trying the next mirror",
                              file=sys.stderr, flush=True)
                    else:
                        log.warning("%s failed (%s); trying the next mirror", one, error.reason)
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
    cached file is checked: against ``sha256`` when given (nothing is recorded: the file is not ours
    and may go away), else its trust-on-first-use record (keyed by its absolute path, recorded now if
    it has none), and against ``sha256_prefix``.

    Returns None when the file may be used, else why not. The file itself is never moved or changed
    (it is not ours); ``url`` is only noted in the record.
    """
    path = Path(path).expanduser().absolute()
    sha256, sha256_prefix = _normalise_digest(sha256), _normalise_digest(sha256_prefix, prefix=True)
    if sha256 is not None:
        return _inspect(path, _Expected(sha256, None, "given", sha256_prefix=sha256_prefix))[0]
    return _problem_or_trust(path, url, None, sha256_prefix, None, cache)


def _problem_or_trust(path: Path, url: str | None, sha256: str | None, sha256_prefix: str | None,
                      size: int | None, cache: str | os.PathLike | None) -> str | None:
    """Why the finished ``path`` may not be used, or None; a usable file with no record (or whose record
    disagrees with a given digest) is recorded now (first use)."""
    expected = _expectation(path, sha256, size, cache, sha256_prefix)
    problem, actual = _inspect(path, expected)
    if problem is None and not expected.from_record:
        _record_if_new(path, cache, expected.sha256 or actual, url)
    return problem


def _existing_ok(dest: Path, url: str, sha256: str | None, sha256_prefix: str | None, size: int | None,
                 cache: str | os.PathLike | None, *, repair: bool) -> bool:
    """Whether the existing ``dest`` may be used. With ``repair``, a bad one is moved aside.

    A file with no known digest is trusted now (first use) and its digest recorded.
    """
    problem = _problem_or_trust(dest, url, sha256, sha256_prefix, size, cache)
    if problem is None:
        return True
    if repair:
        aside = dest.with_name(dest.name + ".corrupt")
        os.replace(dest, aside)
        warnings.warn(CorruptFileWarning(f"{dest} failed verification ({problem}); moved it to {aside} "
                                         f"and downloading {url} again"), stacklevel=3)
    return False
