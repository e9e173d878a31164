"""Evolution API webhook payloads -> unified hub events. Pure functions: no I/O, no clock except as a fallback.

Evolution has shipped several payload shapes (v1.x, v2.0-2.1, v2.2+); the functions here accept all of
them and raise :class:`ValueError` naming the problem when a payload is structurally unusable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from omni_core import (
    Chat,
    Content,
    Ignored,
    InstanceUpdate,
    Media,
    Message,
    NormalizedEvent,
    Sender,
    StatusUpdate,
    iso,
    new_id,
    utcnow,
)
from omni_core.model import ContentType, MessageStatus

CHANNEL = "whatsapp"

USER_SUFFIX = "@s.whatsapp.net"
GROUP_SUFFIX = "@g.us"
LID_SUFFIX = "@lid"
BROADCAST_SUFFIX = "@broadcast"
NEWSLETTER_SUFFIX = "@newsletter"
JID_SUFFIXES = (USER_SUFFIX, GROUP_SUFFIX, LID_SUFFIX, BROADCAST_SUFFIX)

#: Evolution's message status strings -> hub statuses (``None``: nothing worth recording).
STATUS_MAP: dict[str, MessageStatus | None] = {
    "ERROR": "failed",
    "PENDING": None,
    "SERVER_ACK": "sent",
    "DELIVERY_ACK": "delivered",
    "READ": "read",
    "PLAYED": "read",
}
#: Baileys' numeric WAMessageStatus, which some versions forward unrendered.
_NUMERIC_STATUS = {0: "ERROR", 1: "PENDING", 2: "SERVER_ACK", 3: "DELIVERY_ACK", 4: "READ", 5: "PLAYED"}

#: Baileys DisconnectReason codes, so an operator sees why an instance dropped.
DISCONNECT_REASONS: dict[int, str] = {
    401: "logged out",
    403: "forbidden",
    408: "timed out",
    428: "connection closed",
    440: "replaced by another session",
    500: "bad session",
    515: "restart required",
}

#: Message wrappers whose payload sits one level down in ``<wrapper>.message``.
_WRAPPERS = frozenset(
    {
        "documentWithCaptionMessage",
        "ephemeralMessage",
        "viewOnceMessage",
        "viewOnceMessageV2",
        "viewOnceMessageV2Extension",
    }
)
#: Keys of ``data.message`` that describe the message rather than being its content.
_NON_CONTENT_KEYS = frozenset({"messageContextInfo", "base64"})
#: Signalling that Baileys surfaces as messages but that carries nothing for a person or an agent.
_SIGNALLING_TYPES = frozenset({"protocolMessage", "senderKeyDistributionMessage"})

_MEDIA_KINDS: dict[str, ContentType] = {
    "imageMessage": "image",
    "videoMessage": "video",
    "documentMessage": "document",
    "audioMessage": "audio",
    "stickerMessage": "sticker",
}
_DEFAULT_MIME: dict[str, str] = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg",
    "sticker": "image/webp",
    "document": "application/octet-stream",
}
_KNOWN_TYPES = (
    "conversation",
    "extendedTextMessage",
    *_MEDIA_KINDS,
    "locationMessage",
    "liveLocationMessage",
    "contactMessage",
    "contactsArrayMessage",
    "reactionMessage",
)

# Seconds since the epoch above this are really milliseconds (10**11 s is the year 5138).
_MS_THRESHOLD = 10**11
_PHONE_CHARS = re.compile(r"[\s+\-()]")
_DIGITS = re.compile(r"[0-9]{8,20}")
_INTEGER = re.compile(r"-?[0-9]{1,30}")


# --- small typed accessors --------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    """``value`` when it is a non-empty string, else ``None`` (optional fields are often ``null`` or ``""``)."""
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """An integer from an int, a numeric string, or a protobuf Long ``{low, high, unsigned}``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, Mapping):
        low, high = value.get("low"), value.get("high")
        if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool) and not isinstance(high, bool):
            # Long.js keeps both halves as signed 32-bit ints; reassemble the unsigned low word.
            return (high << 32) | (low & 0xFFFFFFFF)
    return None


