"""A repository whose check is a probe: it tries what untrusted code would try and reports it.

The probe prints one JSON object; each key is a thing it tried and the value what it got, so
a test can assert on each probe separately and a failure names the hole.
"""

from __future__ import annotations

from pathlib import Path

PROBE = r"""
import json, os, socket, sys

args = json.loads(sys.argv[1])
found = {}

def tcp(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()

def unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1)
    try:
        s.connect(path)
        return "connected"
    except OSError as exc:
        return type(exc).__name__
    finally:
        s.close()

def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        return type(exc).__name__

def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except OSError as exc:
        return type(exc).__name__

found["tcp"] = tcp(args["port"])
found["engine_socket"] = unix(args["socket"])
found["environ"] = environ_of(args["pid"])
all_env = ""
for entry in os.listdir("/proc"):
    if entry.isdigit():
        all_env += environ_of(entry)
found["secret_in_any_environ"] = args["secret"] in all_env
found["state_exists"] = os.path.exists(args["state"])
found["project_exists"] = os.path.exists(args["project"])
found["project_code"] = os.path.exists(os.path.join(args["project"], "flows"))
found["write_outside"] = [write(p) for p in args["outside"]]
found["write_checkout"] = write("probe-wrote-this")
found["uid"] = os.getuid()
found["env"] = dict(os.environ)
found["tmp"] = sorted(os.listdir("/tmp"))
print(json.dumps(found))
"""


def make_probe_repo(root: Path) -> Path:
    """A checkout holding ``probe.py``; its argv is ``python3 probe.py ARGS_JSON``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "probe.py").write_text(PROBE)
    return root


UNITTEST_MODULE = """
import unittest

class Arithmetic(unittest.TestCase):
    def test_adds(self):
        self.assertEqual(1 + 1, 2)
"""


def make_unittest_repo(root: Path) -> Path:
    """A plain Python repository whose check is ``python3 -m unittest``."""
    (root / "tests").mkdir(parents=True, exist_ok=True)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_arith.py").write_text(UNITTEST_MODULE)
    (root / "gantry.toml").write_text(
        '[checks]\nunit = ["python3", "-m", "unittest", "discover", "-s", "tests", "-v"]\n'
    )
    return root
