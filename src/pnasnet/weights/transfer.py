"""One HTTP(S) or file:// request for a download: connecting within ``CONNECT_TIMEOUT``, redirects,
``Range`` / ``If-Range`` resumption with the server's validator, and the body as a stream whose
broken connections become ``_Interrupted`` (the resume and retry policy is :mod:`.download`'s).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO

from .cache import CHUNK_SIZE

CONNECT_TIMEOUT = 5.0       # seconds; a reachable server answers far sooner, an offline machine fails fast
_USER_AGENT = f"pnasnet-weights/0.1 Python-urllib/{sys.version_info[0]}.{sys.version_info[1]}"


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


def _read_chunk(stream: BinaryIO) -> bytes:
    """Whatever has arrived (up to CHUNK_SIZE); a broken connection becomes ``_Interrupted``."""
    try:
        return stream.read1(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as error:   # reset, timeout, IncompleteRead
        raise _Interrupted(f"{type(error).__name__}: {error}") from error


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower()