def _require_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def timestamp_iso(value: Any) -> str:
    """ISO 8601 UTC for a Baileys ``messageTimestamp`` (int, numeric string or Long); now when unusable."""
    global _last_second
    seconds = _int(value)
    if seconds is not None and seconds > 0:
        if seconds >= _MS_THRESHOLD:
            seconds //= 1000
        last = _last_second  # one read: the pair always belongs together
        if seconds == last[0]:
            return last[1]
        try:
            text = iso(datetime.fromtimestamp(seconds, UTC))
        except (OverflowError, OSError, ValueError):
            pass
        else:
            # Webhooks arriving together carry the same second: formatting it once per second
            # took ~4% of a webhook's CPU in the hub.
            _last_second = (seconds, text)
            return text
    return iso(utcnow())


#: The last whole second formatted by :func:`timestamp_iso`, and its text.
_last_second: tuple[int, str] = (-1, "")


def file_size(value: Any) -> int | None:
    """``fileLength`` as bytes: Evolution sends a string, an int or a protobuf Long depending on version."""
    size = _int(value)
    return size if size is not None and size >= 0 else None


# --- addresses ----------------------------------------------------------------------------------------


def is_phone_jid(jid: Any) -> bool:
    return isinstance(jid, str) and jid.endswith(USER_SUFFIX) and len(jid) > len(USER_SUFFIX)


def phone_jid(primary: Any, alternate: Any) -> str | None:
    """Whichever of two JIDs is a phone JID (``@s.whatsapp.net``); else ``primary`` when it is a string.

    Baileys 7 addresses some chats by a privacy ``@lid`` and puts the phone JID in ``*Alt``; the hub
    keys chats by phone so history stays in one place whichever form a message arrives in.
    """
    for jid in (primary, alternate):
        if is_phone_jid(jid):
            return str(jid)
    return _str(primary) or _str(alternate)


def normalize_address(address: str) -> str:
    """Canonical chat id for a user-supplied recipient: a phone number -> its JID; a JID stays as is."""
    if not isinstance(address, str):
        raise ValueError(f"{address!r} is not a WhatsApp number or JID")
    stripped = address.strip()
    digits = _PHONE_CHARS.sub("", stripped)
    if _DIGITS.fullmatch(digits):
        return f"{digits}{USER_SUFFIX}"
    if "@" in stripped and not any(ch.isspace() for ch in stripped):
        local, _, _ = stripped.partition("@")
        if local and stripped.endswith(JID_SUFFIXES):
            return stripped
    raise ValueError(f"{address!r} is not a WhatsApp number or JID")


def recipient_number(chat_id: str) -> str:
    """Evolution's ``number`` for a chat: bare digits for user JIDs, the full JID for groups and others."""
    if chat_id.endswith(USER_SUFFIX):
        return chat_id[: -len(USER_SUFFIX)]
    return chat_id


# --- events -------------------------------------------------------------------------------------------


def event_name(payload: Any) -> str:
    """The payload's event in Evolution's dotted lowercase form (``MESSAGES_UPSERT`` -> ``messages.upsert``)."""
    if not isinstance(payload, dict):
        raise ValueError(f"Evolution webhook payload must be a JSON object, got {_type_name(payload)}")
    event = payload.get("event")
    if not isinstance(event, str) or not event.strip():
        raise ValueError("Evolution webhook payload has no string 'event' field")
    return event.strip().lower().replace("_", ".")


