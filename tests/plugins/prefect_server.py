"""A real Prefect server for the test session: started on a free loopback port, stopped after.

``prefect_server`` points this process at it, both through ``PREFECT_API_URL`` in the
environment (read by threads that have no Prefect settings context, e.g. a served app) and
through Prefect's settings context, and restores both afterwards.
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
def prefect_api(url: str, updates: Mapping[Any, Any] | None = None) -> Iterator[None]:
    """Point this process at ``url``: Prefect's settings context, and the environment that
    threads without that context read. Both are restored afterwards."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url, **(updates or {})}):
            yield
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    settings = StackSettings(
        home=tmp_path_factory.mktemp("prefect-server"), prefect_port=free_port()
    )
    server = PrefectServer(settings)
    server.start(timeout=120)
    try:
        with prefect_api(settings.prefect_api_url):
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
            with prefect_api(value.settings.prefect_api_url, results):
                yield
            return
        if isinstance(value, PrefectServer):
            with prefect_api(value.settings.prefect_api_url):
                yield
            return
    yield
