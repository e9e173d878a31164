"""The Hive wire format, as pure functions: which target to call, whether a tenant's ``hive`` config
is usable, what to send, what came back.

Nothing here does I/O, so all of it is unit-tested without a server.

Request: ``POST {api_url}/process`` with ``Authorization: Bearer <key>`` (when a key is set),
``Idempotency-Key: <message id>`` and a JSON body::

    {"tenant": "...", "message": {<unified Message>},
     "context": {"tenant": {...}, "history": [{<Message>}, ...], "session_id": "..."},
     "routing_hints": {"preferred_agent": ..., "priority": "normal", "session_id": "..."}}

Reply (2xx), any of::

    {"reply": "text"}
    {"reply": {"text": "...", "media": [{"url", "mime_type", "filename"?, "caption"?}]}}
    {"messages": [{"text": "...", "media"?: [...]}, ...]}
    {} / empty body / {"reply": null} / HTTP 202        -> accepted, nothing to say now
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from omni_core import (
    AgentReply,
    ExternalError,
    Media,
    Message,
    OutboundPart,
    PermanentError,
    RouteContext,
    Tenant,
    classify_status,
    parse_retry_after,
)

BACKEND = "hive"
NO_URL_MESSAGE = "Hive enabled but no HIVE_API_URL configured"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_DETAIL_LIMIT = 200


class HiveTarget(msgspec.Struct, kw_only=True, frozen=True):
    """Where and how to call Hive for one tenant (settings overridden by ``tenant.config["hive"]``)."""

    api_url: str | None
    api_key: str | None
    timeout: float
    preferred_agent: str | None = None
    priority: str = "normal"

    @property
    def process_url(self) -> str:
        if not self.api_url:
            raise PermanentError(NO_URL_MESSAGE)
        return self.api_url.rstrip("/") + "/process"


def _hive_config(tenant_config: dict[str, Any]) -> dict[str, Any]:
    section = tenant_config.get("hive")
    return section if isinstance(section, dict) else {}


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return bool(value)


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def resolve_target(
    tenant_config: dict[str, Any],
    *,
    enabled: bool,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
) -> HiveTarget | None:
    """The Hive target for a tenant, or None when Hive is not enabled for it.

    ``enabled`` / ``api_url`` / ``api_key`` / ``timeout`` are the process-wide settings;
    ``tenant_config["hive"]`` overrides them (``enabled`` only when the key is present).
    The returned target may lack an ``api_url``: calling it then fails permanently.
    """
    hive = _hive_config(tenant_config)
    is_enabled = _flag(hive["enabled"]) if "enabled" in hive else enabled
    if not is_enabled:
        return None
    return HiveTarget(
        api_url=_opt_str(hive.get("api_url")) or _opt_str(api_url),
        api_key=_opt_str(hive.get("api_key")) or _opt_str(api_key),
        timeout=timeout,
        preferred_agent=_opt_str(hive.get("preferred_agent")),
        priority=_opt_str(hive.get("priority")) or "normal",
    )


# --- tenant config validation -----------------------------------------------------------------
#: The redaction marker the API shows for a secret; stored back it would replace the real key.
_REDACTED = "***"


def _url_problem(value: Any) -> str | None:
    """What is wrong with a ``hive.api_url`` value (never echoing it: it may carry credentials)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"hive.api_url must be a string (an http(s) URL), got {_type_name(value)}"
    url = value.strip()
    if not url:
        return None  # empty: falls back to HIVE_API_URL, as resolve_target does
    invalid = "hive.api_url must be an absolute http(s) URL with a host, e.g. https://hive.example.com"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return f"{invalid} (it contains whitespace or control characters)"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number from 0 to 65535
        httpx.URL(url)  # what call_hive will parse; catches what urlsplit lets through
    except (ValueError, httpx.InvalidURL):
        return invalid
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return invalid
    if "?" in url or "#" in url:
        return "hive.api_url must not have a query string or fragment (the hub appends /process to it)"
    return None


def _key_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"hive.api_key must be a string, got {_type_name(value)}"
    key = value.strip()
    if key == _REDACTED:
        return 'hive.api_key is the redaction marker "***"; leave the key out of the patch to keep the stored key'
    # It goes into the Authorization header, which httpx encodes as ASCII.
    if any(not (" " <= ch <= "~") for ch in key):
        return "hive.api_key must contain only printable ASCII characters (it is sent in an HTTP header)"
    return None


def validate_config(tenant_config: Mapping[str, Any]) -> list[str]:
    """Problems with the ``hive`` section of a tenant config, as :func:`resolve_target` reads it.

    Only the keys the plugin reads are checked. Other keys in the section are allowed: the plugin
    ignores them, but they reach Hive in ``context.tenant.config`` (secrets stripped), so a Hive
    deployment may use keys of its own. Messages name the key and never contain its value.
    """
    hive = tenant_config.get("hive")
    if hive is None:
        return []
    if not isinstance(hive, dict):
        return [f"hive must be an object, got {_type_name(hive)}"]
    problems: list[str] = []
    if "enabled" in hive:
        enabled = hive["enabled"]
        # Strings outside the known words would be truthy in _flag: "maybe" would mean on.
        if not (isinstance(enabled, bool) or (isinstance(enabled, str) and enabled.strip().lower() in _TRUE + _FALSE)):
            problems.append(
                'hive.enabled must be true, false or one of "true", "false", "yes", "no", "on", "off", "1", "0"'
                + ("" if isinstance(enabled, str) else f", got {_type_name(enabled)}")
            )
    for problem in (_url_problem(hive.get("api_url")), _key_problem(hive.get("api_key"))):
        if problem is not None:
            problems.append(problem)
    for name in ("preferred_agent", "priority"):
        value = hive.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"hive.{name} must be a string, got {_type_name(value)}")
    return problems


