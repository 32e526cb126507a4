"""Step output in reports: redacted, and unable to leave the block or line it is placed in.

Each rendering is parsed back with a CommonMark parser (markdown-it, GFM tables on): what a
reader of the report sees is what the tokens say, not what the raw text looks like.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from core.redact import MASK, forget_secrets, register_secret
from flows.records.markdown import clean, code_span, escape_inline, fenced
from flows.records.summary import render_markdown
from flows.results import StageResult, StageStatus

SECRET = "registered-secret-4b1d9e"
FORGERY = "\n".join(
    [
        "tests failed",
        "```",
        "~~~",
        "## Approved",
        "[release notes](https://evil.example/phish)",
        '<img src="https://evil.example/pixel"> <a href="https://evil.example">ok</a>',
        f"token was {SECRET}",
        "````````",
        "<!-- hidden -->",
    ]
)


@pytest.fixture(autouse=True)
def _registered_secret() -> Iterator[None]:
    forget_secrets()
    register_secret(SECRET)
    yield
    forget_secrets()


def tokens(markdown: str) -> list[Token]:
    flat: list[Token] = []
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        flat.append(token)
        flat.extend(token.children or [])
    return flat


def kinds(markdown: str) -> set[str]:
    return {token.type for token in tokens(markdown)}


def test_a_fake_closing_fence_stays_inside_the_block() -> None:
    rendered = "\n".join(["before", *fenced(FORGERY), "after"])

    found = tokens(rendered)

    (block,) = [t for t in found if t.type == "fence"]
    assert "## Approved" in block.content
    assert "[release notes](https://evil.example/phish)" in block.content
    assert not {"heading_open", "link_open", "image", "html_block", "html_inline"} & kinds(rendered)
    paragraphs = [t.content for t in found if t.type == "inline"]
    assert paragraphs == ["before", "after"]


@pytest.mark.parametrize("fence", ["```", "````", "``````````", "~~~", "~~~~~~"])
def test_the_fence_outgrows_whatever_the_text_prints(fence: str) -> None:
    rendered = "\n".join([*fenced(f"a\n{fence}\n# Approved\n{fence}\nb"), "after"])

    (block,) = [t for t in tokens(rendered) if t.type == "fence"]
    assert block.content == f"a\n{fence}\n# Approved\n{fence}\nb\n"
    assert "heading_open" not in kinds(rendered)


def test_a_registered_secret_and_a_private_key_never_reach_a_block() -> None:
    key = "\n".join(
        [
            "-----BEGIN RSA PRIVATE KEY-----",
            "MIIEpAIBAAKCAQEA0Z3VS5JJcds3xfn",
            "-----END RSA PRIVATE KEY-----",
        ]
    )

    body = "\n".join(fenced(f"{FORGERY}\n{key}"))

    assert SECRET not in body
    assert "MIIEpAIBAAKCAQEA0Z3VS5JJcds3xfn" not in body
    assert f"token was {MASK}" in body


def test_inline_text_is_shown_as_text_in_a_table_cell() -> None:
    detail = escape_inline(FORGERY)
    table = "\n".join(["| stage | detail |", "|---|---|", f"| unit | {detail} |"])

    found = tokens(table)

    cells = [t.content for t in found if t.type == "inline"]
    assert len(cells) == 4, "the detail added or removed table cells"
    assert not {"link_open", "image", "html_inline", "code_inline", "em_open"} & kinds(table)
    assert SECRET not in table
    rendered = MarkdownIt("commonmark").enable("table").render(table)
    assert "&lt;img src=" in rendered
    assert "<img" not in rendered


def test_the_mask_itself_cannot_become_a_link() -> None:
    line = escape_inline(f"{SECRET}(https://evil.example)")

    assert "link_open" not in kinds(f"x {line}")


def test_a_code_span_is_delimited_by_more_backticks_than_it_holds() -> None:
    span = code_span("a `` b ``` c")

    (code,) = [t for t in tokens(f"x {span} y") if t.type == "code_inline"]
    assert code.content == "a `` b ``` c"


def test_terminal_escapes_and_invisible_characters_are_removed() -> None:
    assert clean("\x1b[31mred\x1b[0m \u202eevil\u200b\r\nnext") == "red evil\nnext"


def test_a_hostile_step_cannot_alter_the_report_outside_its_block() -> None:
    unit = StageResult(
        name="unit",
        status=StageStatus.FAILED,
        seconds=1.0,
        exit_code=1,
        tail=FORGERY,
        detail=f"exit code 1: [click](https://evil.example) <b>bold</b> {SECRET}",
    )
    lint = StageResult(name="lint", status=StageStatus.PASSED, seconds=0.5)

    report = render_markdown("pr", [lint, unit], 2.0, {"note": f"`` {SECRET} ``"})

    found = tokens(report)
    headings = [found[i + 1].content for i, t in enumerate(found) if t.type == "heading_open"]
    assert headings == ["pr pipeline: 2.0 s", "unit: last lines"]
    assert not {"link_open", "image", "html_block", "html_inline"} & kinds(report)
    assert [t.type for t in found].count("fence") == 1
    assert SECRET not in report