def normalize_event(tenant_id: str, payload: Any, *, instance_name: str | None = None) -> list[NormalizedEvent]:
    """Turn one Evolution webhook payload into hub events (usually exactly one).

    ``instance_name`` is used only when the envelope carries no ``instance``.
    """
    event = event_name(payload)
    if event in ("messages.upsert", "send.message"):
        instance = _str(payload.get("instance")) or instance_name
        if instance is None:
            raise ValueError(f"{event}: payload has no 'instance' name")
        owner = _str(payload.get("sender"))
        events: list[NormalizedEvent] = []
        for item in _items(payload, event):
            message = normalize_message(tenant_id, instance, item, owner_jid=owner, sent=event == "send.message")
            kind = message.content.metadata.get("message_type")
            if message.content.type == "unsupported" and kind in _SIGNALLING_TYPES:
                events.append(Ignored(reason=f"{kind} is signalling, not a message"))
            elif message.chat.id.endswith((BROADCAST_SUFFIX, NEWSLETTER_SUFFIX)):
                # Status updates (stories) and newsletters: nobody to answer, nothing to route.
                events.append(Ignored(reason="status broadcasts and newsletters are not conversations"))
            else:
                events.append(message)
        return events
    if event == "messages.update":
        return [normalize_status(item) for item in _items(payload, event)]
    if event == "connection.update":
        return [normalize_connection(_require_dict(payload.get("data"), "connection.update: 'data'"))]
    if event == "qrcode.updated":
        return [normalize_qrcode(_require_dict(payload.get("data"), "qrcode.updated: 'data'"))]
    return [Ignored(reason=f"event {payload['event']!r} is not handled")]


def _items(payload: dict[str, Any], event: str) -> list[dict[str, Any]]:
    """``data`` as a list of objects: one object normally, an array from some v1 batch deliveries."""
    if "data" not in payload:
        raise ValueError(f"{event}: payload has no 'data'")
    data = payload["data"]
    if isinstance(data, list):
        if not data:
            raise ValueError(f"{event}: 'data' is an empty array")
        return [_require_dict(item, f"{event}: 'data[{i}]'") for i, item in enumerate(data)]
    return [_require_dict(data, f"{event}: 'data'")]


def normalize_message(
    tenant_id: str, instance: str, data: Mapping[str, Any], *, owner_jid: str | None = None, sent: bool = False
) -> Message:
    """One ``messages.upsert`` / ``send.message`` data object -> :class:`Message`.

    ``owner_jid`` is the envelope ``sender`` (the instance's own number); ``sent`` marks ``send.message``,
    i.e. a message sent through Evolution by someone other than the hub.
    """
    where = "send.message" if sent else "messages.upsert"
    key = _require_dict(data.get("key"), f"{where}: 'data.key'")
    external_id = key.get("id")
    if not isinstance(external_id, str) or not external_id:
        raise ValueError(f"{where}: 'data.key.id' is missing or not a string")
    remote = key.get("remoteJid")
    if not isinstance(remote, str) or not remote:
        raise ValueError(f"{where}: 'data.key.remoteJid' is missing or not a string")
    raw_message = data.get("message")
    if raw_message is not None and not isinstance(raw_message, dict):
        raise ValueError(f"{where}: 'data.message' must be a JSON object, got {_type_name(raw_message)}")

    from_me = sent or key.get("fromMe") is True
    push_name = _str(data.get("pushName"))
    participant = phone_jid(key.get("participant"), key.get("participantAlt"))

    lid: str | None = None
    if remote.endswith(GROUP_SUFFIX):
        chat = Chat(id=remote, type="group")
        author = participant or remote
    elif remote.endswith((BROADCAST_SUFFIX, NEWSLETTER_SUFFIX)):
        chat = Chat(id=remote, type="channel")
        author = participant or remote
    else:
        chat_id = phone_jid(remote, key.get("remoteJidAlt")) or remote
        chat = Chat(id=chat_id, type="direct")
        author = chat_id
        lid = next(
            (j for j in (remote, key.get("remoteJidAlt")) if isinstance(j, str) and j.endswith(LID_SUFFIX)), None
        )

    # The envelope's ``sender`` is the instance owner, never the author; fall back to the instance name.
    sender = Sender(id=owner_jid or instance, is_self=True) if from_me else Sender(id=author, name=push_name)

    content, nested_context = extract_content(raw_message or {}, _str(data.get("messageType")))
    metadata = content.metadata
    if (device := _str(data.get("source"))) is not None:
        metadata["device"] = device
    if push_name is not None and not from_me:
        metadata["push_name"] = push_name
    if lid is not None:
        metadata["lid"] = lid

    return Message(
        id=new_id("msg"),
        source=CHANNEL,
        tenant=tenant_id,
        instance=instance,
        direction="outbound" if from_me else "inbound",
        chat=chat,
        sender=sender,
        content=content,
        timestamp=timestamp_iso(data.get("messageTimestamp")),
        external_id=external_id,
        reply_to=_str(_dict(data.get("contextInfo")).get("stanzaId")) or _str(nested_context.get("stanzaId")),
        status="sent" if sent else "received",
    )


