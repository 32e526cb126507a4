"""Gantry's metrics reach a DogStatsD socket with the right names, types, values and tags."""

from __future__ import annotations

import logging
import socket

import pytest

from blocks.observability import DatadogSettings
from clients.metrics import Metrics, get_metrics, set_metrics, tag
from tests.observability.conftest import Datagram, StatsdListener


@pytest.fixture
def metrics(statsd: StatsdListener) -> Metrics:
    return Metrics("127.0.0.1", statsd.port)


def _by_name(datagrams: list[Datagram]) -> dict[str, Datagram]:
    return {d.name: d for d in datagrams}


def test_pipeline_finished_sends_a_run_count_and_a_duration_distribution(
    metrics: Metrics, statsd: StatsdListener
) -> None:
    metrics.pipeline_finished("merge", "success", 12.5, "acme/api")
    got = _by_name(statsd.receive(2))
    tags = ("pipeline:merge", "outcome:success", "repository:acme/api")
    assert got["gantry.pipeline.runs"] == Datagram("gantry.pipeline.runs", "1", "c", tags)
    assert got["gantry.pipeline.duration"] == Datagram(
        "gantry.pipeline.duration", "12.5", "d", tags
    )


def test_stage_finished_carries_the_stage_tag(metrics: Metrics, statsd: StatsdListener) -> None:
    metrics.stage_finished("pr", "unit", "failed", 3.25, "acme/api")
    got = _by_name(statsd.receive(2))
    tags = ("pipeline:pr", "stage:unit", "outcome:failed", "repository:acme/api")
    assert got["gantry.stage.runs"] == Datagram("gantry.stage.runs", "1", "c", tags)
    assert got["gantry.stage.duration"] == Datagram("gantry.stage.duration", "3.25", "d", tags)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda m: m.queue_time("pr", 2.5, "acme/api"),
            Datagram(
                "gantry.pipeline.queue_time", "2.5", "d", ("pipeline:pr", "repository:acme/api")
            ),
        ),
        (
            lambda m: m.webhook_delivery("duplicate"),
            Datagram("gantry.webhook.deliveries", "1", "c", ("outcome:duplicate",)),
        ),
        (
            lambda m: m.webhook_backlog(7),
            Datagram("gantry.webhook.backlog", "7", "g", ()),
        ),
        (
            lambda m: m.deployment("staging", "success", "acme/api"),
            Datagram(
                "gantry.deployments",
                "1",
                "c",
                ("environment:staging", "outcome:success", "repository:acme/api"),
            ),
        ),
        (
            lambda m: m.rollback("production", "acme/api"),
            Datagram(
                "gantry.rollbacks", "1", "c", ("environment:production", "repository:acme/api")
            ),
        ),
        (
            lambda m: m.release_outcome("rolled_back", "acme/api"),
            Datagram(
                "gantry.release.outcome", "1", "c", ("outcome:rolled_back", "repository:acme/api")
            ),
        ),
        (
            lambda m: m.dora_gauge("change_failure_rate", 0.25, None, "30d"),
            Datagram(
                "gantry.dora.change_failure_rate", "0.25", "g", ("repository:all", "window:30d")
            ),
        ),
    ],
)
def test_each_named_metric_has_its_name_type_value_and_tags(
    metrics: Metrics, statsd: StatsdListener, call: object, expected: Datagram
) -> None:
    call(metrics)  # type: ignore[operator]
    assert statsd.receive(1) == [expected]


def test_tag_values_are_sanitized_so_the_datagram_stays_well_formed(
    metrics: Metrics, statsd: StatsdListener
) -> None:
    metrics.deployment("Prod|uction", "ok,#bad", "Acme/API Service")
    [datagram] = statsd.receive(1)
    assert datagram.tags == (
        "environment:prod_uction",
        "outcome:ok_bad",
        "repository:acme/api_service",
    )


def test_tags_are_bounded_and_never_empty() -> None:
    assert tag("repository", "") == "repository:unknown"
    assert len(tag("repository", "x" * 500)) == 200


def test_settings_block_gives_the_agent_address_and_constant_tags(statsd: StatsdListener) -> None:
    settings = DatadogSettings(
        agent_host="127.0.0.1", agent_port=statsd.port, tags=["team:platform"]
    )
    Metrics.from_settings(settings).webhook_backlog(0)
    [datagram] = statsd.receive(1)
    assert datagram.tags == ("team:platform",)


def test_environment_gives_the_agent_address(statsd: StatsdListener) -> None:
    env = {"DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": str(statsd.port)}
    metrics = Metrics.from_env(env)
    assert metrics.enabled
    metrics.webhook_delivery("accepted")
    assert statsd.receive(1)[0].name == "gantry.webhook.deliveries"


def test_without_an_agent_metrics_are_a_silent_no_op(
    statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DD_AGENT_HOST", raising=False)
    monkeypatch.delenv("DD_DOGSTATSD_PORT", raising=False)
    assert not Metrics.from_settings(DatadogSettings()).enabled
    assert not Metrics.from_settings(None).enabled
    metrics = Metrics.from_env({})
    assert not metrics.enabled
    metrics.pipeline_finished("pr", "success", 1.0, "acme/api")
    metrics.webhook_backlog(3)
    assert statsd.nothing_within(0.2)


def test_a_bad_port_in_the_environment_turns_metrics_off() -> None:
    assert not Metrics.from_env({"DD_DOGSTATSD_PORT": "eighty"}).enabled


def test_an_unreachable_agent_never_raises_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A UDP port nobody listens on: the kernel answers "port unreachable" to each send.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    metrics = Metrics("127.0.0.1", closed_port)
    with caplog.at_level(logging.DEBUG, logger="datadog.dogstatsd"):
        for _ in range(20):
            metrics.pipeline_finished("pr", "success", 1.0, "acme/api")
    library_warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(library_warnings) <= 1


def test_an_unresolvable_agent_host_disables_metrics_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="gantry.metrics"):
        metrics = Metrics("host name with spaces.invalid", 8125)
    assert not metrics.enabled
    metrics.rollback("production", "acme/api")
    assert [r.name for r in caplog.records] == ["gantry.metrics"]


def test_the_shared_instance_can_be_replaced(statsd: StatsdListener) -> None:
    replacement = Metrics("127.0.0.1", statsd.port)
    set_metrics(replacement)
    assert get_metrics() is replacement
    get_metrics().webhook_backlog(1)
    assert statsd.receive(1)[0].value == "1"
