"""`gantry demo`, the command behind `make demo`, watched the way an operator would watch it.

One full demo (PR → merge → staging → approved release → production) on a stack of its own,
with every secret set and every outside service answered on loopback: GitHub, Snyk, Datadog's
API, PagerDuty, and a DogStatsD agent. Then: every log line is JSON and holds no secret, every
datagram is accounted for, `gantry dora` answers, and `/readyz` tells the truth.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from core.ports import free_port
from core.settings import StackSettings
from deployments.prefect_server import venv_bin
from deployments.stack import PROJECT_DIR, Stack
from tests.deployments.test_front_door import LOOPBACK, stack_listeners
from tests.fakes.datadog_api import FakeDatadog
from tests.fakes.dogstatsd import Datagram, DogStatsdAgent
from tests.fakes.github_api import FakeGitHub
from tests.fakes.pagerduty_api import FakePagerDuty
from tests.fakes.snyk_api import FakeSnyk
from tests.plugins.stack import free_port_pair, stack_environment

pytestmark = pytest.mark.slow

DEMO_TIMEOUT = 1500
# A pushed image reference: repository@sha256:<64 hex digits>, never cut.
IMAGE_REFERENCE = re.compile(r"[\w.:/-]+@sha256:[0-9a-f]{64}")
IMAGE_LINE = re.compile(r"image [a-z0-9._-]+: [\w.:/-]+@sha256:[0-9a-f]{64}")
# The sample service's repository is a folder named sample-service: that is its slug.
SERVICE = "sample-service"
PIPELINES = ("pr", "merge", "release")
# Every metric Gantry sends, with its DogStatsD type (docs/observability.md lists them).
CATALOGUE = {
    "gantry.pipeline.runs": "c",
    "gantry.pipeline.duration": "d",
    "gantry.pipeline.queue_time": "d",
    "gantry.stage.runs": "c",
    "gantry.stage.duration": "d",
    "gantry.webhook.deliveries": "c",
    "gantry.webhook.backlog": "g",
    "gantry.deployments": "c",
    "gantry.rollbacks": "c",
    "gantry.release.outcome": "c",
    "gantry.worker.heartbeat": "c",
}
DORA_GAUGES = {
    "gantry.dora.deployments",
    "gantry.dora.deployment_frequency",
    "gantry.dora.lead_time.median",
    "gantry.dora.lead_time.p90",
    "gantry.dora.change_failure_rate",
    "gantry.dora.time_to_restore.median",
    "gantry.dora.open_failures",
}
LOG_KEYS = {"timestamp", "level", "logger", "message"}


def run_gantry(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("gantry"), *args],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ObservedDemo:
    settings: StackSettings
    env: dict[str, str]
    result: subprocess.CompletedProcess[str]
    agent: DogStatsdAgent
    snyk: FakeSnyk
    datadog: FakeDatadog
    pagerduty: FakePagerDuty
    secrets: dict[str, str] = field(default_factory=dict)

    def gantry(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_gantry(self.env, *args)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedDemo]:
    staging = free_port_pair()
    settings = StackSettings(
        home=tmp_path_factory.mktemp("observed-demo"),
        prefect_port=free_port(),
        webhook_port=free_port(),
        registry_port=free_port(),
        staging_port=staging,
        production_port=staging + 1,
    )
    chosen = {
        "github": "ghp_" + secrets.token_hex(18),
        "snyk": "snyk-" + secrets.token_hex(16),
        "datadog": secrets.token_hex(16),
        "pagerduty": secrets.token_hex(16),
        "webhook": secrets.token_hex(24),
    }
    with (
        DogStatsdAgent() as agent,
        FakeGitHub(token=chosen["github"]) as github,
        FakeSnyk(token=chosen["snyk"]) as snyk,
        FakeDatadog(api_key=chosen["datadog"]) as datadog,
        FakePagerDuty(routing_key=chosen["pagerduty"]) as pagerduty,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GANTRY_"))},
            **stack_environment(settings),
            "GANTRY_GITHUB_TOKEN": chosen["github"],
            "GANTRY_GITHUB_API_URL": github.url,
            "SNYK_TOKEN": chosen["snyk"],
            "SNYK_ORG_ID": snyk.org_id,
            "GANTRY_SNYK_API_URL": snyk.url,
            "DD_API_KEY": chosen["datadog"],
            "GANTRY_DATADOG_API_URL": datadog.url,
            "DD_AGENT_HOST": "127.0.0.1",
            "DD_DOGSTATSD_PORT": str(agent.port),
            "GANTRY_PAGERDUTY_ROUTING_KEY": chosen["pagerduty"],
            "GANTRY_PAGERDUTY_EVENTS_URL": pagerduty.events_url,
            "GANTRY_WEBHOOK_SECRET": chosen["webhook"],
        }
        try:
            result = run_gantry(env, "demo", timeout=DEMO_TIMEOUT)
            # The Prefect API credential `gantry demo` generated into the state folder.
            chosen["prefect-api"] = settings.api_auth_string()
            # Let the last datagrams and heartbeats land before anyone counts them.
            time.sleep(2)
            yield ObservedDemo(settings, env, result, agent, snyk, datadog, pagerduty, chosen)
        finally:
            Stack(settings).down(purge=True)


def test_the_demo_takes_the_sample_service_to_production(observed: ObservedDemo) -> None:
    result = observed.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Production serves the same digests" in result.stdout


RUN_LINK = re.compile(r"See the run in the Prefect UI: (\S+)/runs/flow-run/([0-9a-f-]{36})$")


def test_the_demo_prints_the_prefect_ui_address_and_the_link_to_each_run(
    observed: ObservedDemo,
) -> None:
    ui = observed.settings.prefect_url
    lines = observed.result.stdout.splitlines()
    assert f"Prefect UI: {ui}" in lines, observed.result.stdout[-3000:]
    links = [m for line in lines if (m := RUN_LINK.match(line.strip()))]
    assert [m.group(1) for m in links] == [ui] * len(PIPELINES), lines
    # Each link is the page of the pipeline's own run on this stack's server, in order.

    async def read(run_id: str) -> str:
        async with PrefectClient(
            observed.settings.prefect_api_url, auth_string=observed.settings.api_auth_string()
        ) as client:
            run = await client.read_flow_run(uuid.UUID(run_id))
            assert run.deployment_id is not None
            return (await client.read_deployment(run.deployment_id)).name

    assert [asyncio.run(read(m.group(2))) for m in links] == list(PIPELINES)


def log_files(settings: StackSettings) -> list[Path]:
    """Every background service's log: Gantry's own parts, Podman and the registry."""
    state = settings.state_dir
    engine_logs = [state / "podman" / "podman.log", state / "registry" / "registry.log"]
    return [*sorted(state.glob("run/*.log")), *engine_logs]


def test_every_service_log_line_is_one_json_object(observed: ObservedDemo) -> None:
    files = log_files(observed.settings)
    names = {f.name for f in files if f.is_file()}
    expected = {"prefect-server.log", "worker.log", "webhooks.log", "podman.log", "registry.log"}
    assert expected <= names, names
    problems: list[str] = []
    checked = 0
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            checked += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                problems.append(f"{path.name}:{number}: {line[:200]}")
                continue
            if not isinstance(record, dict) or not record.keys() >= LOG_KEYS:
                problems.append(f"{path.name}:{number}: missing {LOG_KEYS - set(record)}")
    assert checked > 50  # the logs were really there to read
    assert not problems, "\n".join(problems[:40])


def flow_run_logs_and_artifacts(settings: StackSettings) -> tuple[list[str], list[str]]:
    async def read() -> tuple[list[str], list[str]]:
        async with PrefectClient(
            settings.prefect_api_url, auth_string=settings.api_auth_string()
        ) as client:
            messages: list[str] = []
            while True:
                page = await client.read_logs(limit=200, offset=len(messages))
                messages += [log.message for log in page]
                if len(page) < 200:
                    break
            artifacts = await client.read_artifacts(limit=200)
            texts = [json.dumps(a.data) + (a.description or "") for a in artifacts]
            return messages, texts

    return asyncio.run(read())


def test_no_secret_reaches_a_log_line_an_artifact_or_the_terminal(observed: ObservedDemo) -> None:
    messages, artifacts = flow_run_logs_and_artifacts(observed.settings)
    assert len(messages) > 50 and len(artifacts) >= 6
    texts = {
        "Prefect run logs": "\n".join(messages),
        "Prefect artifacts": "\n".join(artifacts),
        "demo output": observed.result.stdout + observed.result.stderr,
        **{path.name: path.read_text(errors="replace") for path in log_files(observed.settings)},
    }
    leaks = [
        f"{name} secret in {where}"
        for where, text in texts.items()
        for name, secret in observed.secrets.items()
        if secret in text
    ]
    assert not leaks
    # The secrets were really in use: Snyk and Datadog were asked with them.
    assert observed.snyk.requests and observed.datadog.deployments


def metrics_of(observed: ObservedDemo) -> list[Datagram]:
    return observed.agent.datagrams()


def test_every_datagram_is_a_known_gantry_metric(observed: ObservedDemo) -> None:
    lines = observed.agent.lines
    assert len(lines) > 30
    unknown = []
    for line in lines:
        datagram = Datagram.parse(line)
        expected = "g" if datagram.name in DORA_GAUGES else CATALOGUE.get(datagram.name)
        if expected != datagram.type:
            unknown.append(line)
        float(datagram.value)  # every value is a number
    assert not unknown, unknown[:20]


def test_each_pipeline_run_and_stage_is_counted_once_with_its_tags(observed: ObservedDemo) -> None:
    datagrams = metrics_of(observed)
    runs = [d for d in datagrams if d.name == "gantry.pipeline.runs"]
    assert sorted((d.tag("pipeline"), d.tag("outcome")) for d in runs) == [
        ("merge", "success"),
        ("pr", "success"),
        ("release", "success"),
    ]
    assert {d.tag("repository") for d in runs} == {SERVICE}
    durations = [d for d in datagrams if d.name == "gantry.pipeline.duration"]
    assert len(durations) == 3 and all(float(d.value) > 0 for d in durations)
    queued = Counter(d.tag("pipeline") for d in datagrams if d.name == "gantry.pipeline.queue_time")
    assert queued == Counter(PIPELINES)

    stages = Counter(
        (d.tag("pipeline"), d.tag("stage"), d.tag("outcome"))
        for d in datagrams
        if d.name == "gantry.stage.runs"
    )
    verification = ("lint", "static", "unit", "integration", "build", "scan")
    for stage in verification:
        assert stages[("pr", stage, "passed")] + stages[("pr", stage, "cached")] == 1, stage
        assert sum(stages[("merge", stage, o)] for o in ("passed", "cached")) == 1, stage
    for stage in ("push", "deploy-staging", "e2e"):
        assert stages[("merge", stage, "passed")] == 1, stage
    for stage in ("approval", "deploy-production", "smoke"):
        assert stages[("release", stage, "passed")] == 1, (stage, stages)
    assert all(count == 1 for count in stages.values()), stages
    stage_durations = [d for d in datagrams if d.name == "gantry.stage.duration"]
    assert len(stage_durations) == sum(stages.values())


def test_deployments_release_and_dora_are_measured(observed: ObservedDemo) -> None:
    datagrams = metrics_of(observed)
    deployments = sorted(
        (d.tag("environment"), d.tag("outcome"))
        for d in datagrams
        if d.name == "gantry.deployments"
    )
    assert deployments == [("production", "success"), ("staging", "success")]
    releases = [
        (d.tag("outcome"), d.value) for d in datagrams if d.name == "gantry.release.outcome"
    ]
    assert releases == [("success", "1")]
    assert not [d for d in datagrams if d.name == "gantry.rollbacks"]
    dora = {d.name: d for d in datagrams if d.name.startswith("gantry.dora.")}
    assert float(dora["gantry.dora.deployments"].value) == 1
    assert float(dora["gantry.dora.change_failure_rate"].value) == 0
    assert dora["gantry.dora.deployments"].tags == (f"repository:{SERVICE}", "window:30d")


def test_the_worker_heartbeat_names_its_pool(observed: ObservedDemo) -> None:
    beats = [d for d in metrics_of(observed) if d.name == "gantry.worker.heartbeat"]
    assert len(beats) >= 2
    assert {d.tag("work_pool") for d in beats} == {observed.settings.work_pool}


def test_gantry_dora_answers_for_the_sample_service(observed: ObservedDemo) -> None:
    result = observed.gantry("dora", "--repo", SERVICE, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["repository"] == SERVICE
    assert report["deployments"] == 1 and report["releases"] == 1
    assert report["change_failure_rate"] == 0
    assert report["lead_time_median_seconds"] > 0


def test_datadog_and_pagerduty_hear_about_the_release(observed: ObservedDemo) -> None:
    [deployment] = observed.datadog.deployments
    assert (deployment["env"], deployment["service"]) == ("production", SERVICE)
    [event] = observed.datadog.events
    assert "env:production" in event["tags"]
    # Paging is Datadog's (its release monitor): Gantry never calls PagerDuty itself.
    assert observed.pagerduty.requests == []


def test_the_repository_board_shows_the_demos_runs_and_release(observed: ObservedDemo) -> None:
    # Written by the pipelines themselves as they finished: the release (its last writer) left
    # its own run Completed, the merge run that made the candidate, and one deployment.
    settings = observed.settings

    async def read() -> list[Any]:
        async with PrefectClient(
            settings.prefect_api_url, auth_string=settings.api_auth_string()
        ) as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"board-{SERVICE}"]))
            )

    versions = asyncio.run(read())
    assert len(versions) >= 2, "the merge and the release each update the board"
    board = max(versions, key=lambda a: a.created).data
    assert isinstance(board, str)
    release = board.split("## Last release runs")[1].split("##")[0]
    assert "Completed" in release
    merge = board.split("## Last merge runs")[1].split("##")[0]
    assert "Completed" in merge
    assert "Deployments: 1 of 1 releases" in board
    # The one candidate was released: nothing is left open.
    assert "No open release candidates." in board


def test_run_merge_to_a_file_prints_each_image_reference_whole(
    observed: ObservedDemo, tmp_path: Path
) -> None:
    # Output to a file, as in a CI log: rich would wrap at 80 columns, cutting a reference
    # (repository@sha256:<64 hex>, well over 80 characters) across lines.
    repo = observed.settings.state_dir / "demo" / "sample-service"
    log = tmp_path / "merge.log"
    env = {k: v for k, v in observed.env.items() if k != "COLUMNS"}
    with log.open("w") as stdout:
        result = subprocess.run(
            [venv_bin("gantry"), "run", "merge", "--repo", str(repo), "--sha", "HEAD"],
            env=env,
            cwd=PROJECT_DIR,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=900,
            check=False,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:] + result.stderr[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("image ")]
    assert lines, text
    for line in lines:
        assert len(line) > 80, line
        assert IMAGE_LINE.fullmatch(line), line
    # The demo's own piped output names the same references, whole.
    assert IMAGE_REFERENCE.findall(observed.result.stdout), observed.result.stdout[-3000:]


def outward_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (its interfaces, bridges included)."""
    listed = subprocess.run(
        ["ip", "-j", "-4", "addr"], capture_output=True, text=True, timeout=10, check=True
    )
    return [
        info["local"]
        for link in json.loads(listed.stdout)
        for info in link.get("addr_info", [])
        if not info["local"].startswith("127.")
    ]


