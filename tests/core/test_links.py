"""Links to the Prefect UI: Prefect's own routes, the right address, and none when unknown."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from core.links import flow_run_url
from core.settings import StackSettings
from deployments.prefect_server import PrefectServer

RUN_ID = "0b5c3a52-7d1e-4f6b-9a51-2f0c1e9d8a77"


def test_without_a_ui_or_api_address_there_is_no_link() -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        assert flow_run_url(RUN_ID) is None


def test_the_local_stack_link_comes_from_its_api_address() -> None:
    stack = StackSettings(host="127.0.0.1", prefect_port=4200)  # the defaults, whatever the env
    updates = {PREFECT_API_URL: stack.prefect_api_url}
    with temporary_settings(updates=updates, restore_defaults={PREFECT_UI_URL}):
        assert flow_run_url(RUN_ID) == f"http://127.0.0.1:4200/runs/flow-run/{RUN_ID}"


def test_an_explicit_ui_address_wins_over_the_setting_and_keeps_its_path() -> None:
    with temporary_settings(updates={PREFECT_UI_URL: "http://internal:4200"}):
        assert flow_run_url(RUN_ID, "https://ci.example/prefect/") == (
            f"https://ci.example/prefect/runs/flow-run/{RUN_ID}"
        )
        assert flow_run_url(uuid.UUID(RUN_ID)) == f"http://internal:4200/runs/flow-run/{RUN_ID}"


def test_no_run_no_link() -> None:
    assert flow_run_url(None, "http://127.0.0.1:4200") is None
    assert flow_run_url("", "http://127.0.0.1:4200") is None


@pytest.mark.slow
def test_the_link_of_a_real_run_opens_in_the_servers_ui(prefect_server: PrefectServer) -> None:
    @flow(name="link-probe")
    def probe() -> str:
        from prefect.runtime import flow_run

        return str(flow_run.get_id())

    run_id = probe()
    url = flow_run_url(run_id)
    assert url == f"{prefect_server.settings.prefect_url}/runs/flow-run/{run_id}"
    # As a browser opens it: the UI serves its pages to HTML navigations.
    response = httpx.get(url, headers={"Accept": "text/html"}, follow_redirects=True, timeout=10)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
