"""Slack's incoming webhooks on loopback: an HTTPS server for ``hooks.slack.com`` behind a
CONNECT proxy.

Prefect's ``SlackWebhook`` block (through apprise's Slack plugin) only posts to
``https://hooks.slack.com/services/...``. A process given ``HTTPS_PROXY`` (the proxy's URL) and
``REQUESTS_CA_BUNDLE`` (the throwaway CA made here) sends that request, unchanged, to this
stand-in: the proxy opens the tunnel to it without resolving the name, and the stand-in's
certificate for ``hooks.slack.com`` is signed by that CA. No request leaves the machine; a
CONNECT to any other host is refused and recorded.

Answers like Slack: ``200 ok`` for a message with text, ``400 invalid_payload`` for a body
that is not JSON or has no text, and ``429 rate_limited`` with ``Retry-After`` when asked
(``rate_limit_next``). Every request is recorded.
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from cryptography import x509

from tests.fakes.tls import write_test_ca

SLACK_HOST = "hooks.slack.com"
# The shape apprise's Slack plugin and Prefect's block accept (three upper-case tokens).
WEBHOOK_PATH = "/services/T0GANTRY01/B0GANTRY02/0123456789ABCDEFGHIJKLMN"
BODY_LIMIT = 1 << 20


@dataclass
class SlackRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    status: int

    @property
    def text(self) -> str:
        """Every text the message shows (top level, attachments, blocks), one per line."""
        return "\n".join(_texts(self.json))


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("text", "fallback", "title") and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


class _SlackHandler(BaseHTTPRequestHandler):
    server: _SlackServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests read ``requests``; stderr would only add noise

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), BODY_LIMIT)
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        stand_in = self.server.stand_in
        status, text, headers = stand_in.answer(self.path, body)
        with stand_in.lock:
            stand_in.requests.append(
                SlackRequest(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, status
                )
            )
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _SlackServer(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: FakeSlack


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.split(" ", 1)[0]
        stand_in = self.server.stand_in
        with stand_in.lock:
            stand_in.connects.append(f"{method} {target}")
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host.lower() != SLACK_HOST or port != "443":
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = socket.create_connection(("127.0.0.1", stand_in.https_port), timeout=10)
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket, idle: float = 30.0) -> None:
    """Copy bytes both ways until either side closes or both are idle for ``idle`` seconds."""
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select(list(peers), [], [], idle)
        if not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    stand_in: FakeSlack


class FakeSlack:
    """The stand-in and its proxy; ``env()`` is what a process needs to post to it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[SlackRequest] = []
        self.connects: list[str] = []
        self.lock = threading.Lock()
        self._rate_limits: list[int] = []
        self._https: _SlackServer | None = None
        self._proxy: _ProxyServer | None = None
        self._threads: list[threading.Thread] = []
        self.ca_file = folder / "ca.pem"
        self.https_port = 0
        self.proxy_port = 0

    @property
    def webhook_url(self) -> str:
        return f"https://{SLACK_HOST}{WEBHOOK_PATH}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def env(self) -> dict[str, str]:
        """For the process that posts: the proxy, the test CA, and loopback not proxied."""
        return {
            "HTTPS_PROXY": self.proxy_url,
            "https_proxy": self.proxy_url,
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def rate_limit_next(self, times: int = 1, retry_after: int = 1) -> None:
        with self.lock:
            self._rate_limits.extend([retry_after] * times)

    def answer(self, path: str, body: Any) -> tuple[int, str, dict[str, str]]:
        with self.lock:
            retry_after = self._rate_limits.pop(0) if self._rate_limits else None
        if retry_after is not None:
            return 429, "rate_limited", {"Retry-After": str(retry_after)}
        if path.rstrip("/") != WEBHOOK_PATH:
            return 404, "no_service", {}
        if not isinstance(body, dict) or not any(t.strip() for t in _texts(body)):
            return 400, "invalid_payload", {}
        return 200, "ok", {}

    @property
    def messages(self) -> list[SlackRequest]:
        """The messages Slack took (200)."""
        with self.lock:
            return [r for r in self.requests if r.status == 200]

    def wait_for_messages(self, count: int, timeout: float) -> list[SlackRequest]:
        """The first ``count`` taken messages once there are that many, or all there are when
        ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.messages

    def start(self) -> Self:
        ca_file, cert_file, key_file = write_test_ca(
            self.folder, "Gantry test CA", x509.DNSName(SLACK_HOST), SLACK_HOST
        )
        self.ca_file = ca_file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        https = _SlackServer(("127.0.0.1", 0), _SlackHandler, bind_and_activate=False)
        https.stand_in = self
        https.server_bind()
        https.server_activate()
        https.socket = context.wrap_socket(https.socket, server_side=True)
        self.https_port = https.server_address[1]
        proxy = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        proxy.stand_in = self
        self.proxy_port = proxy.server_address[1]
        self._https, self._proxy = https, proxy
        for server in (https, proxy):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._https, self._proxy):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(10)
        self._https = self._proxy = None
        self._threads = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
