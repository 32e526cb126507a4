import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tasks_api.server import make_server


@pytest.fixture
def base_url() -> Iterator[str]:
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _post(url: str, body: object) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_healthz_answers_ok(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/healthz", timeout=5) as response:
        assert response.status == 200
        assert json.load(response) == {"status": "ok"}


def test_a_task_posted_can_be_read_back(base_url: str) -> None:
    status, created = _post(f"{base_url}/tasks", {"model": "gpt-large", "prompt": "summarize"})
    assert status == 201
    with urllib.request.urlopen(f"{base_url}/tasks/{created['id']}", timeout=5) as response:
        assert json.load(response)["prompt"] == "summarize"


def test_a_bad_task_is_a_400(base_url: str) -> None:
    status, body = _post(f"{base_url}/tasks", {"model": "unknown", "prompt": "x"})
    assert status == 400
    assert "model" in str(body["error"])
