"""The weights cache: where files live, their SHA-256 record (trust on first use) and verification,
the locks and atomic writes around them, and the errors a download or a check raises.

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
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..atomic_files import atomic_path

ENV_HOME = "PNASNET_HOME"
CHECKSUMS_NAME = "checksums.json"
CHUNK_SIZE = 1 << 20


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


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _part_meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def _lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def _atomic_write_json(path: Path, data: dict) -> None:
    """Write JSON so that readers never see half a file (see ``atomic_files.atomic_path``)."""
    with atomic_path(path, hidden=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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
        return f"got {actual_size} bytes, expected {expected.size} ({expected.source})", None
    if expected.sha256 is None and expected.sha256_prefix is None:
        return None, None
    actual = sha256_file(path)
    if expected.sha256 is not None and actual != expected.sha256:
        return f"checksum mismatch: got sha256 {actual}, expected {expected.sha256} ({expected.source})", actual
    return expected.prefix_problem(actual), actual


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
    reason, actual = _inspect(path, expected)
    if reason is not None:
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