def _content_type_key(message: Mapping[str, Any], declared: str | None) -> str | None:
    """The key of ``message`` that holds the content: ``messageType`` when it is present there, else a guess."""
    if declared is not None and declared in message:
        return declared
    for name in _KNOWN_TYPES:
        if name in message:
            return name
    return next((k for k in message if k not in _NON_CONTENT_KEYS), declared)


def extract_content(message: Mapping[str, Any], message_type: str | None) -> tuple[Content, dict[str, Any]]:
    """``data.message`` -> (:class:`Content`, the typed message's own ``contextInfo``).

    Unknown message kinds become ``unsupported`` rather than errors: WhatsApp adds kinds faster than
    anyone can map them, and the hub should still record that something arrived.
    """
    has_base64 = isinstance(message.get("base64"), str) and bool(message.get("base64"))
    kind = _content_type_key(message, message_type)
    # Report what Evolution declared unless the body contradicts it (then what was actually found).
    reported = message_type if message_type is not None and message_type in message else kind
    # Unwrap documentWithCaption / ephemeral / view-once wrappers (bounded: they nest at most twice).
    for _ in range(3):
        inner = _dict(message.get(kind)).get("message") if kind in _WRAPPERS else None
        if not isinstance(inner, dict):
            break
        message = inner
        kind = _content_type_key(message, None)

    metadata: dict[str, Any] = {"message_type": reported or "unknown"}
    if has_base64:
        metadata["has_base64"] = True
    body = message.get(kind) if kind is not None else None
    sub = _dict(body)
    context = _dict(sub.get("contextInfo"))

    if kind == "conversation":
        if not isinstance(body, str):
            raise ValueError(f"'data.message.conversation' must be a string, got {_type_name(body)}")
        return Content(type="text", text=body, metadata=metadata), context
    if kind == "extendedTextMessage":
        return Content(type="text", text=_str(sub.get("text")), metadata=metadata), context
    if kind in _MEDIA_KINDS:
        ctype = _MEDIA_KINDS[kind]
        caption = _str(sub.get("caption"))
        media = Media(
            url=_str(sub.get("url")),
            mime_type=_str(sub.get("mimetype")) or _DEFAULT_MIME[ctype],
            size=file_size(sub.get("fileLength")),
            filename=_str(sub.get("fileName")),
            caption=caption,
        )
        if ctype == "audio":
            if sub.get("ptt") is True:
                metadata["ptt"] = True
            if (seconds := _int(sub.get("seconds"))) is not None:
                metadata["seconds"] = seconds
        elif ctype in ("video", "image") and (seconds := _int(sub.get("seconds"))) is not None:
            metadata["seconds"] = seconds
        if ctype == "sticker" and sub.get("isAnimated") is True:
            metadata["animated"] = True
        return Content(type=ctype, text=caption, media=[media], metadata=metadata), context
    if kind in ("locationMessage", "liveLocationMessage"):
        for field, target in (("degreesLatitude", "latitude"), ("degreesLongitude", "longitude")):
            value = sub.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                metadata[target] = float(value)
        for field in ("name", "address", "url"):
            if (value := _str(sub.get(field))) is not None:
                metadata[field] = value
        if kind == "liveLocationMessage":
            metadata["live"] = True
        text = _str(sub.get("name")) or _str(sub.get("address")) or _str(sub.get("caption"))
        return Content(type="location", text=text, metadata=metadata), context
    if kind in ("contactMessage", "contactsArrayMessage"):
        listed: list[Any] = sub["contacts"] if isinstance(sub.get("contacts"), list) else []
        cards = [sub] if kind == "contactMessage" else [c for c in listed if isinstance(c, dict)]
        metadata["contacts"] = [{"name": _str(c.get("displayName")), "vcard": _str(c.get("vcard"))} for c in cards if c]
        return Content(type="contact", text=_str(sub.get("displayName")), metadata=metadata), context
    if kind == "reactionMessage":
        target_id = _str(_dict(sub.get("key")).get("id"))
        if target_id is not None:
            metadata["target_id"] = target_id
        emoji = _str(sub.get("text"))
        if emoji is None:
            metadata["removed"] = True  # an empty reaction text is how WhatsApp withdraws a reaction
        return Content(type="reaction", text=emoji, metadata=metadata), context
    return Content(type="unsupported", metadata=metadata), context


