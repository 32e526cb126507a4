"""Sandboxes for repository code: every command a `gantry.toml` declares runs in one.

Runners: ``local`` (bubblewrap, ``local.py``) and ``kubernetes`` (``kubernetes.py``); the steps
call ``select.run_step``, which picks the runner the worker is configured for.
"""
