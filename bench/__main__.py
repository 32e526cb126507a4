"""Run the benchmark: `make bench` (or `python -m bench [--deliveries N] [--no-sample]`).

Every figure is printed beside the reference it is measured against in the same run, so the
ratios hold on a shared, noisy machine even when the absolute seconds do not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from rich.console import Console
from rich.table import Table

from bench.goals import goals_table, percentile
from bench.receiver_load import load as receiver_load
from bench.repo import STEP_SECONDS, make_repo, step_argv
from bench.supply import measure_supply
from bench.triggers import (
    BENCH_REPO_ID,
    BENCH_REPOSITORY,
    command_seconds,
    gantry_env,
    new_commit,
    signed,
    webhook_to_first_step,
)
from core.ports import free_port, free_port_block
from core.settings import PR_DEPLOYMENT, StackSettings
from deployments.demo import prepare_sample_repo
from deployments.stack import Stack
from flows.steps.proc import run_argv
from flows.steps.sandbox.base import StepSpec
from flows.steps.sandbox.local import LocalRunner

RESULTS = Path(__file__).resolve().parent / "results"
GANTRY = Path(sys.executable).with_name("gantry")
CLI_ROUNDS = 5
LOAD_COUNT = 1000
LOAD_RATE = 200.0
console = Console()


SANDBOX_ROUNDS = 15


def sandbox_cost(rounds: int = SANDBOX_ROUNDS) -> dict[str, float]:
    """Median wall time of a trivial command in the local sandbox and bare, interleaved."""
    # The same binary on both sides (a bare "python3" may be a slow pyenv shim on the host).
    argv = ("/usr/bin/python3", "-c", "pass")
    logger = logging.getLogger("bench.sandbox")
    runner = LocalRunner()

    async def timed() -> tuple[list[float], list[float]]:
        bare: list[float] = []
        boxed: list[float] = []
        with tempfile.TemporaryDirectory(prefix="gantry-bench-sbx-") as tmp:
            spec = StepSpec(argv=argv, workspace=Path(tmp), timeout=30)
            for _ in range(rounds):
                started = time.perf_counter()
                await run_argv(argv, Path(tmp), 30, logger)
                bare.append(time.perf_counter() - started)
                started = time.perf_counter()
                result = await runner.run(spec, logger)
                boxed.append(time.perf_counter() - started)
                if not result.ok:
                    raise RuntimeError(f"sandboxed {argv} failed: {result.describe()}")
        return bare, boxed

    bare, boxed = asyncio.run(timed())
    return {"bare": statistics.median(bare), "sandbox": statistics.median(boxed)}


def direct_step_times() -> dict[str, float]:
    """Each step's command run directly, one after the other: the work itself."""
    times = {}
    for stage, seconds in STEP_SECONDS.items():
        started = time.perf_counter()
        subprocess.run(step_argv(seconds), check=True, timeout=60)
        times[stage] = time.perf_counter() - started
    return times


async def flow_run_times(flow_run_id: uuid.UUID) -> tuple[float, dict[str, float]]:
    """The flow run's wall time and each task run's, as the Prefect server recorded them."""
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert run.start_time and run.end_time
    wall = (run.end_time - run.start_time).total_seconds()
    per_task = {
        t.name: (t.end_time - t.start_time).total_seconds()
        for t in tasks
        if t.start_time and t.end_time
    }
    return wall, per_task


async def run_pr(
    repo: Path, sha: str, no_cache: bool = False
) -> tuple[float, float, dict[str, float]]:
    """Trigger through the deployment; (trigger→final seconds, flow wall, task walls)."""
    started = time.perf_counter()
    params = {"repository": str(repo), "sha": sha, "no_cache": no_cache}
    created: Any = run_deployment(PR_DEPLOYMENT, parameters=params, timeout=900)
    flow_run: FlowRun = await created
    total = time.perf_counter() - started
    assert flow_run.state is not None and flow_run.state.is_final(), flow_run.state
    wall, tasks = await flow_run_times(flow_run.id)
    return total, wall, tasks


def bench_git_host(home: Path) -> dict[str, str]:
    """The bench stack's Git host: a folder of its own, where bench/repo is created.

    Webhook-triggered runs clone from the worker's Git host only, never a payload's URL.
    """
    return {
        "GANTRY_GIT_BASE_URL": (home / "git").as_uri() + "/",
        "GANTRY_ALLOW_FILE_REPOSITORIES": "1",
        "GANTRY_WEBHOOK_REPOSITORIES": BENCH_REPOSITORY,
    }


