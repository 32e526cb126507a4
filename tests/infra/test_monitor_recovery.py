"""A monitor's recovery resolves the PagerDuty incident its alert opened.

Datadog opens an incident when an alert's notification reaches an ``@pagerduty-<service>``
handle, and resolves that incident when the monitor's recovery notification reaches the same
handle. A handle written inside ``{{#is_alert}}`` only pages and never resolves: the incident
stays open until PagerDuty's own timeout. So what must hold is in the text Datadog renders for
each transition: every PagerDuty handle the alert notifies, the recovery notifies too.

The messages are rendered as Terraform makes them, for real: the monitoring module's locals,
its variables and each monitor's message, copied into a module with no provider (the Datadog and
PagerDuty providers are not installed offline), applied with production's values, read back as
outputs; then Datadog's conditional sections are applied for the alert and the recovery.
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import pytest

from .tools import MODULES_DIR, find_terraform, terraform_env

TERRAFORM, NO_TERRAFORM = find_terraform()
pytestmark = pytest.mark.skipif(TERRAFORM is None, reason=NO_TERRAFORM)

MODULE = MODULES_DIR / "monitoring"
# What envs/production passes (page_on_call = true there); the rest are test values.
PRODUCTION = {
    "environment": "production",
    "page_on_call": "true",
    "database_identifiers": '["gantry-production"]',
    "runbook_base_url": "https://git.example.invalid/gantry/docs/runbooks",
    "notify_handles": '["@slack-platform-alerts"]',
    "escalation_schedule_ids": '["PSCHED01"]',
}
# Datadog's conditional variables for a monitor's two transitions that matter here.
ALERT = {"is_alert": True, "is_warning": False, "is_no_data": False, "is_recovery": False}
RECOVERY = {
    "is_alert": False,
    "is_warning": False,
    "is_no_data": False,
    "is_recovery": True,
    "is_alert_recovery": True,
    "is_warning_recovery": False,
}
_SECTION = re.compile(r"\{\{([#^])(\w+)\}\}(.*?)\{\{/\2\}\}", re.DOTALL)
_HANDLE = re.compile(r"(?<!\S)@[\w.+-]+")


def _blocks(text: str, opening: str) -> list[str]:
    """Each top-level block of ``text`` whose first line starts with ``opening``."""
    return re.findall(rf"^{re.escape(opening)}.*?^\}}", text, re.MULTILINE | re.DOTALL)


def _messages(monitors_tf: str) -> dict[str, str]:
    """Each datadog_monitor's ``message`` heredoc, as written (Terraform interpolations in)."""
    found: dict[str, str] = {}
    for block in _blocks(monitors_tf, 'resource "datadog_monitor" '):
        name = re.match(r'resource "datadog_monitor" "(\w+)"', block)
        body = re.search(r"message\s*=\s*<<-EOT\n(.*?)\n\s*EOT", block, re.DOTALL)
        assert name is not None and body is not None, block[:80]
        found[name.group(1)] = body.group(1)
    return found


def render(message: str, variables: dict[str, bool]) -> str:
    """Datadog's ``{{#var}}...{{/var}}`` (shown when true) and ``{{^var}}`` (when false)."""
    while True:
        rendered = _SECTION.sub(
            lambda m: m.group(3) if variables.get(m.group(2), False) == (m.group(1) == "#") else "",
            message,
        )
        if rendered == message:
            return rendered
        message = rendered


def handles(text: str) -> set[str]:
    return set(_HANDLE.findall(text))


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every monitor's message and the PagerDuty service names, as production's Terraform
    makes them."""
    assert TERRAFORM is not None
    work = tmp_path_factory.mktemp("monitoring-messages")
    monitors_tf = (MODULE / "monitors.tf").read_text()
    shutil.copy(MODULE / "variables.tf", work / "variables.tf")
    locals_tf = _blocks(monitors_tf, "locals {")
    locals_tf += _blocks((MODULE / "pagerduty.tf").read_text(), "locals {")
    assert len(locals_tf) == 2
    messages = _messages(monitors_tf)
    copied = "\n\n".join(locals_tf)
    copied += "\n\nlocals {\n" + "".join(
        f"  message_{name} = <<-EOT\n{text}\n  EOT\n" for name, text in messages.items()
    )
    copied += "}\n"
    outputs = ", ".join(f"{name} = local.message_{name}" for name in messages)
    copied += f'\noutput "messages" {{\n  value = {{ {outputs} }}\n}}\n'
    copied += (
        'output "pagerduty_services" {\n'
        "  value = [for service in values(local.pagerduty_services) : service.name]\n}\n"
    )
    (work / "main.tf").write_text(copied)
    env = terraform_env(work)
    variables = [arg for name, value in PRODUCTION.items() for arg in ("-var", f"{name}={value}")]
    for args in (("init", "-input=false"), ("apply", "-auto-approve", "-input=false", *variables)):
        result = TERRAFORM.run(work, *args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    shown = TERRAFORM.run(work, "output", "-json", env=env)
    assert shown.returncode == 0, shown.stderr
    return {name: output["value"] for name, output in json.loads(shown.stdout).items()}


def test_the_release_failed_recovery_notifies_the_p1_service_its_alert_paged(
    production: dict[str, Any],
) -> None:
    messages = production["messages"]
    assert isinstance(messages, dict)
    message = str(messages["release_failed"])
    alert, recovery = render(message, ALERT), render(message, RECOVERY)
    # The renderer picked the transitions' own sentences.
    assert "failed or was rolled back" in alert and "No failed release" not in alert
    assert "No failed release" in recovery and "failed or was rolled back" not in recovery
    p1 = "@pagerduty-gantry-production-p1"
    assert p1 in handles(alert), alert
    # The same handle at recovery: Datadog resolves the incident it opened on that service.
    assert p1 in handles(recovery), recovery
    # ...a service the module gives Datadog an integration key for.
    assert p1.removeprefix("@pagerduty-") in production["pagerduty_services"]


def test_every_paging_monitor_recovery_reaches_every_service_its_alert_paged(
    production: dict[str, Any],
) -> None:
    messages = production["messages"]
    assert isinstance(messages, dict)
    paging = 0
    for name, message in messages.items():
        paged = {h for h in handles(render(str(message), ALERT)) if h.startswith("@pagerduty-")}
        paging += bool(paged)
        assert paged <= handles(render(str(message), RECOVERY)), name
    # P1 and P2 monitors page in production: api_error_rate, llm_latency, webhook_backlog,
    # release_failed, worker_not_polling.
    assert paging == 5
