"""A small local HTTP file server for tests: fixture bytes served on 127.0.0.1, never the internet.

    from http_fixtures import http_server

    with http_server({"/gpt-2/models/124M/hparams.json": b"{}"}, drop_after={...}) as url:
        url                # "http://127.0.0.1:PORT" (a str)
        url.requests       # [(method, path, range header or None), ...] in arrival order

It serves GET and HEAD for each path in ``files``, honours ``Range: bytes=N-`` and ``bytes=N-M``
(206 + ``Content-Range``; 416 past the end), answers 404 for any other path, and can misbehave on
purpose: ``drop_after[path] = n`` makes the first GET of ``path`` announce the full Content-Length,
send only ``n`` bytes, and close the connection (later requests are served fully). Standard library only.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class ServerURL(str):
    """The server's base URL (a plain ``str``) carrying the list of requests it has received."""

    requests: list[tuple[str, str, str | None]]

    def __new__(cls, url: str, requests: list[tuple[str, str, str | None]]) -> ServerURL:
        obj = super().__new__(cls, url)
        obj.requests = requests
        return obj


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], drop_after: dict[str, int]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.drop_after = dict(drop_after)
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    def take_drop(self, path: str) -> int | None:
        """Bytes to send before dropping this GET of ``path``, or None; each drop happens once."""
        with self.lock:
            return self.drop_after.pop(path, None)


class _Handler(BaseHTTPRequestHandler):
    server: _FileServer

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(send_body=False)

    def do_GET(self):
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        range_header = self.headers.get("Range")
        with self.server.lock:
            self.server.requests.append((self.command, path, range_header))
        data = self.server.files.get(path)
        if data is None:
            self._send_error(404)
            return
        span = self._span(range_header, len(data))
        if span is None:
            return
        start, end, status = span
        body = data[start:end]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        drop = self.server.take_drop(path)
        if drop is None:
            self.wfile.write(body)
        else:
            self._write_and_drop(body[:drop])

    def _span(self, range_header: str | None, size: int) -> tuple[int, int, int] | None:
        """(start, end, status) of the bytes to send; None after answering 416 to a bad range."""
        if not range_header:
            return 0, size, 200
        m = RANGE.match(range_header.strip())
        start = int(m.group(1)) if m else size
        end = min(int(m.group(2)) + 1, size) if m and m.group(2) else size
        if start >= size or end <= start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return start, end, 206

    def _send_error(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _write_and_drop(self, partial: bytes) -> None:
        """Send ``partial`` then close the socket, short of the announced Content-Length."""
        self.wfile.write(partial)
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@contextmanager
def http_server(files: dict[str, bytes], *, drop_after: dict[str, int] | None = None) -> Iterator[ServerURL]:
    """Serve ``files`` (path → bytes, paths start with "/") on 127.0.0.1 in a background thread.

    Yields the base URL ``http://127.0.0.1:PORT`` as a ``str`` subclass whose ``.requests`` lists
    ``(method, path, Range header or None)`` for every request received.
    """
    bad = [p for p in [*files, *(drop_after or {})] if not p.startswith("/")]
    if bad:
        raise ValueError(f"http_server paths must start with '/': {bad}")
    server = _FileServer(files, drop_after or {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield ServerURL(f"http://{host}:{port}", server.requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
