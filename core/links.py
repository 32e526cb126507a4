"""Links to the Prefect UI, built by Prefect's own ``url_for`` so its routes are never copied.

Where the UI is: an address given by the caller (the GitHub block's ``ui_url``, which people reach
from GitHub, or the local stack's), else ``PREFECT_UI_URL``, which Prefect derives from
``PREFECT_API_URL`` when unset (the local stack sets that for every process it starts). With
neither there is no correct link, and the answer is None rather than a relative path.
"""

from __future__ import annotations

from uuid import UUID

from prefect.settings import PREFECT_UI_URL, temporary_settings
from prefect.utilities.urls import url_for


def flow_run_url(flow_run_id: str | UUID | None, ui_url: str | None = None) -> str | None:
    """The UI page of a flow run, or None when the run or the UI's address is unknown."""
    if not flow_run_id:
        return None
    if not ui_url:
        return url_for("flow-run", obj_id=flow_run_id)
    # url_for prefers PREFECT_UI_URL over a default base: an explicit address must win (a UI
    # behind a public proxy while the worker reaches the API internally), so it becomes the
    # setting for this one call. The override lives in a context variable, not the environment.
    with temporary_settings(updates={PREFECT_UI_URL: ui_url}):
        return url_for("flow-run", obj_id=flow_run_id)
