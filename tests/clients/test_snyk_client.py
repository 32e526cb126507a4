"""SnykClient against a real local server answering like Snyk's v1 and REST APIs."""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from clients.snyk import (
    REST_VERSION,
    RetryPolicy,
    SnykAuthError,
    SnykClient,
    SnykError,
    SnykNotFoundError,
    SnykRateLimited,
    SnykResponseError,
    SnykUnavailable,
    purl,
)

if TYPE_CHECKING:
    from tests.fakes.snyk_api import FakeSnyk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_retry_after=2.0, max_wait=3.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(
    fake: FakeSnyk, token: str | None = None, org: str | None = "", policy: RetryPolicy = FAST
) -> SnykClient:
    return SnykClient(
        SecretStr(token or fake.token),
        api_url=fake.url,
        org_id=fake.org_id if org == "" else org,
        policy=policy,
        timeout=5,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_clean_requirements_give_no_findings_and_send_the_documented_request(
    snyk_api: FakeSnyk,
) -> None:
    async with client_for(snyk_api) as client:
        findings = await client.test_requirements("requests==2.32.3\n")

    assert findings == []
    [request] = snyk_api.requests
    assert (request.method, request.path) == ("POST", "/v1/test/pip")
    assert request.query == {"org": snyk_api.org_id}
    assert request.headers["authorization"] == f"token {snyk_api.token}"
    assert request.json == {
        "encoding": "plain",
        "files": {"target": {"contents": "requests==2.32.3\n"}},
    }


async def test_vulnerable_requirements_give_findings_with_the_documented_fields(
    snyk_api: FakeSnyk,
) -> None:
    snyk_api.add_vulnerability(
        "Django", "4.2.0", "critical", id="SNYK-PYTHON-DJANGO-1", title="SQLi", fixed_in=["4.2.14"]
    )
    snyk_api.add_vulnerability("jinja2", "3.1.2", "medium", id="SNYK-PYTHON-JINJA2-2")

    async with client_for(snyk_api, org=None) as client:
        findings = await client.test_requirements("django==4.2.0\njinja2==3.1.2\nflask==3.0.0\n")

    assert [(f.id, f.package, f.version, f.severity) for f in findings] == [
        ("SNYK-PYTHON-DJANGO-1", "Django", "4.2.0", "critical"),
        ("SNYK-PYTHON-JINJA2-2", "jinja2", "3.1.2", "medium"),
    ]
    django = findings[0]
    assert django.title == "SQLi"
    assert django.fixed_in == ["4.2.14"]
    assert django.from_path == ["django@4.2.0"]
    assert django.url == "https://security.snyk.io/vuln/SNYK-PYTHON-DJANGO-1"
    assert findings[1].fixed_in == []  # fixedIn is optional in v1
    assert snyk_api.requests[0].query == {}  # org is optional


async def test_package_issues_follow_links_next_across_pages(snyk_api: FakeSnyk) -> None:
    for n in range(5):
        snyk_api.add_vulnerability("django", "4.2.0", "high", id=f"SNYK-PYTHON-DJANGO-{n}")
    snyk_api.add_vulnerability("django", "5.0.0", "low", id="SNYK-PYTHON-DJANGO-OTHER")

    async with client_for(snyk_api) as client:
        findings = await client.package_issues("pypi", "Django", "4.2.0")

    assert [f.id for f in findings] == [f"SNYK-PYTHON-DJANGO-{n}" for n in range(5)]
    requests = snyk_api.requests_to("/issues")
    assert len(requests) == 3  # page size 2: five issues in three pages
    assert requests[0].path == f"/rest/orgs/{snyk_api.org_id}/packages/pkg:pypi/django@4.2.0/issues"
    assert requests[0].query["version"] == REST_VERSION
    assert all(r.headers["authorization"] == f"token {snyk_api.token}" for r in requests)
    assert requests[2].query["offset"] == "4"


async def test_package_issues_read_severity_and_upgrade_from_rest_shapes(
    snyk_api: FakeSnyk,
) -> None:
    snyk_api.add_vulnerability("urllib3", "1.26.0", "medium", fixed_in=["1.26.18", "2.0.7"])

    async with client_for(snyk_api) as client:
        [finding] = await client.package_issues("pypi", "urllib3", "1.26.0")

    assert (finding.package, finding.version, finding.severity) == ("urllib3", "1.26.0", "medium")
    assert finding.fixed_in == ["1.26.18", "2.0.7"]
    assert finding.from_path == ["urllib3@1.26.0"]


def test_purl_normalises_pypi_names() -> None:
    assert purl("pypi", "Zope.Interface", "6.0") == "pkg:pypi/zope-interface@6.0"


async def test_package_issues_without_an_org_id_are_refused(snyk_api: FakeSnyk) -> None:
    async with client_for(snyk_api, org=None) as client:
        with pytest.raises(SnykError, match="organization id"):
            await client.package_issues("pypi", "django", "4.2.0")
    assert snyk_api.requests == []


async def test_wrong_token_raises_auth_error_at_once_without_the_token(
    snyk_api: FakeSnyk, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "snyk-wrong-token-987654321"
    caplog.set_level(logging.DEBUG)
    async with client_for(snyk_api, token=wrong) as client:
        with pytest.raises(SnykAuthError, match="HTTP 401: Not authorised") as raised:
            await client.test_requirements("django==4.2.0\n")

    assert len(snyk_api.requests) == 1
    assert raised.value.status == 401
    for text in (str(raised.value), repr(raised.value), repr(client), caplog.text):
        assert wrong not in text


async def test_rest_403_and_404_raise_at_once(snyk_api: FakeSnyk) -> None:
    snyk_api.fail_next(1, "unauthorised", status=403)
    async with client_for(snyk_api) as client:
        with pytest.raises(SnykAuthError, match="HTTP 403: Not authorised"):
            await client.package_issues("pypi", "django", "4.2.0")
    async with client_for(snyk_api, org="not-our-org") as client:
        with pytest.raises(SnykNotFoundError, match="HTTP 404"):
            await client.package_issues("pypi", "django", "4.2.0")
    assert len(snyk_api.requests) == 2


async def test_rate_limit_waits_the_retry_after_then_succeeds(snyk_api: FakeSnyk) -> None:
    snyk_api.add_vulnerability("django", "4.2.0", "high")
    snyk_api.fail_next(1, "rate_limit", retry_after="0.2")

    started = time.monotonic()
    async with client_for(snyk_api) as client:
        findings = await client.test_requirements("django==4.2.0\n")

    assert len(findings) == 1
    assert time.monotonic() - started >= 0.2
    assert len(snyk_api.requests) == 2


async def test_rate_limit_without_retry_after_backs_off_then_succeeds(snyk_api: FakeSnyk) -> None:
    snyk_api.fail_next(2, "rate_limit", path_contains="/issues")
    async with client_for(snyk_api) as client:
        assert await client.package_issues("pypi", "django", "4.2.0") == []
    assert len(snyk_api.requests) == 3


async def test_retry_after_beyond_the_cap_gives_up_at_once(snyk_api: FakeSnyk) -> None:
    snyk_api.fail_next(1, "rate_limit", retry_after="3600")
    started = time.monotonic()
    async with client_for(snyk_api) as client:
        with pytest.raises(SnykRateLimited, match="rate limited"):
            await client.test_requirements("django==4.2.0\n")
    # Answered before the hour Snyk asked for could have passed: it never slept on it.
    assert time.monotonic() - started < 3600
    assert len(snyk_api.requests) == 1


async def test_endless_rate_limiting_stops_after_the_bounded_waits(snyk_api: FakeSnyk) -> None:
    snyk_api.fail_next(50, "rate_limit", retry_after="0")
    async with client_for(snyk_api) as client:
        with pytest.raises(SnykRateLimited):
            await client.test_requirements("django==4.2.0\n")
    assert len(snyk_api.requests) == FAST.attempts + 1


async def test_server_error_is_retried_then_succeeds(snyk_api: FakeSnyk) -> None:
    snyk_api.fail_next(2, "server_error")
    async with client_for(snyk_api) as client:
        assert await client.test_requirements("django==4.2.0\n") == []
    assert len(snyk_api.requests) == 3


async def test_persistent_server_errors_raise_unavailable_with_the_error_reference(
    snyk_api: FakeSnyk,
) -> None:
    snyk_api.fail_next(10, "server_error")
    async with client_for(snyk_api) as client:
        with pytest.raises(SnykUnavailable, match=r"HTTP 500 after 3 attempts.*error reference"):
            await client.test_requirements("django==4.2.0\n")
    assert len(snyk_api.requests) == FAST.attempts


async def test_malformed_json_raises_response_error(snyk_api: FakeSnyk) -> None:
    snyk_api.fail_next(1, "malformed")
    async with client_for(snyk_api) as client:
        with pytest.raises(SnykResponseError, match="not JSON"):
            await client.test_requirements("django==4.2.0\n")
    snyk_api.fail_next(1, "malformed", path_contains="/issues")
    async with client_for(snyk_api) as client:
        with pytest.raises(SnykResponseError, match="not JSON"):
            await client.package_issues("pypi", "django", "4.2.0")


async def test_unreachable_snyk_raises_unavailable_after_bounded_retries() -> None:
    client = SnykClient(
        SecretStr("snyk-unreachable-token"),
        api_url=f"http://127.0.0.1:{free_port()}",
        policy=FAST,
        timeout=2,
    )
    async with client:
        with pytest.raises(SnykUnavailable, match="ConnectError after 3 attempts") as raised:
            await client.test_requirements("django==4.2.0\n")
    assert "snyk-unreachable-token" not in str(raised.value)
    assert raised.value.__cause__ is None  # httpx errors stop at the boundary


async def test_a_link_to_another_host_is_refused(snyk_api: FakeSnyk) -> None:
    client = client_for(snyk_api)
    async with client:
        assert client._next_path("/orgs/x/packages/p/issues?offset=2") == (
            "/rest/orgs/x/packages/p/issues?offset=2"
        )
        assert client._next_path(f"{snyk_api.url}/rest/a?b=1") == "/rest/a?b=1"
        with pytest.raises(SnykResponseError, match="away from the Snyk API"):
            client._next_path("https://elsewhere.example/rest/a")


async def test_a_request_slower_than_the_timeout_is_retried_then_gives_up(
    snyk_api: FakeSnyk,
) -> None:
    snyk_api.fail_next(3, "slow", delay=0.5)
    client = SnykClient(SecretStr(snyk_api.token), api_url=snyk_api.url, policy=FAST, timeout=0.2)
    async with client:
        with pytest.raises(SnykUnavailable, match="ReadTimeout after 3 attempts"):
            await client.test_requirements("django==4.2.0\n")
    assert len(snyk_api.requests) == 3


async def test_a_vulnerability_without_a_package_is_a_response_error(
    snyk_api: FakeSnyk,
) -> None:
    client = client_for(snyk_api)
    async with client:
        with pytest.raises(SnykResponseError, match="has no 'package'"):
            client._v1_finding({"id": "SNYK-1", "version": "1.0", "severity": "high"})
        with pytest.raises(SnykResponseError, match="unknown severity"):
            client._v1_finding(
                {"id": "SNYK-1", "package": "a", "version": "1.0", "severity": "severe"}
            )


@pytest.mark.parametrize(
    ("upgrade_path", "fixed_in"),
    [
        ([False, "django@4.2.14"], ["4.2.14"]),  # the vulnerable package's own step
        ([False, "Django_Core@1.2"], []),  # another package's step is not a fixed version
        (["flask@3.0.3", False], []),  # fixed by upgrading the direct dependency only
        ([], []),  # not upgradable
        ("django@4.2.14", []),  # not the documented list
    ],
)
def test_without_fixed_in_the_upgrade_path_names_the_fixed_version(
    upgrade_path: object, fixed_in: list[str]
) -> None:
    vuln = {
        "id": "SNYK-PYTHON-DJANGO-1",
        "package": "Django",
        "version": "4.2.0",
        "severity": "high",
        "from": ["flask@3.0.0", "django@4.2.0"],
        "upgradePath": upgrade_path,
    }
    assert SnykClient._v1_finding(vuln).fixed_in == fixed_in


def test_fixed_in_wins_over_the_upgrade_path() -> None:
    vuln = {
        "id": "SNYK-PYTHON-DJANGO-1",
        "package": "django",
        "version": "4.2.0",
        "severity": "high",
        "fixedIn": ["4.2.14", "5.0.7"],
        "upgradePath": [False, "django@4.2.14"],
    }
    assert SnykClient._v1_finding(vuln).fixed_in == ["4.2.14", "5.0.7"]
