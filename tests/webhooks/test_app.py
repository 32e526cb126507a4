"""The receiver over real HTTP (uvicorn on a loopback port): what it refuses, what it records,
what it answers, and that it keeps serving. No Prefect server here: dispatch is not started."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from core.ports import free_port
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver
from tests.webhooks.statsd import at_least, metrics_to_agent
from webhooks.app import create_app
from webhooks.settings import ReceiverSettings
from webhooks.signature import sign
from webhooks.store import DeliveryStore, SqliteStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
CAP = 64 * 1024
URL_PATH = "/webhooks/github"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def receiver_settings(home: Path, **extra: Any) -> ReceiverSettings:
    return ReceiverSettings(
        webhook_secret=payloads.SECRET,
        webhook_secret_previous=payloads.OLD_SECRET,
        webhook_repositories=payloads.SERVED,
        home=home,
        webhook_max_body_bytes=CAP,
        **extra,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedReceiver]:
    settings = receiver_settings(tmp_path_factory.mktemp("receiver"))
    with ServedReceiver(settings, dispatch=False) as receiver:
        yield receiver


@pytest.fixture
async def client(served: ServedReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
        yield http


async def post(
    client: httpx.AsyncClient, event: str, payload: dict[str, Any] | bytes, **kwargs: Any
) -> httpx.Response:
    body, headers = payloads.signed(event, payload, **kwargs)
    return await client.post(URL_PATH, content=body, headers=headers)


async def still_serving(client: httpx.AsyncClient, store: DeliveryStore) -> None:
    delivery_id = payloads.new_delivery_id()
    response = await post(client, "push", payloads.push(), delivery_id=delivery_id)
    assert response.status_code == 202
    assert store.get(delivery_id) is not None


def bad_signatures(body: bytes) -> list[dict[str, str]]:
    good = sign(payloads.SECRET, body)
    digest = good.removeprefix("sha256=")
    return [
        {},
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": "sha1=" + digest[:40]},
        {"X-Hub-Signature-256": digest},
        {"X-Hub-Signature-256": good[:-2]},
        {"X-Hub-Signature-256": "sha256=" + "g" * 64},
        {"X-Hub-Signature-256": sign("some-other-secret-0123456789", body)},
        {"X-Hub-Signature-256": sign(payloads.SECRET, body + b" ")},
    ]


async def test_bad_signatures_get_401_and_nothing_is_recorded(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    body = json.dumps(payloads.push()).encode()
    for signature in bad_signatures(body):
        delivery_id = payloads.new_delivery_id()
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery_id, **signature}
        response = await client.post(URL_PATH, content=body, headers=headers)
        assert response.status_code == 401, signature
        assert response.json() == {"error": "missing or invalid signature"}
        assert served.store.get(delivery_id) is None
    await still_serving(client, served.store)


async def test_the_previous_secret_still_signs_during_rotation(client: httpx.AsyncClient) -> None:
    response = await post(client, "push", payloads.push(), secret=payloads.OLD_SECRET)
    assert response.status_code == 202


async def test_a_body_over_the_cap_gets_413(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    body = b'{"pad": "' + b"x" * CAP + b'"}'
    _, headers = payloads.signed("push", body)
    response = await client.post(URL_PATH, content=body, headers=headers)
    assert response.status_code == 413
    await still_serving(client, served.store)


async def test_a_chunked_body_over_the_cap_gets_413(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    body = b'{"pad": "' + b"x" * (4 * CAP) + b'"}'
    _, headers = payloads.signed("push", body)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    try:
        response = await client.post(URL_PATH, content=chunks(), headers=headers)
    except httpx.WriteError:
        pass  # the server answered and closed before the rest was sent: also a refusal
    else:
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.status_code == 413
    await still_serving(client, served.store)


async def test_a_lying_content_length_cannot_get_past_the_cap(tmp_path: Path) -> None:
    """At the ASGI boundary the app counts what arrives, whatever the header claims."""
    app = create_app(receiver_settings(tmp_path), dispatch=False)
    body = b'{"pad": "' + b"x" * (2 * CAP) + b'"}'
    _, headers = payloads.signed("push", body)
    headers["Content-Length"] = "100"
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    sent: list[MutableMapping[str, Any]] = []
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        chunk = chunks[received]
        received += 1
        return {"type": "http.request", "body": chunk, "more_body": received < len(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL_PATH,
        "raw_path": URL_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert received < len(chunks)  # it stopped reading once over the cap


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"[1, 2, 3]", b'"a string"', b"\xff\xfe{}", b"[" * 30_000 + b"]" * 30_000],
)
async def test_signed_bodies_that_are_not_a_json_object_get_400(
    client: httpx.AsyncClient, served: ServedReceiver, body: bytes
) -> None:
    delivery_id = payloads.new_delivery_id()
    response = await post(client, "push", body, delivery_id=delivery_id)
    assert response.status_code == 400
    assert served.store.get(delivery_id) is None
    await still_serving(client, served.store)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-GitHub-Event": ""},
        {"X-GitHub-Event": "push; rm -rf /"},
        {"X-GitHub-Delivery": ""},
        {"X-GitHub-Delivery": "../../etc/passwd"},
        {"X-GitHub-Delivery": "a" * 101},
    ],
)
async def test_missing_or_odd_event_and_delivery_headers_get_400(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    body, signed_headers = payloads.signed("push", payloads.push())
    response = await client.post(URL_PATH, content=body, headers={**signed_headers, **headers})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("pull_request", {"action": "opened"}),
        ("pull_request", {**payloads.pull_request(), "number": "42"}),
        ("pull_request", {**payloads.pull_request(), "pull_request": None}),
        ("push", {"ref": "refs/heads/main"}),
        ("push", {**payloads.push(), "after": ["a" * 40]}),
        ("release", {"action": "published", "release": {}}),
    ],
)
async def test_signed_but_incomplete_payloads_get_422_and_the_process_keeps_serving(
    client: httpx.AsyncClient, served: ServedReceiver, event: str, payload: dict[str, Any]
) -> None:
    response = await post(client, event, payload)
    assert response.status_code == 422
    assert "fields" in response.json()["error"]
    await still_serving(client, served.store)


async def test_ping_is_answered_200(client: httpx.AsyncClient) -> None:
    response = await post(client, "ping", payloads.ping())
    assert response.status_code == 200
    assert response.json()["status"] == "pong"


async def test_an_accepted_delivery_is_recorded_pending_before_the_202(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    delivery_id = payloads.new_delivery_id()
    response = await post(client, "pull_request", payloads.pull_request(), delivery_id=delivery_id)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "delivery": delivery_id, "pipeline": "pr"}
    recorded = served.store.get(delivery_id)
    assert recorded is not None and recorded.status == "pending"
    assert recorded.event == "pull_request" and recorded.action == "opened"
    assert recorded.request is not None and recorded.request.run_name.startswith("pr-42-")
    assert recorded.payload_json() == payloads.pull_request()


async def test_unknown_events_and_actions_are_recorded_as_ignored(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    for event, payload in [
        ("issues", {"action": "opened", "issue": {}}),
        ("pull_request", payloads.pull_request(action="closed")),
        ("push", payloads.push(ref="refs/tags/v1")),
        ("release", payloads.release(action="created")),
    ]:
        delivery_id = payloads.new_delivery_id()
        response = await post(client, event, payload, delivery_id=delivery_id)
        assert response.status_code == 202
        assert response.json()["status"] == "ignored"
        recorded = served.store.get(delivery_id)
        assert recorded is not None and recorded.status == "ignored" and recorded.request is None
        assert delivery_id not in {d.id for d in served.store.pending()}


async def test_a_delivery_for_a_repository_off_the_allowlist_is_recorded_as_ignored(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    payload = payloads.push()
    payload["repository"] = payloads.repository("other/api")
    delivery_id = payloads.new_delivery_id()
    response = await post(client, "push", payload, delivery_id=delivery_id)
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert "other/api is not served" in response.json()["reason"]
    recorded = served.store.get(delivery_id)
    assert recorded is not None and recorded.status == "ignored" and recorded.request is None
    assert recorded.last_error is not None and "GANTRY_WEBHOOK_REPOSITORIES" in recorded.last_error
    assert delivery_id not in {d.id for d in served.store.pending()}


async def test_a_repeated_delivery_id_is_a_duplicate(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    delivery_id = payloads.new_delivery_id()
    first = await post(client, "push", payloads.push(), delivery_id=delivery_id)
    again = await post(client, "push", payloads.push(), delivery_id=delivery_id)
    assert first.json()["status"] == "accepted"
    assert again.status_code == 200 and again.json()["status"] == "duplicate"


async def test_fifty_concurrent_copies_of_a_delivery_are_accepted_once(
    client: httpx.AsyncClient, served: ServedReceiver
) -> None:
    delivery_id = payloads.new_delivery_id()
    responses = await asyncio.gather(
        *(post(client, "push", payloads.push(), delivery_id=delivery_id) for _ in range(50))
    )
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["accepted"] + ["duplicate"] * 49
    assert [d.id for d in served.store.pending()].count(delivery_id) == 1


async def test_no_log_line_or_answer_carries_the_secret_or_signature(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body, headers = payloads.signed("pull_request", payloads.pull_request())
    signature = headers["X-Hub-Signature-256"]
    answers = [await client.post(URL_PATH, content=body, headers=headers)]
    answers.append(await client.post(URL_PATH, content=body, headers=headers))  # duplicate
    bad = {**headers, "X-GitHub-Delivery": payloads.new_delivery_id()}
    bad["X-Hub-Signature-256"] = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    answers.append(await client.post(URL_PATH, content=body, headers=bad))
    answers.append(await client.get("/readyz"))
    assert [a.status_code for a in answers[:3]] == [202, 200, 401]
    digest = signature.removeprefix("sha256=")
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records, "the request cycle logged nothing: the check would prove nothing"
    for text in [logged, *(a.text for a in answers)]:
        for secret in (payloads.SECRET, payloads.OLD_SECRET, digest, bad["X-Hub-Signature-256"]):
            assert secret not in text


async def test_healthz_answers_while_the_process_lives(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_is_503_naming_the_store_when_it_is_unwritable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "webhooks.db")
    with ServedReceiver(receiver_settings(tmp_path), store, dispatch=False) as receiver:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=10) as http:
            shutil.rmtree(tmp_path / "state")
            response = await http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["store"] == "not writable"
            # Deliveries are refused (not acknowledged) while nothing can record them.
            refused = await post(http, "push", payloads.push())
            assert refused.status_code == 503


async def test_readyz_is_ready_with_prefect_down_and_says_so(tmp_path: Path) -> None:
    # Deliveries are stored while Prefect is down and dispatched once it is back: a Prefect
    # outage must not turn GitHub's deliveries into 5xx (which GitHub never retries).
    down = f"http://127.0.0.1:{free_port()}/api"
    with ServedReceiver(
        receiver_settings(tmp_path), dispatch=False, client_factory=lambda: PrefectClient(down)
    ) as receiver:
        async with httpx.AsyncClient(base_url=receiver.url, timeout=10) as http:
            response = await http.get("/readyz")
            accepted = await post(http, "push", payloads.push())
    assert response.status_code == 200
    assert response.json() == {"ready": True, "store": "ok", "prefect": "unreachable"}
    assert accepted.status_code == 202


async def test_each_answered_delivery_is_counted_once_by_its_outcome(
    client: httpx.AsyncClient,
) -> None:
    # A ping is answered (pong) but is no delivery to count; it goes first, so a count it
    # wrongly sent would arrive among the four below.
    with metrics_to_agent() as agent:
        assert (await post(client, "ping", payloads.ping())).json()["status"] == "pong"
        delivery_id = payloads.new_delivery_id()
        accepted = await post(client, "push", payloads.push(), delivery_id=delivery_id)
        duplicate = await post(client, "push", payloads.push(), delivery_id=delivery_id)
        off_the_list = payloads.push()
        off_the_list["repository"] = payloads.repository("other/api")
        ignored = await post(client, "push", off_the_list)
        body, headers = payloads.signed("push", payloads.push(), secret="not-the-secret")
        rejected = await client.post(URL_PATH, content=body, headers=headers)
        answers = [r.status_code for r in (accepted, duplicate, ignored, rejected)]
        assert answers == [202, 200, 202, 401]
        counted = await at_least(agent, "gantry.webhook.deliveries", 4)
    assert sorted(d.tag("outcome") or "" for d in counted) == [
        "accepted",
        "duplicate",
        "ignored",
        "rejected",
    ]
    assert {(d.value, d.type) for d in counted} == {("1", "c")}
