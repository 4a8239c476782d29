"""A small threaded HTTP server on 127.0.0.1 for the download tests.

It serves byte strings with ``Range``/``If-Range`` support, logs every request, answers redirects
set up with ``redirect``, and can be told to misbehave: drop the connection after K body bytes (once,
or on every response), ignore ``Range`` (answer 200), answer 206 with a range other than the one asked
for, fail with a given status, send slowly, or hold the body back until the test releases it.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def closed_port_url(name: str = "w.bin") -> str:
    """A URL on 127.0.0.1 where nothing listens (a port that was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


@dataclass
class Seen:
    """One request as the server saw it, and what it answered."""

    path: str
    range: str | None
    if_range: str | None
    status: int = 0
    body_bytes: int = 0


class FixtureServer:
    """``with FixtureServer() as server: url = server.serve("a.bin", data)``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.redirects: dict[str, tuple[int, str]] = {}
        self.requests: list[Seen] = []
        self.body_bytes_sent = 0
        # Misbehaviours, set by the tests:
        self.drop_after: int | None = None      # close the next response after this many body bytes
        self.drop_every: int | None = None      # close every response after this many body bytes
        self.ignore_range = False               # answer 200 with the whole file even to a Range request
        self.misreport_range = False            # answer 206 with the whole file, whatever was asked
        self.status: int | None = None          # answer every request with this error status
        self.chunk_size = 16 * 1024
        self.chunk_delay = 0.0                  # seconds between chunks of a body
        self.gate: threading.Event | None = None  # when set up, bodies wait until it is set
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fixture = self
        self._httpd.handle_error = lambda request, address: None   # clients we kill are expected
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> FixtureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def serve(self, name: str, data: bytes) -> str:
        """Serve ``data`` at ``/name`` (with a new ETag) and return its URL."""
        self.files[name] = data
        self.etags[name] = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        return f"{self.base}/{name}"

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``, to put in place of a real host's ``https://name``."""
        return f"http://127.0.0.1:{self.port}"

    def redirect(self, name: str, status: int, location: str) -> str:
        """Answer ``/name`` with ``status`` (301, 302, 307...) pointing at ``location``; returns its URL."""
        self.redirects[name] = (status, location)
        return f"{self.base}/{name}"

    def gets(self, name: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == "/" + name]

    def _log(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _take_drop_after(self) -> int | None:
        with self._lock:
            drop, self.drop_after = self.drop_after, None
            return drop

    def _count(self, n: int) -> None:
        with self._lock:
            self.body_bytes_sent += n


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args) -> None:   # keep test output clean
        pass

    def do_GET(self) -> None:
        fixture: FixtureServer = self.server.fixture
        seen = Seen(self.path, self.headers.get("Range"), self.headers.get("If-Range"))
        fixture._log(seen)
        name = self.path.lstrip("/")
        if fixture.status is None and name in fixture.redirects:
            seen.status, location = fixture.redirects[name]
            self.send_response(seen.status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fixture.status is not None or name not in fixture.files:
            seen.status = fixture.status or 404
            self.send_error(seen.status)
            return
        data = fixture.files[name]
        start = self._range_start(fixture, name)
        if start is not None and start >= len(data):
            seen.status = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fixture.misreport_range and seen.range:
            start = 0
            seen.status = 206
        else:
            seen.status = 200 if start is None else 206
        start = start or 0
        self.send_response(seen.status)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", fixture.etags[name])
        if seen.status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self._send_body(fixture, data[start:], seen)

    def _range_start(self, fixture: FixtureServer, name: str) -> int | None:
        """Start of the requested range, or None to send the whole file."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match is None or fixture.ignore_range:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != fixture.etags[name]:
            return None     # the file changed since the client's partial copy: send it all
        return int(match.group(1))

    def _send_body(self, fixture: FixtureServer, body: bytes, seen: Seen) -> None:
        if fixture.gate is not None:
            fixture.gate.wait(timeout=30)
        drop = fixture._take_drop_after()
        if fixture.drop_every is not None:
            drop = fixture.drop_every if drop is None else min(drop, fixture.drop_every)
        limit = len(body) if drop is None else min(drop, len(body))
        try:
            for offset in range(0, limit, fixture.chunk_size):
                chunk = body[offset:min(offset + fixture.chunk_size, limit)]
                self.wfile.write(chunk)
                seen.body_bytes += len(chunk)
                fixture._count(len(chunk))
                if fixture.chunk_delay:
                    time.sleep(fixture.chunk_delay)
        except OSError:     # the client went away (killed by a test)
            pass
        self.close_connection = True
