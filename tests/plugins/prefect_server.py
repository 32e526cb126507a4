"""A real Prefect server for the test session: started on a free loopback port, stopped after.

``prefect_server`` points this process at it, both through ``PREFECT_API_URL`` in the
environment (read by threads that have no Prefect settings context, e.g. a served app) and
through Prefect's settings context, and restores both afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deployments.prefect_server import PrefectServer
from deployments.processes import free_port
from deployments.settings import StackSettings


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = StackSettings(
        home=tmp_path_factory.mktemp("prefect-server"), prefect_port=free_port()
    )
    server = PrefectServer(settings)
    saved = os.environ.get("PREFECT_API_URL")
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = settings.prefect_api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: settings.prefect_api_url}):
            yield server
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        server.stop()
