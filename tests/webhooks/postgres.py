"""A throwaway PostgreSQL server on a loopback port, for the store's PostgreSQL mode."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.ports import free_port
from tests.plugins.leftovers import SESSION_VARIABLE


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a PostgreSQL server in a temp folder; yield its URL; stop it and delete the folder."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("initdb/pg_ctl not found under /usr/lib/postgresql/*/bin")
    # initdb refuses to run as root: run the server as the postgres (or nobody) account.
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="gantry-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    uid, gid = (user.pw_uid, user.pw_gid) if user else (None, None)
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "HOME": str(root)}
    # The server lives outside the session's temp folder: this names the session, so that the
    # next session can stop it should this one be killed (tests/plugins/leftovers.py).
    if SESSION_VARIABLE in os.environ:
        env[SESSION_VARIABLE] = os.environ[SESSION_VARIABLE]

    def run(*argv: str) -> None:
        subprocess.run(
            list(argv),
            check=True,
            capture_output=True,
            timeout=60,
            env=env,
            cwd=root,
            user=uid,
            group=gid,
        )

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "gantry", "--auth=trust", "-E", "UTF8")
        options = f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "30",
            "start",
        )
        try:
            yield f"postgresql://gantry@127.0.0.1:{port}/postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL for the module (a plugin: tests/conftest.py)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed on this machine")
    with throwaway_postgres() as url:
        yield url
