"""A small HTTP proxy on loopback that lets a test change what passes between a client and a server.

It reads each request whole, lets a hook change or answer it, forwards it to the upstream
server, reads the answer whole and lets a second hook change it. The storage tests put it in
front of SeaweedFS (flip a byte of an upload, strip checksums like a store that ignores them,
refuse ``DeleteObjects`` like OpenStack Swift) and in front of the emulator (an image body cut
short with no ``Content-Length`` to tell).
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)


@dataclass
class Exchange:
    """One request, or one answer, as the hooks see and change it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    close_delimited: bool = False  # answer without Content-Length, then close the connection
    seen: dict[str, str] = field(default_factory=dict)  # the request's headers, for an answer's hook


class LoopbackProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream`` (``host:port``), for one test.

    :param upstream: the server's ``host:port`` on loopback.
    :param on_request: may change the request in place, or return an answer to send instead.
    :param on_response: may change the answer in place.
    """

    def __init__(
        self,
        upstream: str,
        *,
        on_request: Callable[[Exchange], Exchange | None] | None = None,
        on_response: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.on_request = on_request
        self.on_response = on_response
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The proxy's port on 127.0.0.1."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {name: value for name, value in handler.headers.items()}
        length = int(headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Exchange(handler.command, handler.path, headers, body)
        self.requests.append((request.method, request.path))
        answer = self.on_request(request) if self.on_request else None
        if answer is None:
            answer = self._forward(request)
            answer.seen = request.headers
            if self.on_response:
                self.on_response(answer)
        self._reply(handler, answer)

    def _forward(self, request: Exchange) -> Exchange:
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.body or request.method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(request.body))
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            body = response.read()
            answer_headers = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in _HOP_BY_HOP or (request.method == "HEAD" and k.lower() == "content-length")
            }
            return Exchange(request.method, request.path, answer_headers, body, status=response.status)
        finally:
            connection.close()

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, answer: Exchange) -> None:
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        if answer.close_delimited:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        elif answer.method != "HEAD" or "Content-Length" not in answer.headers:
            handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if answer.method != "HEAD":
            handler.wfile.write(answer.body)
        handler.wfile.flush()


def flip_byte(body: bytes, at: int | None = None) -> bytes:
    """``body`` with one byte inverted (in the middle unless ``at`` is given)."""
    index = len(body) // 2 if at is None else at
    return body[:index] + bytes([body[index] ^ 0xFF]) + body[index + 1 :]
