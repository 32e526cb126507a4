"""Chat notifications: a Slack webhook block and the Prefect automations that post to it.

Four automations, each a reactive trigger on one kind of event, so one event is one message:

- a merge run ended Failed (``prefect.flow-run.Failed`` of ``merge-pipeline``; a run Prefect
  retries passes through AwaitingRetry, not Failed, so only its last failure is told);
- a production release failed or was rolled back (``gantry.release.failed``, emitted once by
  flows/records/announce.py: the release flow's own Failed state also covers releases that
  deployed nothing, and carries neither the commit nor the outcome);
- a release waits for its approval (``prefect.flow-run.Paused`` of ``release-pipeline``; a
  refused answer makes the gate pause again, which is told again: someone must still answer);
- a run of any of the three pipelines Crashed (``prefect.flow-run.Crashed``; deployments/crashes.py
  retries it once as a new run).

Paging is not here: Datadog's monitors page (infra/terraform/modules/monitoring).

``apply_notifications`` creates or updates the block and the automations by name, so applying
twice leaves one of each; without a webhook URL it removes them (notifications off). The URL is a
secret: it lives only in the block's ``SecretStr`` and is never logged or printed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from core.redact import register_secret
from flows.pipelines.approval import CANDIDATE_TAG, COMMIT_TAG
from flows.records.announce import RELEASE_FAILED_EVENT, RELEASE_RESOURCE_PREFIX

logger = logging.getLogger("gantry.notifications")

ENV_SLACK_WEBHOOK_URL = "GANTRY_SLACK_WEBHOOK_URL"
BLOCK_NAME = "gantry-chat"
# Every automation this module owns starts with this; `apply` removes those it no longer defines.
NAME_PREFIX = "gantry: notify "
PR_FLOW, MERGE_FLOW, RELEASE_FLOW = "pr-pipeline", "merge-pipeline", "release-pipeline"
PIPELINE_FLOWS = (PR_FLOW, MERGE_FLOW, RELEASE_FLOW)
# Prefect's SlackWebhook posts to hooks.slack.com (apprise's Slack plugin is fixed to it).
_SLACK_URL = re.compile(
    r"^https://hooks\.slack\.com/services/[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+/?$"
)

# Jinja, rendered by the Prefect server when the automation fires. ``flow_run`` and ``flow`` are
# the run and flow the triggering event names; ``flow_run|ui_url`` is the run's page in the UI.
_REPOSITORY = (
    "{{ flow_run.parameters.get('repository_name') or flow_run.parameters.get('repository') "
    "or 'unknown repository' }}"
)
_RUN_URL = "{{ flow_run|ui_url }}"

MERGE_FAILED_SUBJECT = "Gantry: merge pipeline failed"
MERGE_FAILED_BODY = (
    f"Merge of {_REPOSITORY} at commit "
    "{{ (flow_run.parameters.get('sha') or 'unknown')[:12] }} failed.\n"
    "Outcome: {{ flow_run.state.message or flow_run.state.name }}\n"
    f"Run: {_RUN_URL}"
)
RELEASE_FAILED_SUBJECT = "Gantry: production release {{ event.resource['gantry.outcome'] }}"
RELEASE_FAILED_BODY = (
    "Release of {{ event.resource['gantry.repository'] }} at commit "
    "{{ event.resource['gantry.commit'][:12] }} to {{ event.resource['gantry.environment'] }}: "
    "{{ event.resource['gantry.outcome']|replace('_', ' ') }}.\n"
    "{{ event.payload.get('detail') or '' }}\n"
    "Datadog pages the on-call (release_failed monitor).\n"
    "Run: {{ event.payload.get('run_url') or 'unknown' }}"
)
APPROVAL_SUBJECT = "Gantry: a release waits for approval"


def _tagged(prefix: str, fallback: str) -> str:
    """The value of the run's tag ``prefix…`` (the gate's tags: flows/pipelines/approval.py)."""
    return (
        f"{{% for tag in flow_run.tags if tag.startswith('{prefix}') %}}"
        f"{{{{ tag[{len(prefix)}:] }}}}{{% else %}}{fallback}{{% endfor %}}"
    )


APPROVAL_BODY = (
    f"Release of {_REPOSITORY} at commit {_tagged(COMMIT_TAG, 'unknown')} waits for a signed "
    f"approval (candidate {_tagged(CANDIDATE_TAG, 'unknown')}).\n"
    "Outcome so far: {{ flow_run.state.message or 'paused' }}\n"
    f"Approve or reject: {_RUN_URL}"
)
CRASHED_SUBJECT = "Gantry: {{ flow.name }} run crashed"
CRASHED_BODY = (
    "{{ flow.name }} run {{ flow_run.name }} of " + _REPOSITORY + " at commit "
    "{{ (flow_run.parameters.get('sha') or 'unknown')[:12] }} crashed "
    "(its infrastructure failed; Gantry retries it once).\n"
    "Outcome: {{ flow_run.state.message or 'Crashed' }}\n"
    f"Run: {_RUN_URL}"
)


@dataclass
class NotificationsReport:
    """What an apply did: ``enabled`` False means notifications are off."""

    enabled: bool
    block: str | None = None
    automations: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.enabled:
            return f"chat notifications are off ({ENV_SLACK_WEBHOOK_URL} is not set)"
        return f"chat notifications on: {len(self.automations)} automations post to Slack"


def _reactive_trigger(
    event: str,
    resource_id: str,
    related: ResourceSpecification | None = None,
) -> EventTrigger:
    """Each ``event`` of a resource matching ``resource_id`` (and ``related``): one firing each."""
    return EventTrigger(
        expect={event},
        match=ResourceSpecification({"prefect.resource.id": resource_id}),
        match_related=related or ResourceSpecification({}),
        posture=Posture.Reactive,
        threshold=1,
        within=0,
    )


def _flow_run_trigger(state: str, flows: tuple[str, ...]) -> EventTrigger:
    """Each ``prefect.flow-run.<state>`` event of a run of one of ``flows``."""
    return _reactive_trigger(
        f"prefect.flow-run.{state}",
        "prefect.flow-run.*",
        ResourceSpecification(
            {"prefect.resource.role": "flow", "prefect.resource.name": list(flows)}
        ),
    )


def notification_automations(block_document_id: UUID) -> list[Automation]:
    """The automations, each sending through the block ``block_document_id``."""

    def send(subject: str, body: str) -> list[SendNotification]:
        return [SendNotification(block_document_id=block_document_id, subject=subject, body=body)]

    return [
        Automation(
            name=f"{NAME_PREFIX}merge run failed",
            description="Chat: a merge pipeline run ended Failed",
            trigger=_flow_run_trigger("Failed", (MERGE_FLOW,)),
            actions=send(MERGE_FAILED_SUBJECT, MERGE_FAILED_BODY),
        ),
        Automation(
            name=f"{NAME_PREFIX}release failed",
            description="Chat: a production release failed or was rolled back",
            trigger=_reactive_trigger(RELEASE_FAILED_EVENT, f"{RELEASE_RESOURCE_PREFIX}*"),
            actions=send(RELEASE_FAILED_SUBJECT, RELEASE_FAILED_BODY),
        ),
        Automation(
            name=f"{NAME_PREFIX}release waits for approval",
            description="Chat: a release run paused at its approval gate",
            trigger=_flow_run_trigger("Paused", (RELEASE_FLOW,)),
            actions=send(APPROVAL_SUBJECT, APPROVAL_BODY),
        ),
        Automation(
            name=f"{NAME_PREFIX}pipeline run crashed",
            description="Chat: a pull-request, merge or release run Crashed",
            trigger=_flow_run_trigger("Crashed", PIPELINE_FLOWS),
            actions=send(CRASHED_SUBJECT, CRASHED_BODY),
        ),
    ]


def webhook_url_from_env(env: Mapping[str, str] | None = None) -> SecretStr | None:
    """``GANTRY_SLACK_WEBHOOK_URL`` as a secret; None when unset. A URL that is not a Slack
    incoming webhook is refused without being quoted."""
    env = os.environ if env is None else env
    value = env.get(ENV_SLACK_WEBHOOK_URL, "").strip()
    if not value:
        return None
    register_secret(value)
    if not _SLACK_URL.match(value):
        raise ValueError(
            f"{ENV_SLACK_WEBHOOK_URL} must be a Slack incoming webhook URL "
            "(https://hooks.slack.com/services/...)"
        )
    return SecretStr(value)


async def _apply_automation(wanted: Automation) -> None:
    """Create ``wanted`` or update the automation of its name; duplicates of it are deleted."""
    async with get_client() as client:
        existing = await client.read_automations_by_name(wanted.name)
        for extra in existing[1:]:
            await client.delete_automation(extra.id)
    if not existing:
        await wanted.acreate()
        return
    wanted.id = existing[0].id
    await wanted.aupdate()


async def _remove_stale(keep: set[str]) -> list[str]:
    """Delete this module's automations that are not in ``keep``; their names."""
    removed: list[str] = []
    async with get_client() as client:
        for automation in await client.read_automations():
            if automation.name.startswith(NAME_PREFIX) and automation.name not in keep:
                await client.delete_automation(automation.id)
                removed.append(automation.name)
    return removed


