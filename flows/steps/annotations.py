"""Check-run annotations from a check's machine-readable report (``[checks.X] report``).

The report is written by repository code in its sandbox, so everything here treats it as
hostile: it is read only as a regular file inside the checkout reached without following any
symlink, at most ``MAX_REPORT_BYTES``; XML goes through ``defusedxml`` (no DTD, no entities);
every path it names is kept only if it lands on a file of the checkout; annotations and their
texts are capped at GitHub's limits. A missing or broken report is a ``ReportError``, which the
check step logs as a warning: it never changes the stage's outcome.

Formats:

- ``ruff``: ``ruff check --output-format json --output-file F``.
- ``junit``: pytest's ``--junitxml F``; one annotation per failed or erroring test case.
- ``mypy``: ``mypy --junit-xml F`` (either ``--junit-format``); one annotation per error line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import xml.etree.ElementTree as ET  # element types and ParseError; defusedxml parses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml.ElementTree import fromstring  # type: ignore[import-untyped]
from pydantic import ValidationError

from clients.github_models import CheckAnnotation
from flows.config import Report

MAX_REPORT_BYTES = 5 * 1024 * 1024
# GitHub takes 50 annotations per request; a check run can carry many more, but past a
# thousand nobody reads them and the stage result (persisted by Prefect) would only grow.
MAX_ANNOTATIONS = 1000
# The Checks API's limits: title 255 characters, message and raw_details 64 KB.
MAX_TITLE = 255
MAX_TEXT = 65_535
# Where both sandbox runners mount the checkout (local.CHECKOUT, kubernetes.WORKSPACE): the
# tools print paths as seen in there.
SANDBOX_CHECKOUT = PurePosixPath("/workspace")

# The locations in a pytest failure text: `path:line:` starting a line (pytest's traceback
# entries), `path:line` ending one (its "file ..., line N" setup errors end so), or Python's own
# `File "path", line N` (an error raised while importing a module, a SyntaxError).
_TRACEBACK_LOCATION = re.compile(
    r"^(?P<path>[^\s:][^:\n]*?):(?P<line>\d+)(?::|$)"
    r'|File "(?P<py_path>[^"\n]+)", line (?P<py_line>\d+)',
    re.MULTILINE,
)
# One line of mypy's output: `path:line[:col[:end_line:end_col]]: error|note: message  [code]`.
_MYPY_LINE = re.compile(
    r"^(?P<path>[^:\n]+?):(?P<line>\d+)(?::(?P<col>\d+))?(?::(?P<end_line>\d+):(?P<end_col>\d+))?"
    r": (?P<severity>error|note|warning): (?P<message>.*?)(?:  \[(?P<code>[a-z0-9_-]+)\])?$"
)


class ReportError(Exception):
    """The report could not be used; the message says why (shown as a warning, never fatal)."""


def _parts(relative: str) -> list[str]:
    # config.Report validated it (relative, no '..'); '.' parts are dropped, not walked.
    return [part for part in PurePosixPath(relative).parts if part != "."]


def _open_parent(workspace: Path, parts: list[str]) -> int:
    """A descriptor of the report's folder, reached from the checkout without any symlink."""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            following = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = following
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_report(workspace: Path, relative: str) -> bool:
    """Delete whatever is at the report's path, so only what this run writes is read.

    A symlink is removed itself, never followed; a folder in the way is left (reading it later
    fails). True when something was removed.
    """
    parts = _parts(relative)
    try:
        parent = _open_parent(workspace, parts[:-1])
    except OSError:
        # No such folder (nothing stale there) or a symlink on the way (reading refuses it).
        return False
    try:
        os.unlink(parts[-1], dir_fd=parent)
    except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError):
        return False
    finally:
        os.close(parent)
    return True


def read_report(workspace: Path, relative: str) -> bytes:
    """The report's bytes: a regular file in the checkout, no symlink on the way, bounded."""
    parts = _parts(relative)
    try:
        parent = _open_parent(workspace, parts[:-1])
    except FileNotFoundError:
        raise ReportError("not found (the step did not write it)") from None
    except OSError as exc:
        raise ReportError(_refusal(exc, "a folder on its path")) from None
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the worker on open().
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, dir_fd=parent)
    except FileNotFoundError:
        raise ReportError("not found (the step did not write it)") from None
    except OSError as exc:
        raise ReportError(_refusal(exc, "it")) from None
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ReportError("refused: not a regular file")
        data = handle.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"refused: larger than {MAX_REPORT_BYTES // (1024 * 1024)} MiB")
    return data