def map_status(value: Any) -> MessageStatus | None:
    """Evolution/Baileys message status (string or number) -> hub status; ``None`` when not worth recording."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = _NUMERIC_STATUS.get(value)
    if not isinstance(value, str):
        return None
    return STATUS_MAP.get(value.strip().upper())


def normalize_status(data: Mapping[str, Any]) -> StatusUpdate | Ignored:
    """One ``messages.update`` data object -> :class:`StatusUpdate` (or :class:`Ignored` for PENDING/unknown)."""
    key = _dict(data.get("key"))
    external_id = _str(data.get("keyId")) or _str(data.get("id")) or _str(key.get("id"))
    if external_id is None:
        raise ValueError("messages.update: neither 'data.keyId' nor 'data.id' is a string")
    raw_status = data.get("status")
    status = map_status(raw_status)
    if status is None:
        return Ignored(reason=f"message status {raw_status!r} is not tracked")
    remote = data.get("remoteJid", key.get("remoteJid"))
    alternate = data.get("remoteJidAlt", key.get("remoteJidAlt"))
    # Same chat-id rule as messages (phone JID over @lid) so the update finds the stored chat.
    chat_id = phone_jid(remote, alternate)
    return StatusUpdate(
        external_id=external_id,
        status=status,
        chat_id=chat_id,
        error="WhatsApp reported status ERROR" if status == "failed" else None,
    )


def disconnect_reason(code: Any) -> str | None:
    """``statusReason`` as text with a human label for known Baileys codes (``"401 logged out"``)."""
    number = _int(code)
    if number is None:
        return _str(code)
    label = DISCONNECT_REASONS.get(number)
    return f"{number} {label}" if label else str(number)


def normalize_connection(data: Mapping[str, Any]) -> InstanceUpdate:
    """``connection.update`` data -> :class:`InstanceUpdate` with the state, why, and the linked profile."""
    profile: dict[str, Any] = {}
    for field, target in (
        ("wuid", "wuid"),
        ("profileName", "profile_name"),
        ("profilePictureUrl", "profile_picture_url"),
    ):
        if (value := _str(data.get(field))) is not None:
            profile[target] = value
    return InstanceUpdate(
        state=_str(data.get("state")), reason=disconnect_reason(data.get("statusReason")), profile=profile
    )


def normalize_qrcode(data: Mapping[str, Any]) -> InstanceUpdate:
    """``qrcode.updated`` data -> :class:`InstanceUpdate` with a fresh QR, or ``refused`` once the QR limit is hit."""
    qrcode = data.get("qrcode")
    if isinstance(qrcode, dict):
        return InstanceUpdate(
            state="qrcode",
            qrcode_base64=_str(qrcode.get("base64")),
            qrcode_code=_str(qrcode.get("code")),
            pairing_code=_str(qrcode.get("pairingCode")),
        )
    message = _str(data.get("message"))
    if message is not None:
        return InstanceUpdate(state="refused", reason=message)
    raise ValueError("qrcode.updated: 'data' has neither a 'qrcode' object nor a 'message'")
