"""Gantry's warm worker: flow runs start in interpreters that have already imported Prefect
and the pipelines.

``interpreters`` keeps the pool of warm child processes (``child`` is their entry point),
``environment`` decides whether a run's environment lets it use one, ``worker`` is the
``gantry-warm`` worker type and ``events`` wakes it on Prefect's event stream.
"""
