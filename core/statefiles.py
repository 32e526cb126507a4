"""Secret files of the state folder: created 0600 in a 0700 folder, and checked at each start.

Every secret Gantry generates for the local stack (the webhook secret, the Prefect API
credential, signing keys) is one file in the state folder or one of its direct subfolders,
written once by ``secret_file`` and recognised later by its name: ``webhook-secret``,
``prefect-auth``, or any name ending in ``-secret``, ``-auth``, ``-key``, ``.key``, ``.pem`` or
an SSH private key's ``_ed25519``, ``_ecdsa``, ``_rsa``. ``secure_state_folder``
(run by ``gantry up``) tightens what Gantry created and refuses what it cannot tighten.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.ports import StackError

STATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600
# How a secret file is known in the state folder; a new kind of secret file takes one of these.
SECRET_SUFFIXES = ("-secret", "-auth", "-key", ".key", ".pem", "_ed25519", "_ecdsa", "_rsa")


class SecretFileError(StackError):
    """A secret file of the state folder is open to others and Gantry cannot close it."""


def is_secret_file_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(SECRET_SUFFIXES)


def ensure_state_dir(path: Path) -> Path:
    """``path`` (and its missing parents) created, itself 0700 when created now."""
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    return path


def secret_file(path: Path, generate: Callable[[], str]) -> str:
    """The secret kept in ``path``; generated once with ``generate`` and written 0600.

    The file appears whole or not at all (written aside, then linked into place), so a second
    process starting at the same moment reads the winner's secret, never an empty file.
    """
    existing = _read(path)
    if existing:
        return existing
    ensure_state_dir(path.parent)
    value = generate().strip()
    if not value:
        raise ValueError(f"the generator for {path.name} returned an empty secret")
    # mkstemp creates the file 0600 whatever the umask: the secret is never readable by others.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temporary = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
        if existing == "":  # present but empty (an interrupted older writer): replace it
            temporary.replace(path)
            return value
        try:
            os.link(temporary, path)
        except FileExistsError:
            winner = _read(path)
            if winner:
                return winner
            temporary.replace(path)
        return value
    finally:
        temporary.unlink(missing_ok=True)


def _read(path: Path) -> str | None:
    """The file's text stripped, "" when empty, None when absent."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def secure_state_folder(state_dir: Path) -> list[str]:
    """Tighten the state folder to 0700 and its secret files to 0600; one warning per fix.

    Only what this user owns is changed (Gantry created it); a secret file that others can
    read and that cannot be fixed raises ``SecretFileError``, naming the file and the remedy.
    """
    warnings: list[str] = []
    info = state_dir.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        fixed = _tighten(state_dir, info, STATE_DIR_MODE)
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        if fixed:
            warnings.append(f"state folder {state_dir} was {mode}; changed to 0700")
        else:
            warnings.append(
                f"state folder {state_dir} is {mode} and not yours to change: others may list "
                "it; move GANTRY_HOME to a folder only you can open"
            )
    for path in _candidates(state_dir):
        warning = _secure_secret_file(path)
        if warning:
            warnings.append(warning)
    return warnings


def _candidates(state_dir: Path) -> list[Path]:
    """Secret-named entries of the folder and of its direct subfolders (not followed links):
    deeper lie the engine's and the registry's storage, large and holding no secret of ours."""
    found = []
    for path in sorted(state_dir.iterdir()):
        if is_secret_file_name(path.name):
            found.append(path)
        elif path.is_dir() and not path.is_symlink():
            try:
                inside = sorted(path.iterdir())
            except PermissionError:  # e.g. storage a rootless engine owns under another uid
                continue
            found += [p for p in inside if is_secret_file_name(p.name)]
    return found


def _secure_secret_file(path: Path) -> str | None:
    if path.is_symlink():
        # A link could point Gantry's chmod (and its secret) at any file on the machine.
        raise SecretFileError(
            f"{path} is a symbolic link; Gantry keeps a secret only in a regular file: "
            "replace the link with the file itself"
        )
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"{path} should hold a secret but is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return None
    if _tighten(path, info, SECRET_FILE_MODE):
        return f"secret file {path} was {mode:04o}; changed to 0600"
    raise SecretFileError(
        f"secret file {path} is {mode:04o}: other users can read it, and it belongs to uid "
        f"{info.st_uid}, so Gantry cannot make it private. Make it 0600 and owned by you "
        "(chmod 600, chown), or delete it to have a new secret generated"
    )


def _tighten(path: Path, info: os.stat_result, mode: int) -> bool:
    """chmod ``path`` to ``mode`` if this user owns it; True when the change held."""
    if info.st_uid != os.geteuid():
        return False
    try:
        path.chmod(mode)
    except OSError:
        return False
    # Some filesystems accept chmod and ignore it.
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
