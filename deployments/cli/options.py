"""Options several commands share: typer only, since `gantry --help` reads them."""

from __future__ import annotations

from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
NoCacheFlag = Annotated[
    bool, typer.Option("--no-cache", help="Run every step afresh instead of re-using results.")
]