async def _delete_block(name: str) -> bool:
    """Delete the Slack block ``name``; False when there is none."""
    async with get_client() as client:
        try:
            document = await client.read_block_document_by_name(
                name, block_type_slug=SlackWebhook.get_block_type_slug()
            )
        except ObjectNotFound:
            return False
        await client.delete_block_document(document.id)
    return True


async def apply_notifications(
    webhook_url: SecretStr | None, block_name: str = BLOCK_NAME
) -> NotificationsReport:
    """Create or update the block and automations; with no URL, remove them (off)."""
    if webhook_url is None:
        removed = await _remove_stale(keep=set())
        if await _delete_block(block_name):
            removed.append(block_name)
        return NotificationsReport(enabled=False, removed=sorted(removed))
    register_secret(webhook_url)
    block_id = await SlackWebhook(url=webhook_url).asave(block_name, overwrite=True)
    wanted = notification_automations(block_id)
    for automation in wanted:
        await _apply_automation(automation)
    names = [a.name for a in wanted]
    removed = await _remove_stale(keep=set(names))
    logger.info("applied %d chat notification automations", len(names))
    return NotificationsReport(enabled=True, block=block_name, automations=names, removed=removed)


async def apply_notifications_from_env(env: Mapping[str, str] | None = None) -> NotificationsReport:
    """``apply_notifications`` with ``GANTRY_SLACK_WEBHOOK_URL``: what `gantry up` and
    `gantry notifications apply` run."""
    return await apply_notifications(webhook_url_from_env(env))
