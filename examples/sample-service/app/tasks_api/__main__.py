"""Run the service: `python3 -m tasks_api` (HOST and PORT from the environment)."""

from __future__ import annotations

import os

from tasks_api.server import make_server


def main() -> None:
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - a container listens on all interfaces
    port = int(os.environ.get("PORT", "8000"))
    server = make_server(host, port)
    print(f'{{"logger": "tasks_api", "message": "listening on {host}:{port}"}}', flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
