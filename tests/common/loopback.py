"""Loopback HTTP stand-ins that record every connection and request, for the SSRF tests, and a tunnelling
proxy (:class:`TunnelProxy`).

A :class:`Recorder` listens on one loopback address (127.0.0.2 plays the
forbidden host: Linux routes all of 127.0.0.0/8 to ``lo``). It counts every
TCP connection the kernel accepted, also those still waiting in the backlog
when it stops, so "no connection" is exact, not a matter of waiting long
enough.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass(frozen=True)
class Seen:
    """One request a recorder answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names; the last of repeated ones
    items: tuple[tuple[str, str], ...] = ()  # every header line, in order (skopeo repeats Accept)


# answer(request) -> (status, headers, body)
Answer = Callable[[Seen], tuple[int, dict[str, str], bytes]]


def ok(_: Seen) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    recorder: Recorder

    def verify_request(self, request, client_address) -> bool:  # called once per accepted connection
        with self.recorder._lock:
            self.recorder.connections.append(client_address)
        return True


class Recorder:
    """An HTTP/1.1 server on ``host`` (a fixed ``port`` or a free one) answering with ``answer``."""

    def __init__(self, host: str = "127.0.0.1", answer: Answer = ok, port: int = 0) -> None:
        self.host = host
        self.answer = answer
        self.port = port
        self.connections: list[tuple[str, int]] = []
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}"

    def start(self) -> Self:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                items = tuple(self.headers.items())
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in items}, items)
                with recorder._lock:
                    recorder.requests.append(seen)
                status, headers, body = recorder.answer(seen)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "content-length" not in {k.lower() for k in headers}:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def handle_one_request(self) -> None:
                with contextlib.suppress(OSError):
                    super().handle_one_request()

            do_GET = do_HEAD = do_POST = do_PUT = _answer

        self._server = _Server((self.host, self.port), Handler)
        self._server.recorder = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; connections still in the listen backlog are counted too."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        server.socket.setblocking(False)
        while True:
            try:
                sock, address = server.socket.accept()
            except OSError:
                break
            sock.close()
            self.connections.append(address)
        server.server_close()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def same_port_pair() -> tuple[Recorder, Recorder]:
    """Unstarted recorders on 127.0.0.1 and 127.0.0.2 with one port number (for a name answering either)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as other:
                other.bind(("127.0.0.2", port))
        except OSError:
            continue
        return Recorder("127.0.0.1", port=port), Recorder("127.0.0.2", port=port)
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


class TunnelProxy:
    """A forward HTTP proxy on ``host`` that only tunnels (``CONNECT host:port``, as squid does for https),
    to the loopback address the CONNECT names (anything else: 403). It records every TCP connection it accepted and every CONNECT it got
    (``(target, Proxy-Authorization)``); with ``refuse`` it answers that status instead of tunnelling."""

    def __init__(self, host: str = "127.0.0.1", refuse: int | None = None) -> None:
        self.host = host
        self.refuse = refuse
        self.connections: list[tuple[str, int]] = []
        self.connects: list[tuple[str, str | None]] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> Self:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                client.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = client.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                head, _, rest = head.partition(b"\r\n\r\n")
                first, *lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
                method, target, _version = first.split(" ", 2)
                proxy.connects.append((target, headers.get("proxy-authorization")))
                if method != "CONNECT" or proxy.refuse is not None:
                    code = proxy.refuse or 405
                    client.sendall(f"HTTP/1.1 {code} Refused\r\nContent-Length: 0\r\n\r\n".encode())
                    return
                host, _, port = target.rpartition(":")
                if not host.strip("[]").startswith("127."):  # a test proxy tunnels to loopback only
                    client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                try:
                    upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                except OSError:
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                with upstream:
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    if rest:
                        upstream.sendall(rest)
                    _pipe(client, upstream)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def verify_request(self, request, client_address) -> bool:
                proxy.connections.append(client_address)
                return True

        self._server = Server((self.host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def _pipe(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or 10 s of silence)."""
    sockets = [one, other]
    while True:
        ready, _, _ = select.select(sockets, [], [], 10)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            (other if sock is one else one).sendall(data)
