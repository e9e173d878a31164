"""The unified message format: msgspec Structs that are both the in-memory model and the wire encoding.

Every channel plugin normalizes its platform's events into these types; the store, the agent
backends and the outbound API speak nothing else.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from omni_core.entities import has_secret, redact

Direction = Literal["inbound", "outbound"]
ChatType = Literal["direct", "group", "channel"]
ContentType = Literal[
    "text", "image", "audio", "video", "document", "sticker", "location", "contact", "reaction", "unsupported"
]
MessageStatus = Literal["received", "queued", "processing", "forwarded", "sent", "delivered", "read", "failed", "dead"]

#: Order in which delivery statuses advance; a late "delivered" never overwrites "read".
STATUS_RANK: dict[str, int] = {
    "received": 0,
    "queued": 1,
    "processing": 2,
    "forwarded": 3,
    "sent": 4,
    "delivered": 5,
    "read": 6,
    "failed": 7,
    "dead": 8,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1)
_now_ms = -1
_now_text = ""


def now_iso() -> str:
    """``iso(utcnow())``, formatted once per millisecond: a message's steps ask for it dozens of times."""
    global _now_ms, _now_text
    ms = time.time_ns() // 1_000_000
    if ms != _now_ms:
        _now_text = iso_ms(ms)
        _now_ms = ms
    return _now_text


#: The last whole second :func:`iso_ms` formatted, with its text up to the dot: one tuple, so a
#: thread reading it never pairs one second's number with another's text.
_last_second: tuple[int, str] = (-1, "")


def iso_ms(ms: int) -> str:
    """:func:`iso` of an epoch time in whole milliseconds (from the integer: no float rounding).

    The date and time of day are formatted once per second (datetime arithmetic and
    ``isoformat`` were ~1% of the serving process's samples end to end); the milliseconds are
    appended.
    """
    global _last_second
    second, milli = divmod(ms, 1000)
    cached, prefix = _last_second
    if second != cached:
        prefix = (_EPOCH + timedelta(seconds=second)).isoformat() + "."
        _last_second = (second, prefix)
    return f"{prefix}{milli:03d}Z"


def iso(dt: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z`` suffix (sorts lexically)."""
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    # isoformat is implemented in C; strftime is several times slower on this hot path.
    return dt.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class Chat(msgspec.Struct, kw_only=True, omit_defaults=False):
    id: str
    type: ChatType = "direct"
    thread_id: str | None = None
    name: str | None = None


class Sender(msgspec.Struct, kw_only=True):
    id: str
    name: str | None = None
    is_bot: bool = False
    is_self: bool = False


class Media(msgspec.Struct, kw_only=True):
    url: str | None = None
    mime_type: str = "application/octet-stream"
    size: int | None = None
    filename: str | None = None
    caption: str | None = None


class Content(msgspec.Struct, kw_only=True):
    type: ContentType = "text"
    text: str | None = None
    media: list[Media] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, kw_only=True):
    """One message in the hub, inbound or outbound, on any channel."""

    id: str
    source: str
    tenant: str
    instance: str
    direction: Direction
    chat: Chat
    sender: Sender
    content: Content
    timestamp: str
    external_id: str | None = None
    reply_to: str | None = None
    status: MessageStatus = "received"


class StatusUpdate(msgspec.Struct, kw_only=True):
    """A platform's report that one of our messages changed state (delivered, read, failed ...)."""

    external_id: str
    status: MessageStatus
    chat_id: str | None = None
    error: str | None = None


class InstanceUpdate(msgspec.Struct, kw_only=True):
    """A channel's report about the instance itself: connection state and/or a fresh QR code."""

    state: str | None = None
    reason: str | None = None
    qrcode_base64: str | None = None
    qrcode_code: str | None = None
    pairing_code: str | None = None
    profile: dict[str, Any] = msgspec.field(default_factory=dict)


class MessageChange(msgspec.Struct, kw_only=True):
    """A platform's report that an earlier message was edited or deleted.

    Recorded on the original message (``content.metadata``), never as a new turn.
    """

    external_id: str
    kind: Literal["edited", "deleted"]
    text: str | None = None
    at: str | None = None


class Ignored(msgspec.Struct, kw_only=True):
    """An event the channel understood but the hub has nothing to do with."""

    reason: str


#: What a channel's ``normalize`` hook may return for one raw event.
NormalizedEvent = Message | StatusUpdate | InstanceUpdate | MessageChange | Ignored


class OutboundPart(msgspec.Struct, kw_only=True):
    """One reply an agent wants delivered: text, media, or both."""

    text: str | None = None
    media: list[Media] = msgspec.field(default_factory=list)


class AgentReply(msgspec.Struct, kw_only=True):
    """The outcome of routing a message to an agent backend.

    ``parts`` empty means the agent accepted the message but has nothing to say now
    (it may answer later through ``POST /messages/send``).
    """

    backend: str
    parts: list[OutboundPart] = msgspec.field(default_factory=list)


class DeliveryReceipt(msgspec.Struct, kw_only=True):
    """What a channel returns after it handed a message to the platform."""

    external_id: str | None
    status: MessageStatus = "sent"
    raw: dict[str, Any] = msgspec.field(default_factory=dict)


_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_message(data: bytes | str) -> Message:
    return _message_decoder.decode(data)


def apply_change(message: Message, change: MessageChange) -> None:
    """Record an edit or deletion in the original message's metadata (keeps every earlier version)."""
    meta = message.content.metadata
    history = list(meta.get("changes") or [])
    history.append({"kind": change.kind, "text": change.text, "at": change.at, "previous_text": message.content.text})
    meta["changes"] = history
    if change.kind == "deleted":
        meta["deleted"] = True
    else:
        meta["edited"] = True
        meta["edited_text"] = change.text


def shareable(message: Message) -> Message:
    """A copy safe to show outside the hub: secret-named metadata (interaction tokens ...) redacted.

    Channels keep what they need to answer (e.g. a Discord interaction token) in
    ``content.metadata``; API readers, agents and tenant webhooks get ``"***"`` instead.
    """
    metadata = message.content.metadata
    if not metadata or not has_secret(metadata):  # the usual case: nothing to copy
        return message
    cleaned = redact(metadata)
    return msgspec.structs.replace(message, content=msgspec.structs.replace(message.content, metadata=cleaned))
