"""A tiny deployable service for merge and release tests: its version is a file in the repo."""

from __future__ import annotations

import sys

from tests.plugins.gitrepo import GitRepo

PY = sys.executable

SERVER = """\
import http.server, json, os
VERSION = open("/app/VERSION").read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            # A version named "broken-..." never becomes healthy.
            broken = VERSION.startswith("broken")
            code, body = (500, {"status": "broken"}) if broken else (200, {"status": "ok"})
        elif self.path == "/version":
            code, body = 200, {"version": VERSION}
        else:
            code, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
port = int(os.environ.get("PORT", "8000"))
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""

DOCKERFILE = """\
FROM localhost/gantry/python-base:bookworm
COPY server.py VERSION /app/
CMD ["python3", "/app/server.py"]
"""

# E2E: the deployed environment serves the version this commit carries (or E2E_FAIL is set).
E2E = """\
import json, os, sys, urllib.request
if os.path.exists("E2E_FAIL"):
    print("e2e: failing on purpose"); sys.exit(1)
if os.path.exists("SMOKE_FAIL") and os.environ.get("GANTRY_ENVIRONMENT") == "production":
    print("smoke: failing on purpose in production"); sys.exit(1)
url = os.environ["GANTRY_TARGET_URL"]
served = json.load(urllib.request.urlopen(url + "/version", timeout=10))["version"]
expected = open("VERSION").read().strip()
print("served", served, "expected", expected)
sys.exit(0 if served == expected else 1)
"""


def gantry_toml() -> str:
    return (
        "[checks]\n"
        f'lint = ["{PY}", "-c", "print(1)"]\n'
        "[[images]]\n"
        'name = "web"\n'
        "port = 8000\n"
        "[e2e]\n"
        f'command = ["{PY}", "e2e.py"]\n'
        "timeout = 60\n"
        "[smoke]\n"
        f'command = ["{PY}", "e2e.py"]\n'
        "timeout = 60\n"
    )


def service_files(
    version: str, e2e_fails: bool = False, smoke_fails: bool = False
) -> dict[str, str]:
    files = {
        "gantry.toml": gantry_toml(),
        "Dockerfile": DOCKERFILE,
        "server.py": SERVER,
        "VERSION": version + "\n",
        "e2e.py": E2E,
    }
    if e2e_fails:
        files["E2E_FAIL"] = "1\n"
    if smoke_fails:
        files["SMOKE_FAIL"] = "1\n"
    return files


def commit_version(
    repo: GitRepo, version: str, e2e_fails: bool = False, smoke_fails: bool = False
) -> str:
    for marker, wanted in (("E2E_FAIL", e2e_fails), ("SMOKE_FAIL", smoke_fails)):
        path = repo.path / marker
        if path.exists() and not wanted:
            path.unlink()
    files = service_files(version, e2e_fails, smoke_fails)
    return repo.commit(files, message=f"version {version}")
