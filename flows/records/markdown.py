"""Untrusted text (step output, details, names) made safe for a report: redacted, then escaped.

Step output is written by repository code, so it is treated as hostile: it may print a closing
code fence followed by markdown ("## Approved", links, HTML) to forge the report around it, or
print a secret. Every piece goes through ``core.redact`` first (the mask itself is escaped as
text, never read as a link), then is placed so it cannot leave its spot: a fenced block whose
fence is longer than any run of backticks in the text, or inline text whose markdown and HTML
characters are escaped.
"""

from __future__ import annotations

import re

from core.redact import redact

# ANSI colour/cursor sequences (CSI and OSC) that tools print to terminals.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# Control and invisible formatting characters: C0/C1 controls (but tab and newline), zero-width
# and bidirectional overrides that could make shown text differ from what it is.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)
# The ASCII punctuation that makes inline markdown (emphasis, code, links and images, table
# cells, strikethrough, math); CommonMark lets a backslash escape each. ``<``, ``>`` and ``&``
# become HTML entities instead, so no tag, autolink or entity can be written either. Block
# markers (#, -, 1.) need no escape: this text is only ever placed after something on its line.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]|~^$])")
_BACKTICK_RUN = re.compile(r"`+")


def clean(text: str) -> str:
    """``text`` redacted, without terminal escapes and invisible characters."""
    text = _ANSI.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return redact(_INVISIBLE.sub("", text))


def one_line(text: str, limit: int = 200) -> str:
    """``text`` cleaned, on one line (whitespace collapsed), at most ``limit`` characters."""
    return " ".join(clean(text).split())[:limit]


def escape_inline(text: str, limit: int = 200) -> str:
    """One line of plain text inside a markdown line or table cell: nothing in it is markup."""
    line = one_line(text, limit)
    line = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", line)


def code_span(text: str, limit: int = 300) -> str:
    """One line of text as inline code, delimited by more backticks than it holds."""
    line = one_line(text, limit)
    runs = [len(run) for run in _BACKTICK_RUN.findall(line)]
    ticks = "`" * (max(runs, default=0) + 1)
    if line.startswith("`") or line.endswith("`"):
        # Spaces keep an edge backtick from joining the delimiter (CommonMark strips them).
        return f"{ticks} {line} {ticks}"
    return f"{ticks}{line}{ticks}" if line else ""


def fenced(text: str) -> list[str]:
    """``text`` as a fenced code block: its fence is longer than any backtick run inside, so no
    line of it can close the block; tildes cannot close a backtick fence at all."""
    body = clean(text).rstrip("\n")
    runs = [len(run) for run in _BACKTICK_RUN.findall(body)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return [f"{fence}text", *body.split("\n"), fence]