def test_the_stack_and_its_environments_listen_on_loopback_only(observed: ObservedDemo) -> None:
    # Before the Prefect server is stopped (the test below): every part and both environments up.
    settings = observed.settings
    listening = stack_listeners(settings.state_dir)
    ports = {port for _, port in listening}
    assert {settings.prefect_port, settings.webhook_port, settings.registry_port} <= ports
    assert {address for address, _ in listening} <= LOOPBACK, sorted(listening)
    # Staging and production are forwarded by the engine, not listened on by a process of ours:
    # they answer on loopback and refuse a connection to each of this host's other addresses.
    environments = {settings.staging_port, settings.production_port}
    outward = outward_addresses()
    assert outward, "this host has no address but loopback"
    for port in environments:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    for address in outward:
        for port in sorted(environments | ports):
            with socket.socket() as sock:
                sock.settimeout(5)
                assert sock.connect_ex((address, port)) != 0, f"{address}:{port} answers"


def test_readyz_stays_ready_and_says_so_when_the_prefect_api_is_gone(
    observed: ObservedDemo,
) -> None:
    # The store takes deliveries through a Prefect outage; a 503 here would make the platform
    # stop sending GitHub's deliveries, which GitHub never retries.
    url = f"http://127.0.0.1:{observed.settings.webhook_port}/readyz"
    assert httpx.get(url, timeout=10).json() == {"ready": True, "store": "ok", "prefect": "ok"}
    Stack(observed.settings).server.stop()
    deadline = time.monotonic() + 30
    answer = httpx.get(url, timeout=10)
    while answer.json().get("prefect") == "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
        answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"ready": True, "store": "ok", "prefect": "unreachable"}
    assert httpx.get(url.replace("readyz", "healthz"), timeout=10).status_code == 200
