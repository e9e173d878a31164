"""Error types shared by the core and plugins.

``ApiError`` is what HTTP handlers raise for client mistakes; it renders as
``{"error": {"code", "message"}}``. ``TransientError`` and ``PermanentError`` are what
plugins raise from route/deliver/lifecycle calls so the queue knows whether to retry.
"""

from __future__ import annotations

from typing import Any, Literal


class ApiError(Exception):
    """A client error with a stable machine-readable ``code`` and a human message."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ExternalError(Exception):
    """A failed call to something outside the hub (agent backend, channel server).

    ``retry_after`` (seconds) says the peer asked us to slow down; ``scope`` says whether that
    concerns the whole instance (account-wide throttling) or only the chat (per-chat limits,
    e.g. WhatsApp Cloud's pair rate), so the hub pauses just that.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        scope: Literal["instance", "chat"] = "instance",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.scope = scope


class TransientError(ExternalError):
    """Worth retrying later: timeouts, connection errors, 5xx, 408, 429."""


class PermanentError(ExternalError):
    """Retrying cannot help: 4xx other than 408/429, a payload the peer rejects, bad credentials."""


def classify_status(status_code: int) -> type[ExternalError] | None:
    """Map an HTTP status from a peer to the error class the queue should see (None when 2xx/3xx)."""
    if status_code < 400:
        return None
    if status_code in (408, 425, 429) or status_code >= 500:
        return TransientError
    return PermanentError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form); None when absent or unparseable."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


#: The answer when the database is unreachable or out of capacity (``Store.unavailable``).
STORE_UNAVAILABLE: dict[str, Any] = {
    "error": {"code": "store_unavailable", "message": "the database is unavailable right now; retry later"}
}
#: Seconds a client should wait before retrying a 503 (``Retry-After``).
RETRY_AFTER_S = "1"
