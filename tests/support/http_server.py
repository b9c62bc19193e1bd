"""A loopback HTTP server with scripted faults, for download tests.

Python's http.server ignores `Range` and cannot misbehave on purpose; this one can. Each path
is a `Route` with a body and a `Fault`; the first `times` requests of a route misbehave, the
rest are served properly (with `Range` support when `ranges` is set). Every request's headers
are recorded so tests can check what the client asked for.

    with LoopbackServer() as server:
        route = server.add("/a.tar.gz", body, fault=Fault.STATUS_500, times=2)
        download(server.url("/a.tar.gz"), ...)
        assert len(route.requests) == 3
"""

from __future__ import annotations

import enum
import hashlib
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs


class Fault(enum.Enum):
    NONE = "none"
    STATUS_500 = "500"  # a 500 response
    RESET = "reset"  # TCP reset before any response
    TRUNCATE = "truncate"  # full Content-Length announced, half the body sent, connection closed
    SLOW = "slow"  # headers and half the body, then a pause of `delay` seconds
    WRONG = "wrong"  # a different body of the same length (every time, `times` is ignored)
    NOT_FOUND = "404"  # always 404


@attrs.define
class Route:
    body: bytes
    fault: Fault = Fault.NONE
    times: int = 1
    delay: float = 1.0
    ranges: bool = False
    content_type: str = "application/octet-stream"
    requests: list[dict[str, str]] = attrs.field(factory=list)
    _faults_left: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._faults_left = self.times

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    def take_fault(self) -> bool:
        if self._faults_left > 0:
            self._faults_left -= 1
            return True
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    routes: dict[str, Route]
    lock: threading.Lock

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # faults are deliberate; keep test output clean


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        misbehave = False
        with self.server.lock:
            route = self.server.routes.get(self.path.split("?", 1)[0])
            if route is not None:
                route.requests.append({k.lower(): v for k, v in self.headers.items()})
                misbehave = route.take_fault()
        if route is None or route.fault is Fault.NOT_FOUND:
            return self._plain(404, b"not found\n")
        if route.fault is Fault.WRONG:
            return self._serve(route, bytes(b ^ 0xFF for b in route.body))
        if misbehave:
            if route.fault is Fault.STATUS_500:
                return self._plain(500, b"try again\n")
            if route.fault is Fault.RESET:
                return self._reset()
            if route.fault is Fault.TRUNCATE:
                return self._partial(route, pause=0.0)
            if route.fault is Fault.SLOW:
                return self._partial(route, pause=route.delay)
        return self._serve(route, route.body)

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _headers(self, route: Route, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(length))
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", route.etag)
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()

    def _partial(self, route: Route, pause: float) -> None:
        self._headers(route, 200, len(route.body), {})
        half = len(route.body) // 2
        try:
            self.wfile.write(route.body[:half])
            self.wfile.flush()
            if pause:
                time.sleep(pause)
                self.wfile.write(route.body[half:])
                self.wfile.flush()
        except OSError:
            pass  # the client gave up, as it should
        self.close_connection = True

    def _serve(self, route: Route, body: bytes) -> None:
        # RFC 9110 single ranges: `bytes=N-`, `bytes=N-M` and the suffix form `bytes=-N`.
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        span = None
        if route.ranges and m and (m.group(1) or m.group(2)) and (if_range is None or if_range == route.etag):
            if m.group(1):
                first = int(m.group(1))
                last = min(int(m.group(2)), len(body) - 1) if m.group(2) else len(body) - 1
            else:
                first, last = max(0, len(body) - int(m.group(2))), len(body) - 1
            if first <= last and first < len(body):
                span = (first, last)
        if span is not None:
            first, last = span
            self._headers(route, 206, last - first + 1, {"Content-Range": f"bytes {first}-{last}/{len(body)}"})
            self.wfile.write(body[first:last + 1])
        else:
            self._headers(route, 200, len(body), {})
            self.wfile.write(body)


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 at a free port; use as a context manager."""

    def __init__(self) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.routes = {}
        self._httpd.lock = threading.Lock()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, *, fault: Fault = Fault.NONE, times: int = 1, delay: float = 1.0,
            ranges: bool = False, content_type: str = "application/octet-stream") -> Route:
        route = Route(body=body, fault=fault, times=times, delay=delay, ranges=ranges, content_type=content_type)
        with self._httpd.lock:
            self._httpd.routes[path] = route
        return route

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
