"""Keeping end users' data out of traces and logs (unless TRACE_INCLUDE_SENSITIVE is on).

Two layers: by field (known sensitive keys are replaced whole) and by pattern in free text
(phone numbers and WhatsApp JIDs, e-mail addresses, URLs with their query strings, long
base64 blobs), because error messages from channel servers quote what they refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: Keys whose values are end-user content or identity: replaced whole.
SENSITIVE_FIELDS = frozenset(
    {
        "text",
        "caption",
        "body",
        "content",
        "media",
        "url",
        "phone",
        "number",
        "to",
        "from",
        "email",
        "name",
        "push_name",
        "pushname",
        "vcard",
        "chat_id",
        "sender_id",
        "remote_jid",
        "remotejid",
        "participant",
        "address",
    }
)
SECRET_PARTS = ("key", "token", "secret", "password", "credential", "authorization")

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),  # e-mail (also covers JIDs: digits@s.whatsapp.net)
    (re.compile(r"https?://[^\s\"'<>]+"), "[url]"),
    (re.compile(r"(?<![\w])\+?\d[\d\s().-]{6,}\d(?![\w])"), "[number]"),  # phone-like digit runs
    (re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"), "[blob]"),
]


def scrub_text(value: str) -> str:
    """``value`` with phone numbers, e-mails/JIDs, URLs and blobs replaced by placeholders."""
    for pattern, placeholder in _PATTERNS:
        value = pattern.sub(placeholder, value)
    return value


def scrub(value: Any, *, key: str | None = None) -> Any:
    """A copy of ``value`` safe to log or trace: sensitive fields dropped, free text scrubbed."""
    if key is not None:
        lowered = key.lower()
        if any(part in lowered for part in SECRET_PARTS):
            return "[secret]" if value not in (None, "") else value
        if lowered in SENSITIVE_FIELDS and value not in (None, "", [], {}):
            return "[redacted]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: scrub(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def maybe_scrub(value: Any, include_sensitive: bool) -> Any:
    return value if include_sensitive else scrub(value)
