"""Slack request signing (v0): ``X-Slack-Signature = "v0=" + hex(HMAC-SHA256(secret, "v0:{ts}:{raw body}"))``.

Pure functions. The tests check these against slack_sdk's own ``SignatureVerifier`` (an independent
implementation) and Slack's published known-answer vector.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGNATURE_HEADER = "x-slack-signature"
TIMESTAMP_HEADER = "x-slack-request-timestamp"
VERSION = "v0"
#: Slack's replay window: requests signed more than five minutes from now are refused.
MAX_SKEW_SECONDS = 300


class SignatureError(Exception):
    """A request that cannot be Slack's: missing headers, a stale timestamp or a wrong signature."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def compute(signing_secret: str, timestamp: str, body: bytes) -> str:
    """The signature Slack sends for ``body`` signed at ``timestamp`` with ``signing_secret``."""
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def matches(signing_secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``body``'s signature under ``signing_secret`` (constant-time compare)."""
    return hmac.compare_digest(compute(signing_secret, timestamp, body).encode(), signature.encode())


def signed_headers(headers: Mapping[str, str], now: float) -> tuple[str, str]:
    """``(timestamp, signature)`` from lower-cased request headers; raise :class:`SignatureError` if unusable.

    The timestamp must be an integer within :data:`MAX_SKEW_SECONDS` of ``now`` (replay protection).
    """
    timestamp = headers.get(TIMESTAMP_HEADER, "").strip()
    signature = headers.get(SIGNATURE_HEADER, "").strip()
    if not timestamp or not signature:
        raise SignatureError(
            "missing_signature", "Slack requests must carry X-Slack-Request-Timestamp and X-Slack-Signature"
        )
    if not timestamp.isdigit():
        raise SignatureError("invalid_timestamp", "X-Slack-Request-Timestamp must be whole seconds since the epoch")
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        raise SignatureError(
            "stale_timestamp",
            f"X-Slack-Request-Timestamp is more than {MAX_SKEW_SECONDS} seconds from the hub's clock",
        )
    if not signature.startswith(f"{VERSION}="):
        raise SignatureError("invalid_signature", f"X-Slack-Signature must start with {VERSION}=")
    return timestamp, signature
