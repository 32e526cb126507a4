"""End-to-end tests against a deployed environment (GANTRY_TARGET_URL)."""

import json
import os
import urllib.request

import pytest

TARGET = os.environ.get("GANTRY_TARGET_URL", "")
pytestmark = pytest.mark.skipif(not TARGET, reason="GANTRY_TARGET_URL is not set")


def _get(path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{TARGET}{path}", timeout=10) as response:
        assert response.status == 200
        body: dict[str, object] = json.load(response)
        return body


def test_deployed_service_is_healthy() -> None:
    assert _get("/healthz") == {"status": "ok"}


def test_deployed_service_accepts_and_returns_a_task() -> None:
    request = urllib.request.Request(
        f"{TARGET}/tasks",
        data=json.dumps({"model": "gpt-small", "prompt": "e2e"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        created = json.load(response)
    assert _get(f"/tasks/{created['id']}")["prompt"] == "e2e"
