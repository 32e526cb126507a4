"""How requests to GitHub are authenticated: a fixed token, or a GitHub App installation token.

A few endpoints (``/app/...``: the App's own webhook deliveries, the token exchange) authenticate
as the App itself with its JWT; only App credentials can make one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

import jwt
from pydantic import SecretStr

from clients.github_errors import GitHubAuthError
from clients.github_models import InstallationToken

# Backdated so a server clock slightly ahead of ours still accepts the JWT (GitHub's advice).
JWT_BACKDATE_SECONDS = 60
# GitHub refuses JWTs expiring more than 10 minutes ahead; stay under it despite clock skew.
JWT_LIFETIME_SECONDS = 540

# Called with (installation id, app JWT); performs the token exchange request.
TokenExchange = Callable[[int, SecretStr], Awaitable[InstallationToken]]


class GitHubAuth(Protocol):
    async def bearer(self, exchange: TokenExchange) -> SecretStr:
        """The bearer credential for the next request."""
        ...

    def invalidate(self) -> None:
        """Forget any cached credential (GitHub answered 401 with it)."""
        ...

    @property
    def renewable(self) -> bool:
        """Whether invalidating can yield a different credential."""
        ...

    def app_jwt(self, now: float | None = None) -> SecretStr:
        """The App's own JWT, for the endpoints that authenticate as the App; a GitHubAuthError
        when these credentials are no App."""
        ...


class TokenAuth:
    """A personal, fine-grained or Actions-style token used as is."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def bearer(self, exchange: TokenExchange) -> SecretStr:
        return self._token

    def invalidate(self) -> None:
        """A fixed token cannot be renewed."""

    @property
    def renewable(self) -> bool:
        return False

    def app_jwt(self, now: float | None = None) -> SecretStr:
        # GitHub answers 401/403 to a token on /app/...: say why before asking.
        raise GitHubAuthError(
            "this endpoint authenticates as the GitHub App (its JWT): it needs App credentials "
            "(app_id, private_key, installation_id), not a token"
        )

    def __repr__(self) -> str:
        return "TokenAuth(token='**********')"


class AppAuth:
    """A GitHub App installation: RS256 JWT → installation token, cached until near expiry."""

    def __init__(
        self,
        app_id: str,
        private_key: SecretStr,
        installation_id: int,
        *,
        refresh_margin: float = 300.0,
    ) -> None:
        self.app_id = str(app_id)
        self.installation_id = installation_id
        self._private_key = private_key
        self._refresh_margin = refresh_margin
        self._cached: InstallationToken | None = None
        # One exchange at a time: concurrent stages share one token instead of minting many.
        self._lock = asyncio.Lock()

    def app_jwt(self, now: float | None = None) -> SecretStr:
        """The short-lived JWT that authenticates as the App itself."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iat": issued - JWT_BACKDATE_SECONDS,
            "exp": issued + JWT_LIFETIME_SECONDS,
            "iss": self.app_id,
        }
        try:
            encoded = jwt.encode(claims, self._private_key.get_secret_value(), algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            # The library's message could quote the key material: name the problem only.
            raise GitHubAuthError(
                f"GitHub App {self.app_id}: private_key is not a usable RSA private key (PEM)"
            ) from exc
        return SecretStr(encoded)

    def _fresh(self) -> InstallationToken | None:
        cached = self._cached
        if cached is None:
            return None
        remaining = (cached.expires_at - datetime.now(UTC)).total_seconds()
        return cached if remaining > self._refresh_margin else None

    async def bearer(self, exchange: TokenExchange) -> SecretStr:
        fresh = self._fresh()
        if fresh is not None:
            return fresh.token
        async with self._lock:
            fresh = self._fresh()
            if fresh is None:
                fresh = await exchange(self.installation_id, self.app_jwt())
                self._cached = fresh
            return fresh.token

    def invalidate(self) -> None:
        self._cached = None

    @property
    def renewable(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"AppAuth(app_id={self.app_id!r}, installation_id={self.installation_id!r})"
