"""A Datadog agent stand-in: a UDP socket on 127.0.0.1 that keeps every DogStatsD line it gets."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class Datagram:
    """One DogStatsD metric line: ``name:value|type|#tags``."""

    name: str
    value: str
    type: str
    tags: tuple[str, ...]

    @classmethod
    def parse(cls, line: str) -> Datagram:
        head, *fields = line.split("|")
        name, value = head.rsplit(":", 1)
        tags: tuple[str, ...] = ()
        for field in fields[1:]:
            if field.startswith("#"):
                tags = tuple(field[1:].split(","))
        return cls(name, value, fields[0], tags)

    def tag(self, name: str) -> str | None:
        """The value of tag ``name``, or None when the datagram does not carry it."""
        for tag in self.tags:
            key, _, value = tag.partition(":")
            if key == name:
                return value
        return None


class DogStatsdAgent:
    """Collects every line sent to ``port`` in a thread, until stopped.

    Lines are kept raw: a test can then say whether each one parses, not only the ones it
    looks for.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._lines.extend(line for line in payload.decode(errors="replace").split("\n"))

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return [line for line in self._lines if line]

    def datagrams(self) -> list[Datagram]:
        return [Datagram.parse(line) for line in self.lines]

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
