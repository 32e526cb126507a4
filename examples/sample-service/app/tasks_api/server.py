"""HTTP interface: JSON over the standard library's threading server."""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tasks_api import __version__
from tasks_api.store import InvalidTask, TaskStore

MAX_BODY = 64 * 1024


def make_handler(store: TaskStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tasks-api"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            # One JSON line per request, as the platform's log pipeline expects.
            line = {"logger": "tasks_api", "message": format % args, "path": self.path}
            print(json.dumps(line), flush=True)

        def _send(self, status: HTTPStatus, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(HTTPStatus.OK, {"status": "ok"})
            elif self.path == "/version":
                self._send(
                    HTTPStatus.OK,
                    {"version": __version__, "commit": os.environ.get("APP_COMMIT", "unknown")},
                )
            elif self.path == "/tasks":
                self._send(HTTPStatus.OK, {"tasks": [t.to_json() for t in store.all()]})
            elif self.path.startswith("/tasks/"):
                task_id = self.path.removeprefix("/tasks/")
                task = store.get(int(task_id)) if task_id.isdigit() else None
                if task is None:
                    self._send(HTTPStatus.NOT_FOUND, {"error": "no such task"})
                else:
                    self._send(HTTPStatus.OK, task.to_json())
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/tasks":
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
                task = store.create(payload)
            except (json.JSONDecodeError, InvalidTask) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            self._send(HTTPStatus.CREATED, task.to_json())

    return Handler


def make_server(host: str, port: int, store: TaskStore | None = None) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(store or TaskStore()))
