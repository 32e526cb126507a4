"""A real Prefect server for the test session: started on a free loopback port, stopped after.

``prefect_server`` points this process at it, both through ``PREFECT_API_URL`` and
``PREFECT_API_AUTH_STRING`` in the environment (read by threads that have no Prefect settings
context, e.g. a served app) and through Prefect's settings context, and restores both afterwards.
The server requires its credential, as the local stack's does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from core.ports import free_port
from core.settings import StackSettings
from deployments.prefect_server import PrefectServer


@contextlib.contextmanager
def prefect_api(
    target: StackSettings | str, updates: Mapping[Any, Any] | None = None
) -> Iterator[None]:
    """Point this process at a server: Prefect's settings context, and the environment that
    threads without that context read. Both are restored afterwards.

    ``target`` is the server's settings (its URL and credential) or a bare API URL, which
    keeps the credential already in effect (the one the test's own fixture set).
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = {"PREFECT_API_URL": target if isinstance(target, str) else target.prefect_api_url}
    if not isinstance(target, str):
        env["PREFECT_API_AUTH_STRING"] = target.api_auth_string()
    settings: dict[Any, Any] = {PREFECT_API_URL: env["PREFECT_API_URL"]}
    if "PREFECT_API_AUTH_STRING" in env:
        settings[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with temporary_settings(updates={**settings, **(updates or {})}):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    settings = StackSettings(
        home=tmp_path_factory.mktemp("prefect-server"), prefect_port=free_port()
    )
    server = PrefectServer(settings)
    server.start(timeout=120)
    try:
        with prefect_api(settings):
            yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _the_tests_own_prefect_api(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test talks to the server it asked for, whichever session fixture started last.

    ``local_stack`` and ``prefect_server`` are both session-wide and each points Prefect at its
    own server; without this, a test of the stack run after the first ``prefect_server`` test
    would look for its deployments on the plain server.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from deployments.stack import Stack

    for name in ("local_stack", "prefect_server"):
        if name not in request.fixturenames:
            continue
        value = request.getfixturevalue(name)
        if isinstance(value, Stack):
            results = {PREFECT_LOCAL_STORAGE_PATH: value.settings.state_dir / "results"}
            with prefect_api(value.settings, results):
                yield
            return
        if isinstance(value, PrefectServer):
            with prefect_api(value.settings):
                yield
            return
    yield
