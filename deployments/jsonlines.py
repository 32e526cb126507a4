"""Every background service of the stack logging as Gantry does: one JSON object per line.

``python -m deployments.jsonlines --logger podman -- podman system service ...`` runs the command,
reads its output and logs every line as one JSON object (``JsonFormatter``, redacted), at the
level the line names: Podman and the registry log through logrus (``level=warning msg="..."``).
A line that is a JSON object already (Prefect with ``logging.yml``) passes through; anything else
(a banner printed to stdout) is kept whole as the message, at INFO.

The wrapper and the command share a process group, which ``ManagedProcess.stop`` signals: the
wrapper then waits for the command's last lines and exits with its code.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Sequence

from core.logconfig import configure_json_logging
from core.redact import redact

_LEVEL = re.compile(r'(?:^|\s)level=("?)(?P<level>[a-zA-Z]+)\1')
_MSG = re.compile(r'(?:^|\s)msg=(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>\S+))')
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


def json_relay(logger: str, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so its output reaches the log as JSON lines under ``logger``."""
    return [sys.executable, "-m", "deployments.jsonlines", "--logger", logger, "--", *argv]


def parse_line(line: str) -> tuple[int, str]:
    """(level, message) of one output line; a logrus line gives both, others are INFO."""
    level_match = _LEVEL.search(line)
    msg_match = _MSG.search(line)
    if level_match is None or msg_match is None:
        return logging.INFO, line
    level = _LEVELS.get(level_match["level"].lower(), logging.INFO)
    if msg_match["quoted"] is not None:
        message = msg_match["quoted"].replace('\\"', '"').replace("\\\\", "\\")
    else:
        message = msg_match["bare"]
    return level, message


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def relay(logger_name: str, argv: Sequence[str]) -> int:
    """Run ``argv``, log its output line by line, return its exit code."""
    logger = logging.getLogger(logger_name)
    # The group's SIGTERM reaches the command too; the wrapper stays to log its last words.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as exc:
        logger.error("cannot start %s: %s", argv[0], exc)
        return 127
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        if _is_json_object(line):
            # Already a JSON line (Prefect's logging.yml, the receiver): redacted, passed on.
            sys.stderr.write(redact(line) + "\n")
            sys.stderr.flush()
            continue
        level, message = parse_line(line)
        logger.log(level, "%s", message)
    code = proc.wait()
    if code != 0:
        logger.warning("%s exited with code %d", argv[0], code)
    return code


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--logger", required=True, help="logger name on every line")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    options = parser.parse_args(args)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("no command given after --")
    configure_json_logging()
    return relay(options.logger, command)


if __name__ == "__main__":
    sys.exit(main())
