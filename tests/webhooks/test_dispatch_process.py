"""With ``GANTRY_WEBHOOK_DISPATCHER=process`` the dispatcher never holds the receiver's GIL:
the receiver's interpreter only records, and every dispatch pass happens in the real
``webhooks.dispatch_process``, another process (another interpreter, so another GIL).

Each process sends its metrics to a DogStatsD stand-in of its own, and every dispatcher pass
sends ``gantry.webhook.backlog`` first thing (an empty store included): passes are counted per
process. No Prefect server: its address is a closed loopback port, so the stored delivery
stays pending and the dispatcher process passes over it again and again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from core.ports import free_port
from tests.fakes.dogstatsd import DogStatsdAgent
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, receiver_settings
from tests.webhooks.statsd import at_least, metrics_to_agent, named

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]
BACKLOG = "gantry.webhook.backlog"
DELIVERIES = "gantry.webhook.deliveries"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def nice_of(pid: int) -> int:
    # Field 19 of /proc/PID/stat, counted after the command name's closing parenthesis.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


async def test_the_receivers_interpreter_runs_no_dispatch_the_dispatcher_process_does(
    tmp_path: Path,
) -> None:
    down = f"http://127.0.0.1:{free_port()}/api"
    settings = receiver_settings(tmp_path).model_copy(update={"webhook_dispatcher": "process"})
    env = {
        **os.environ,
        "GANTRY_HOME": str(tmp_path),
        "PREFECT_API_URL": down,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "GANTRY_WEBHOOK_BACKOFF_INITIAL": "0.05",
        "GANTRY_WEBHOOK_BACKOFF_CAP": "0.1",
    }
    env.pop("GANTRY_WEBHOOK_STORE", None)
    with (
        metrics_to_agent() as receiver_metrics,
        DogStatsdAgent() as dispatcher_metrics,
        ServedReceiver(settings, client_factory=lambda: PrefectClient(down)) as served,
    ):
        async with httpx.AsyncClient(base_url=served.url, timeout=15) as http:
            body, headers = payloads.signed("push", payloads.push(), payloads.new_delivery_id())
            response = await http.post("/webhooks/github", content=body, headers=headers)
        assert response.status_code == 202
        env |= {"DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": str(dispatcher_metrics.port)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "webhooks.dispatch_process",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            # The dispatcher process has passed over the stored delivery three times...
            passes = await at_least(dispatcher_metrics, BACKLOG, 3, seconds=60)
            assert {d.value for d in passes} == {"1"}
            assert process.pid != os.getpid() and nice_of(process.pid) == 10
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
        # ...while the receiver, which had answered the delivery in this interpreter, ran no
        # pass of its own (one would have sent its backlog at the receiver's start) and has
        # no dispatcher thread to hand its GIL to.
        assert [d.tag("outcome") for d in named(receiver_metrics, DELIVERIES)] == ["accepted"]
        assert named(receiver_metrics, BACKLOG) == []
        assert "webhook-dispatcher" not in {t.name for t in threading.enumerate()}
    assert process.returncode == 0
