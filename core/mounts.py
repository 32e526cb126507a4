"""Mounts below a folder: undone before the folder is deleted, so nothing is deleted through one."""

from __future__ import annotations

import subprocess
from pathlib import Path


def unmount_under(root: Path) -> None:
    """Unmount whatever is mounted below ``root``, deepest first (never delete through a mount)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = f"{root.resolve()}/"
    targets = [fields[1] for fields in (line.split() for line in mounts) if len(fields) > 1]
    for target in sorted({t for t in targets if t.startswith(prefix)}, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False, timeout=30)