def _refusal(exc: OSError, what: str) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"refused: {what} is a symlink or not a folder/file"
    return f"unreadable: {exc.strerror or exc}"


class CheckoutPaths:
    """Maps a path a tool printed to a path relative to the repository root, or None.

    Relative paths are relative to the checkout (every step runs there); absolute ones are kept
    only under the checkout as mounted in the sandbox or as the host's workspace. Anything
    escaping, absolute elsewhere, or not a regular file of the checkout is dropped.
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.real = Path(os.path.realpath(workspace))
        self.roots = [SANDBOX_CHECKOUT, PurePosixPath(workspace), PurePosixPath(self.real)]
        self._seen: dict[str, str | None] = {}

    def relative(self, raw: str) -> str | None:
        if raw not in self._seen:
            self._seen[raw] = self._relative(raw)
        return self._seen[raw]

    def _relative(self, raw: str) -> str | None:
        if not raw or "\0" in raw or len(raw) > 1024:
            return None
        path = PurePosixPath(raw)
        if path.is_absolute():
            for root in self.roots:
                if path.is_relative_to(root):
                    path = path.relative_to(root)
                    break
            else:
                return None
        parts = [part for part in path.parts if part != "."]
        if not parts or ".." in parts or parts[0] == ".git":
            return None
        relative = "/".join(parts)
        # The file must be there, and stay in the checkout once symlinks are followed.
        resolved = Path(os.path.realpath(self.real / relative))
        if not resolved.is_relative_to(self.real) or not resolved.is_file():
            return None
        return relative


def _cap(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (GitHub counts bytes; the model counts characters)."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return text
    marker = "\n… (truncated)"
    head = encoded[: limit - len(marker.encode())].decode("utf-8", errors="ignore")
    return head + marker


def _annotation(
    path: str,
    line: int,
    message: str,
    *,
    end_line: int | None = None,
    title: str | None = None,
    raw_details: str | None = None,
    start_column: int | None = None,
    end_column: int | None = None,
) -> CheckAnnotation | None:
    message = message.strip() or "failed"
    end = end_line if end_line is not None and end_line >= line else line
    if start_column is not None and end_column is not None and end_column < start_column:
        end_column = start_column
    try:
        return CheckAnnotation(
            path=path,
            start_line=line,
            end_line=end,
            annotation_level="failure",
            message=_cap(message, MAX_TEXT),
            title=title[:MAX_TITLE] if title else None,
            raw_details=_cap(raw_details, MAX_TEXT) if raw_details else None,
            start_column=start_column,
            end_column=end_column if start_column is not None else None,
        )
    except ValidationError:
        # A line 0 or a negative column from a broken report: that one entry is dropped.
        return None


def _positive(value: Any) -> int | None:
    # bool is an int in Python; a report saying `"row": true` is broken, not line 1.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def parse_ruff(data: bytes, paths: CheckoutPaths) -> Iterator[CheckAnnotation]:
    try:
        items = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ReportError(f"not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ReportError("not ruff's JSON: expected a list of diagnostics")
    for item in items:
        if not isinstance(item, dict):
            continue
        start = item.get("location")
        end = item.get("end_location")
        filename = item.get("filename")
        if not isinstance(start, dict) or not isinstance(filename, str):
            continue
        line = _positive(start.get("row"))
        path = paths.relative(filename)
        if line is None or path is None:
            continue
        end = end if isinstance(end, dict) else {}
        code = item.get("code")
        url = item.get("url")
        end_column = _positive(end.get("column"))
        annotation = _annotation(
            path,
            line,
            str(item.get("message") or "ruff finding"),
            end_line=_positive(end.get("row")),
            title=code if isinstance(code, str) else None,
            raw_details=url if isinstance(url, str) else None,
            start_column=_positive(start.get("column")),
            # ruff's end column is one past the last character; GitHub's is the last one.
            end_column=end_column - 1 if end_column and end_column > 1 else None,
        )
        if annotation is not None:
            yield annotation


def _xml(data: bytes) -> ET.Element:
    try:
        root: ET.Element = fromstring(data, forbid_dtd=True, forbid_entities=True)
    except DefusedXmlException as exc:
        raise ReportError(
            f"refused: {type(exc).__name__} (DTDs and entities are not read)"
        ) from None
    except (ET.ParseError, ValueError, RecursionError) as exc:
        raise ReportError(f"not valid XML: {exc}") from None
    return root


def _failures(root: ET.Element) -> Iterator[tuple[ET.Element, ET.Element]]:
    """Each test case that failed or errored, with its first <failure>/<error> element."""
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                yield case, child
                break


def _last_location(text: str, paths: CheckoutPaths, only: str | None = None) -> tuple[str, int]:
    found: tuple[str, int] | None = None
    for match in _TRACEBACK_LOCATION.finditer(text):
        raw_path, raw_line = match["path"] or match["py_path"], match["line"] or match["py_line"]
        path = paths.relative(raw_path.strip())
        line = int(raw_line) if len(raw_line) < 10 else 0
        if path is not None and line >= 1 and (only is None or path == only):
            found = (path, line)
    if found is None:
        raise LookupError
    return found


def _module_file(classname: str, paths: CheckoutPaths) -> str | None:
    # `tests.unit.test_x.TestK` → tests/unit/test_x.py: the longest prefix that is a file.
    names = [name for name in classname.split(".") if name]
    for length in range(len(names), 0, -1):
        path = paths.relative("/".join(names[:length]) + ".py")
        if path is not None:
            return path
    return None


def _junit_location(case: ET.Element, text: str, paths: CheckoutPaths) -> tuple[str, int] | None:
    file_attribute = paths.relative(case.get("file", "").strip())
    if file_attribute is not None:
        try:
            # The failing line in the test's own file beats the line of its `def`.
            return _last_location(text, paths, only=file_attribute)
        except LookupError:
            line = case.get("line", "")
            # pytest writes the 0-based line of the test's `def`.
            return file_attribute, int(line) + 1 if line.isdigit() and len(line) < 10 else 1
    try:
        return _last_location(text, paths)
    except LookupError:
        pass
    module = _module_file(case.get("classname", ""), paths)
    return (module, 1) if module is not None else None


def parse_junit(data: bytes, paths: CheckoutPaths) -> Iterator[CheckAnnotation]:
    for case, failure in _failures(_xml(data)):
        text = failure.text or ""
        location = _junit_location(case, text, paths)
        if location is None:
            continue
        classname, name = case.get("classname", ""), case.get("name", "")
        last_line = (text.strip().splitlines() or [""])[-1]
        annotation = _annotation(
            location[0],
            location[1],
            failure.get("message") or last_line or f"test {failure.tag}",
            title=".".join(part for part in (classname, name) if part) or None,
            raw_details=text or None,
        )
        if annotation is not None:
            yield annotation


def parse_mypy(data: bytes, paths: CheckoutPaths) -> Iterator[CheckAnnotation]:
    for _case, failure in _failures(_xml(data)):
        pending: dict[str, Any] | None = None
        for line in (failure.text or "").splitlines():
            match = _MYPY_LINE.match(line)
            if match is None:
                continue
            path = paths.relative(match["path"].strip())
            if match["severity"] == "note":
                # A note explains the error before it (overload variants, hints): kept with it.
                same = pending is not None and pending["match"]["line"] == match["line"]
                if pending is not None and same and path == pending["path"]:
                    pending["notes"].append(match["message"])
                continue
            if pending is not None:
                yield from _mypy_annotation(pending)
            pending = None
            if path is None or match["severity"] != "error":
                continue
            pending = {"path": path, "match": match, "notes": []}
        if pending is not None:
            yield from _mypy_annotation(pending)


def _mypy_annotation(pending: dict[str, Any]) -> Iterable[CheckAnnotation]:
    match: re.Match[str] = pending["match"]

    def number(name: str) -> int | None:
        value = match[name]
        return int(value) if value is not None and len(value) < 10 else None

    line = number("line")
    if line is None:
        return []
    code = match["code"]
    annotation = _annotation(
        pending["path"],
        line,
        match["message"],
        end_line=number("end_line"),
        title=f"mypy [{code}]" if code else "mypy",
        raw_details="\n".join(pending["notes"]) or None,
        start_column=number("col"),
        end_column=number("end_col"),
    )
    return [annotation] if annotation is not None else []


PARSERS: dict[str, Callable[[bytes, CheckoutPaths], Iterator[CheckAnnotation]]] = {
    "ruff": parse_ruff,
    "junit": parse_junit,
    "mypy": parse_mypy,
}


def load_annotations(report: Report, workspace: Path) -> list[CheckAnnotation]:
    """The annotations of ``report`` (at most ``MAX_ANNOTATIONS``); ReportError if unusable."""
    data = read_report(workspace, report.path)
    annotations: list[CheckAnnotation] = []
    for annotation in PARSERS[report.format](data, CheckoutPaths(workspace)):
        annotations.append(annotation)
        if len(annotations) >= MAX_ANNOTATIONS:
            break
    return annotations
