"""Ask GitHub to redeliver webhooks the receiver never recorded.

GitHub does not redeliver failed deliveries by itself. The receiver records each delivery by its
``X-GitHub-Delivery`` GUID, which a redelivery keeps; so a GUID that GitHub attempted but the
store does not hold was lost (receiver down, 5xx, timeout) and is asked for once more.

Deliveries come from a repository's hook or, for an install fed by a GitHub App, from the App's
hook (read and redelivered as the App); both take the same path here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from clients.github import GitHubClient, HookSource
from clients.github_errors import GitHubAuthError, GitHubError
from clients.github_models import HookDelivery

logger = logging.getLogger("gantry.webhooks.reconcile")


def unrecorded(
    deliveries: list[HookDelivery], is_recorded: Callable[[str], bool]
) -> list[HookDelivery]:
    """The newest attempt of each GUID the store does not hold, oldest GUID first.

    Attempts of a GUID (the original and its redeliveries) count once: asking again for every
    failed attempt would multiply deliveries of the same event.
    """
    newest: dict[str, HookDelivery] = {}
    for delivery in deliveries:
        current = newest.get(delivery.guid)
        if current is None or (delivery.delivered_at, delivery.id) > (
            current.delivered_at,
            current.id,
        ):
            newest[delivery.guid] = delivery
    missing = [d for guid, d in newest.items() if not is_recorded(guid)]
    return sorted(missing, key=lambda d: (d.delivered_at, d.id))


async def reconcile(
    client: GitHubClient,
    hook: HookSource,
    is_recorded: Callable[[str], bool],
    since: datetime,
) -> list[str]:
    """Redeliver every delivery of ``hook`` since ``since`` whose GUID is not recorded; return
    those GUIDs.

    A failed redelivery request is logged and the rest still go out; bad credentials stop
    everything (every other request would fail the same way).
    """
    deliveries = await client.list_hook_deliveries(hook, since=since)
    redelivered: list[str] = []
    for delivery in unrecorded(deliveries, is_recorded):
        try:
            await client.redeliver(hook, delivery.id)
        except GitHubAuthError:
            raise
        except GitHubError as exc:
            logger.warning(
                "could not redeliver %s (%s, delivery %d): %s",
                delivery.guid,
                delivery.event,
                delivery.id,
                exc,
            )
            continue
        logger.info("asked GitHub to redeliver %s (%s)", delivery.guid, delivery.event)
        redelivered.append(delivery.guid)
    return redelivered
