"""Reading a saved block: the one way every block loader falls back to the environment.

A pipeline must not fail because the Prefect server is down or a block is missing or invalid:
each loader then uses the environment. A loaded block's secrets are registered for redaction at
once, so they are masked in every log line, report and message that follows: every ``SecretStr``,
``SecretBytes`` and ``SecretDict`` field (a PEM private key whole and line by line), nested
blocks' too, and the credential entries of plain mappings such as a kubeconfig's tokens, keys
and certificate data.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from prefect.blocks.core import Block
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from pydantic import ValidationError

from core.redact import register_model_secrets

logger = logging.getLogger("gantry.blocks")

B = TypeVar("B", bound=Block)


def prefect_api_reachable() -> bool:
    # Without an API URL outside a flow run, reading a block would start a throwaway
    # ephemeral server just to find nothing: skip straight to the environment.
    return bool(get_current_settings().api.url) or FlowRunContext.get() is not None


async def load_saved_block(kind: type[B], block_name: str | None) -> B | None:
    """The saved block of ``kind`` named ``block_name``, or None (logged) when there is none."""
    if not block_name or not prefect_api_reachable():
        return None
    what = kind.get_block_type_name()
    try:
        block = await kind.aload(block_name)
    except ValidationError as exc:
        # Never str(exc): pydantic echoes the rejected input, which may be a secret.
        logger.warning(
            "the saved %r %s block is invalid (%d errors): using the environment",
            block_name,
            what,
            exc.error_count(),
        )
        return None
    except ValueError:
        logger.debug("no saved %r %s block: using the environment", block_name, what)
        return None
    except Exception as exc:  # the server being down must not stop a pipeline
        logger.warning(
            "could not read the %r %s block (%s): using the environment",
            block_name,
            what,
            type(exc).__name__,
        )
        return None
    register_model_secrets(block)
    return block
