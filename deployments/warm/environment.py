"""Whether a flow run's environment lets it run in an interpreter warmed with another one.

Prefect reads its settings (``PREFECT_*``) once, when it is imported, and the interpreter reads
``PYTHON*`` and the dynamic loader ``LD_*`` when it starts: a warm interpreter has done both
already, so a run that needs other values there must start cold. Every other variable is read
when it is used, so the warm interpreter simply takes the run's values before the run starts.
``PREFECT__*`` (two underscores) are Prefect's per-run variables (the flow run's id, the
worker's name), read at run time.
"""

from __future__ import annotations

from collections.abc import Mapping

# Read when the interpreter starts or Prefect is imported.
IMPORT_TIME_PREFIXES = ("PREFECT_", "PYTHON", "LD_")
RUN_TIME_PREFIX = "PREFECT__"


def read_at_import(key: str) -> bool:
    return key.startswith(IMPORT_TIME_PREFIXES) and not key.startswith(RUN_TIME_PREFIX)


def import_time_differences(warm: Mapping[str, str], job: Mapping[str, str]) -> list[str]:
    """Names (never values: they may be secrets) of import-time variables that differ."""
    keys = {key for key in (*warm, *job) if read_at_import(key)}
    return sorted(key for key in keys if warm.get(key) != job.get(key))


def job_environment(env: Mapping[str, str | None]) -> dict[str, str]:
    """A job configuration's environment without its unset (None) entries."""
    return {key: value for key, value in env.items() if value is not None}