def build_headers(target: HiveTarget, message: Message, context: RouteContext | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": message.id}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    if context is not None and context.traceparent:
        headers["traceparent"] = context.traceparent  # W3C trace context: Hive joins the hub's trace
    return headers


def build_body(target: HiveTarget, tenant: Tenant, message: Message, context: RouteContext) -> dict[str, Any]:
    """The ``/process`` request body as plain JSON-ready builtins."""
    body: dict[str, Any] = {
        "tenant": tenant.id,
        "message": msgspec.to_builtins(message),
        "context": {
            "tenant": msgspec.to_builtins(context.tenant),
            "history": [msgspec.to_builtins(m) for m in context.history],
            "session_id": context.session_id,
        },
        "routing_hints": {
            "preferred_agent": target.preferred_agent,
            "priority": target.priority,
            "session_id": context.session_id,
        },
    }
    return body


def encode_body(body: dict[str, Any]) -> bytes:
    return msgspec.json.encode(body)


# --- replies ------------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def _text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PermanentError(f"Hive reply {where} must be a string, got {_type_name(value)}")
    return value if value.strip() else None


def _media_item(item: Any, where: str) -> Media:
    if not isinstance(item, dict):
        raise PermanentError(f"Hive reply {where} must be an object, got {_type_name(item)}")
    url = item.get("url")
    if not isinstance(url, str) or not url.strip():
        raise PermanentError(f"Hive reply {where}.url must be a non-empty string")
    mime = item.get("mime_type", item.get("mimetype"))
    if mime is not None and not isinstance(mime, str):
        raise PermanentError(f"Hive reply {where}.mime_type must be a string, got {_type_name(mime)}")
    filename = _text(item.get("filename"), f"{where}.filename")
    caption = _text(item.get("caption"), f"{where}.caption")
    if not mime:
        guessed, _ = mimetypes.guess_type(filename or url.split("?", 1)[0])
        mime = guessed or "application/octet-stream"
    size = item.get("size")
    return Media(
        url=url,
        mime_type=mime,
        filename=filename,
        caption=caption,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
    )


def _media(value: Any, where: str) -> list[Media]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PermanentError(f"Hive reply {where} must be an array, got {_type_name(value)}")
    return [_media_item(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _part(value: Any, where: str) -> OutboundPart | None:
    """One reply item: a string, or an object with ``text`` and/or ``media``; None when empty."""
    if value is None:
        return None
    if isinstance(value, str):
        text = _text(value, where)
        return OutboundPart(text=text) if text is not None else None
    if not isinstance(value, dict):
        raise PermanentError(f"Hive reply {where} must be a string or an object, got {_type_name(value)}")
    text = _text(value.get("text"), f"{where}.text")
    media = _media(value.get("media"), f"{where}.media")
    if text is None and not media:
        return None
    return OutboundPart(text=text, media=media)


def parse_reply_json(data: Any) -> AgentReply:
    """Turn a decoded 2xx JSON body into an :class:`AgentReply` (``messages`` wins over ``reply``)."""
    if data is None:
        return AgentReply(backend=BACKEND)
    if not isinstance(data, dict):
        raise PermanentError(f"Hive reply must be a JSON object, got {_type_name(data)}")
    parts: list[OutboundPart] = []
    messages = data.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise PermanentError(f"Hive reply messages must be an array, got {_type_name(messages)}")
        for i, item in enumerate(messages):
            part = _part(item, f"messages[{i}]")
            if part is not None:
                parts.append(part)
    else:
        part = _part(data.get("reply"), "reply")
        if part is not None:
            parts.append(part)
    return AgentReply(backend=BACKEND, parts=parts)


def parse_reply(status_code: int, content: bytes) -> AgentReply:
    """Parse a 2xx answer. 202 and empty bodies mean "accepted, nothing to say now"."""
    if status_code == 202 or not content.strip():
        return AgentReply(backend=BACKEND)
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        raise PermanentError(
            f"Hive returned HTTP {status_code} with a body that is not valid JSON", status_code=status_code
        ) from None
    try:
        return parse_reply_json(data)
    except PermanentError as exc:
        raise PermanentError(exc.message, status_code=status_code) from None


def _detail(content: bytes, secret: str | None) -> str:
    """A short, single-line, secret-free summary of an error body."""
    text = content.decode("utf-8", errors="replace").strip()
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
    text = " ".join(text.split())
    if secret:
        text = text.replace(secret, "***")
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    return text


def error_for_status(
    status_code: int, content: bytes = b"", retry_after: str | None = None, *, secret: str | None = None
) -> ExternalError | None:
    """The error for a non-2xx answer (None for 2xx): transient for 5xx/408/425/429, else permanent.

    ``secret`` (the API key) is scrubbed from the message in case the server echoes it.
    """
    if 200 <= status_code < 300:
        return None
    cls = classify_status(status_code) or PermanentError
    detail = _detail(content, secret)
    message = f"Hive answered HTTP {status_code}" + (f": {detail}" if detail else "")
    delay = parse_retry_after(retry_after) if cls is not PermanentError else None
    return cls(message, status_code=status_code, retry_after=delay)


def reply_from_response(
    status_code: int, content: bytes, retry_after: str | None = None, *, secret: str | None = None
) -> AgentReply:
    """Raise the right error for a failed answer, else parse it."""
    error = error_for_status(status_code, content, retry_after, secret=secret)
    if error is not None:
        raise error
    return parse_reply(status_code, content)
