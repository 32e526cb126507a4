"""What can go wrong talking to GitHub: one hierarchy, no httpx types, no secrets."""

from __future__ import annotations

import re

# GitHub's token prefixes (classic, OAuth, user-to-server, server-to-server, refresh,
# fine-grained) and bearer headers: scrubbed from every message as a last line of defence.
_SECRET_PATTERNS = re.compile(
    r"(gh[posur]_[A-Za-z0-9_]{8,}|github_pat_[A-Za-z0-9_]{8,}|(?i:bearer)\s+[A-Za-z0-9._\-~+/=]{8,})"
)


def redact(text: str) -> str:
    """``text`` with anything shaped like a GitHub token or bearer credential masked."""
    return _SECRET_PATTERNS.sub("[redacted]", text)


class GitHubError(Exception):
    """GitHub refused or failed a request. ``status`` is the HTTP status, when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        documentation_url: str | None = None,
    ) -> None:
        self.message = redact(message)
        self.status = status
        self.documentation_url = documentation_url
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class GitHubAuthError(GitHubError):
    """Bad or expired credentials (401), or the GitHub App token exchange failed."""


class GitHubForbiddenError(GitHubAuthError):
    """Authenticated, but not allowed (403 that is not a rate limit)."""


class GitHubNotFoundError(GitHubError):
    """404: no such repository, hook, deployment, or no access to it (GitHub hides which)."""


class GitHubConflictError(GitHubError):
    """409: a deployment's merge conflicted or its required checks failed."""


class GitHubValidationError(GitHubError):
    """422 (or 400): GitHub rejected the request body."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        documentation_url: str | None = None,
        errors: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message, status=status, documentation_url=documentation_url)
        self.errors = errors or []


class GitHubRateLimited(GitHubError):
    """Rate limited for longer than the client may wait. ``retry_after``: seconds still to wait."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        documentation_url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, documentation_url=documentation_url)
        self.retry_after = retry_after


class GitHubUnavailable(GitHubError):
    """5xx answers, timeouts or connection errors that outlasted the retries."""


class GitHubProtocolError(GitHubError):
    """GitHub answered with a shape Gantry does not understand."""