async def webhook_burst(settings: StackSettings, secret: str, count: int) -> list[float]:
    """Acknowledgement latency of ``count`` signed deliveries sent at once (ignored pushes)."""
    body = json.dumps(
        {
            "ref": "refs/heads/feature",
            "after": "b" * 40,
            "deleted": False,
            "repository": {
                "full_name": BENCH_REPOSITORY,
                "id": BENCH_REPO_ID,
                "default_branch": "main",
            },
        }
    ).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signed(secret, body)}

    async def one(client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        response = await client.post(
            settings.webhook_url,
            content=body,
            headers={**headers, "X-GitHub-Delivery": str(uuid.uuid4())},
        )
        response.raise_for_status()
        return time.perf_counter() - started

    async with httpx.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*(one(client) for _ in range(count))))


async def measure(
    settings: StackSettings, stack: Stack, deliveries: int, sample: bool, first_steps: int
) -> dict[str, Any]:
    results: dict[str, Any] = {"step_seconds": STEP_SECONDS}
    # Outside any stack: the CLI's own start-up, as a user typing `gantry --help` sees it.
    results["cli_help"] = command_seconds([str(GANTRY), "--help"], dict(os.environ), CLI_ROUNDS)
    results["sandbox_cost"] = await asyncio.to_thread(sandbox_cost)
    direct = direct_step_times()
    serial = sum(direct.values())
    longest = max(direct.values())
    results["direct"] = {"per_step": direct, "serial_sum": serial, "longest": longest}

    with tempfile.TemporaryDirectory(prefix="gantry-bench-") as tmp:
        repo, sha = make_repo(Path(tmp) / "repo", salt=uuid.uuid4().hex)
        console.print("PR pipeline on the generated repository (uncached)")
        total, wall, tasks = await run_pr(repo, sha, no_cache=True)
        overhead = {s: tasks[s] - direct[s] for s in STEP_SECONDS if s in tasks}
        results["pr"] = {
            "trigger_to_final": total,
            "flow_wall": wall,
            "tasks": tasks,
            "wall_over_longest": wall / longest,
            "wall_over_serial": wall / serial,
            "overhead_per_step": overhead,
            "overhead_per_step_mean": statistics.mean(overhead.values()) if overhead else None,
            "orchestration_overhead": wall - longest,
        }
        console.print("PR pipeline again on the same commit (cached)")
        total_c, wall_c, tasks_c = await run_pr(repo, sha)
        results["cached"] = {
            "trigger_to_final": total_c,
            "flow_wall": wall_c,
            "tasks": tasks_c,
            "over_uncached": wall_c / wall,
        }
        console.print("`gantry run pr` through the CLI: a new commit, then the same again")
        cli = [str(GANTRY), "run", "pr", "--repo", str(repo), "--json"]
        env = gantry_env(settings)
        cli_sha = new_commit(repo, uuid.uuid4().hex)
        first_cli = command_seconds([*cli, "--sha", cli_sha], env, 1)[0]
        results["cli_rerun"] = {
            "first": first_cli,
            "cached": command_seconds([*cli, "--sha", cli_sha], env, 1)[0],
        }
        if _receiver_up(settings):
            secret = stack.webhook_secret()
            console.print(f"Webhook burst: {deliveries} signed deliveries at once")
            latencies = await webhook_burst(settings, secret, deliveries)
            results["webhook_ack"] = {
                "count": deliveries,
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies),
            }
            console.print(f"Webhook to first step: {first_steps} deliveries after a warm-up")
            # Deliveries name bench/repo, never its path: it is served from the Git host.
            hosted = settings.state_dir / "git" / "bench" / "repo"
            hosted.parent.mkdir(parents=True, exist_ok=True)
            hosted.symlink_to(repo)
            results["webhook_to_first_step"] = await webhook_to_first_step(
                settings, secret, repo, first_steps
            )
        else:
            console.print("[yellow]the webhook receiver is not up: webhook figures skipped")
            results["webhook_ack"] = None
            results["webhook_to_first_step"] = None
    if sample:
        sample_repo, sample_sha = prepare_sample_repo(settings.state_dir)
        console.print("PR pipeline on the sample service (uncached, image build included)")
        total_s, wall_s, tasks_s = await run_pr(sample_repo, sample_sha, no_cache=True)
        results["sample_pr"] = {"trigger_to_final": total_s, "flow_wall": wall_s, "tasks": tasks_s}
    # After the sample's PR run, so the engine usually holds the base image already.
    console.print("Supply chain per pushed image: SBOM, provenance signing, attachments")
    results["supply"] = await asyncio.to_thread(
        measure_supply, stack.engine.docker_host, stack.registry.address
    )
    if _receiver_up(settings):
        results["receiver_load"] = await load_receiver(settings, stack.webhook_secret())
    return results


