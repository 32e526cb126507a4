"""Sandboxes for repository code: every command a `gantry.toml` declares runs in one."""
