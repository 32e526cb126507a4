"""The in-sandbox half of network "target": 127.0.0.1:PORT inside -> a Unix socket -> the target.

Run inside the sandbox as ``python3 -I -S relay.py PORT SOCKET -- ARGV...`` (standard library
only: the sandbox's toolchain may be anything with a Python). The sandbox has a network
namespace of its own with nothing but loopback, so the only way out is the Unix socket the
trusted side bound in, and the trusted side connects that socket to the target host:port and
to nothing else. The listener is up before the command starts; the command's exit code is ours.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Half-close so the other direction can still drain (HTTP/1.0 style clients).
        for end, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                end.shutdown(how)


def _serve(listener: socket.socket, target: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(target)
        except OSError:
            client.close()
            upstream.close()
            continue
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: relay.py PORT SOCKET -- ARGV...\n")
        return 2
    port, target, argv = int(args[0]), args[1], args[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, target), daemon=True).start()
    try:
        return subprocess.call(argv)
    except FileNotFoundError:
        sys.stderr.write(f"bwrap: execvp {argv[0]}: No such file or directory\n")
        return 127
    except PermissionError:
        sys.stderr.write(f"bwrap: execvp {argv[0]}: Permission denied\n")
        return 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