async def load_receiver(settings: StackSettings, secret: str) -> dict[str, Any]:
    """The receiver under a steady load of pull request openings, dispatcher running.

    Last in the bench: the work pool is paused first, so the dispatcher creates every run in
    Prefect (its full load on this machine) but none of them runs; the stack is purged after.
    """
    console.print(f"Receiver under load: {LOAD_COUNT} signed deliveries at {LOAD_RATE:.0f}/s")
    async with get_client() as client:
        await client.update_work_pool(settings.work_pool, WorkPoolUpdate(is_paused=True))
    figures: dict[str, Any] = await receiver_load(
        settings.webhook_url, secret, count=LOAD_COUNT, rate=LOAD_RATE
    )
    return figures


def _receiver_up(settings: StackSettings) -> bool:
    try:
        url = f"http://{settings.host}:{settings.webhook_port}/healthz"
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def report(results: dict[str, Any]) -> Table:
    table = Table("figure", "measured", "reference (same run)", "ratio", title="Gantry bench")
    d, pr, cached = results["direct"], results["pr"], results["cached"]
    table.add_row(
        "PR pipeline wall (flow run)",
        f"{pr['flow_wall']:.2f} s",
        f"longest step {d['longest']:.2f} s",
        f"{pr['wall_over_longest']:.2f}x",
    )
    table.add_row(
        "PR pipeline wall (flow run)",
        f"{pr['flow_wall']:.2f} s",
        f"serial sum {d['serial_sum']:.2f} s",
        f"{pr['wall_over_serial']:.2f}x",
    )
    table.add_row(
        "trigger → final (incl. worker pickup)", f"{pr['trigger_to_final']:.2f} s", "", ""
    )
    table.add_row(
        "cached re-run wall",
        f"{cached['flow_wall']:.2f} s",
        f"uncached {pr['flow_wall']:.2f} s",
        f"{cached['over_uncached']:.2f}x",
    )
    mean = pr["overhead_per_step_mean"]
    table.add_row("overhead per step (task - command)", f"{mean:.3f} s" if mean else "n/a", "", "")
    box = results.get("sandbox_cost")
    if box:
        table.add_row(
            "sandbox cost per step (/usr/bin/python3 -c pass, median)",
            f"{box['sandbox'] * 1000:.0f} ms (+{(box['sandbox'] - box['bare']) * 1000:.0f} ms)",
            f"bare {box['bare'] * 1000:.0f} ms",
            f"{box['sandbox'] / box['bare']:.2f}x",
        )
    ack = results.get("webhook_ack")
    if ack:
        table.add_row(
            f"webhook ack p50 / p99 ({ack['count']} at once)",
            f"{ack['p50'] * 1000:.0f} / {ack['p99'] * 1000:.0f} ms",
            "",
            "",
        )
    sample = results.get("sample_pr")
    if sample:
        table.add_row("sample service PR pipeline wall", f"{sample['flow_wall']:.2f} s", "", "")
    supply = results.get("supply")
    if supply:
        phases = supply["per_image"]
        table.add_row(
            f"supply chain per image (SBOM + sign + 2 attachments, median of {supply['rounds']})",
            f"{supply['total']:.2f} s",
            f"push of the same image {supply['push']:.2f} s",
            f"{supply['over_push']:.2f}x" if supply["over_push"] else "n/a",
        )
        table.add_row(
            "  of which SBOM / sign / attach SBOM / attach provenance",
            " / ".join(
                f"{phases[p] * 1000:.0f}"
                for p in ("sbom", "sign", "attach_sbom", "attach_provenance")
            )
            + " ms",
            supply["source"],
            "",
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=50)
    parser.add_argument("--no-sample", action="store_true", help="skip the sample service")
    parser.add_argument(
        "--first-steps", type=int, default=5, help="deliveries timed to their first step"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gantry-bench-home-") as home:
        targets = free_port_block(8)  # (staging, production) pairs for the bench's services
        settings = StackSettings(
            home=Path(home),
            prefect_port=free_port(),
            webhook_port=free_port(),
            registry_port=free_port(),
            staging_port=targets,
            production_port=targets + 1,
        )
        stack = Stack(settings)
        os.environ.update(bench_git_host(settings.state_dir))
        console.print(f"Starting a bench stack in {home} (this takes a minute)")
        stack.up(lambda message: console.print(f"  {message}"))
        try:
            updates = {
                PREFECT_API_URL: settings.prefect_api_url,
                PREFECT_API_AUTH_STRING: settings.api_auth_string(),
            }
            with temporary_settings(updates=updates):
                results = asyncio.run(
                    measure(settings, stack, args.deliveries, not args.no_sample, args.first_steps)
                )
        finally:
            stack.down(purge=True)
    console.print(goals_table(results))
    console.print(report(results))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
