"""Slack Events API payloads -> unified hub events. Pure functions: no I/O, no clock except as a fallback.

One ``event_callback`` envelope carries one event. Messages are identified by ``(channel, ts)``, which
is what the hub stores as ``external_id`` (``"C0123:1761057130.001400"``): a retried delivery and the
``app_mention`` + ``message`` pair Slack sends for one mention both map to the same message, and the
edits/deletions Slack reports by ``ts`` find the original.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from omni_core import (
    Chat,
    Content,
    Ignored,
    Media,
    Message,
    MessageChange,
    NormalizedEvent,
    Sender,
    iso,
    new_id,
    utcnow,
)
from omni_core.model import ChatType, ContentType

CHANNEL = "slack"

#: ``message`` subtypes that are something a person (or bot) said; every other subtype is housekeeping
#: (channel_join, channel_topic, pinned_item, message_replied ...) and is ignored.
MESSAGE_SUBTYPES = frozenset({"file_share", "thread_broadcast", "me_message", "bot_message"})
#: Files Slack no longer serves (deleted, or beyond a free workspace's history limit).
_UNAVAILABLE_FILE_MODES = frozenset({"tombstone", "hidden_by_limit"})
#: Channel, DM, private channel / group DM and user ids: what ``chat.postMessage`` accepts as ``channel``.
_ADDRESS = re.compile(r"^[CDGUW][A-Z0-9]{2,}$")


class SelfIds(NamedTuple):
    """How the app recognises its own posts: its bot user, its bot id, its app id."""

    bot_user_id: str | None = None
    bot_id: str | None = None
    app_id: str | None = None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _require_str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"Slack {where} has no string {key!r}")
    return value


def external_id(channel: str, ts: str) -> str:
    """The hub's id for a Slack message: its channel and its ``ts`` (unique within the channel)."""
    return f"{channel}:{ts}"


def ts_iso(ts: Any) -> str:
    """A Slack ``ts`` (``"1761057130.001400"``, seconds since the epoch) as the hub's ISO 8601; now when unusable."""
    try:
        seconds = float(ts)
    except (TypeError, ValueError):
        return iso(utcnow())
    try:
        return iso(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):
        return iso(utcnow())


def unescape(text: str) -> str:
    """Slack escapes exactly ``&``, ``<`` and ``>`` in message text; undo that (``&amp;`` last)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def chat_type(channel_type: str | None, channel_id: str) -> ChatType:
    """``direct`` for a DM, ``group`` for a group DM, ``channel`` for public and private channels.

    ``app_mention`` events carry no ``channel_type``; a ``D`` channel id is a DM then.
    """
    if channel_type in ("im", "app_home"):
        return "direct"
    if channel_type == "mpim":
        return "group"
    if channel_type is None and channel_id.startswith("D"):
        return "direct"
    return "channel"


def self_ids(config: Mapping[str, Any], payload: Mapping[str, Any]) -> SelfIds:
    """The app's own ids: from the instance config (filled from ``auth.test``), else from the envelope."""
    bot_user_id = _str(config.get("bot_user_id"))
    if bot_user_id is None:
        for auth in payload.get("authorizations") or []:
            if isinstance(auth, dict) and auth.get("is_bot") and _str(auth.get("user_id")):
                bot_user_id = auth["user_id"]
                break
    return SelfIds(
        bot_user_id=bot_user_id,
        bot_id=_str(config.get("bot_id")),
        app_id=_str(config.get("app_id")) or _str(payload.get("api_app_id")),
    )


def normalize_address(address: str) -> str:
    """A Slack channel, DM or user id as given to ``POST /messages/send`` (``#`` and spaces trimmed)."""
    value = address.strip().lstrip("#").strip()
    if not _ADDRESS.match(value):
        raise ValueError(
            f"{address!r} is not a Slack channel or user id (expected an id such as C0123ABCD, D0123ABCD or U0123ABCD)"
        )
    return value


def normalize_event(
    tenant_id: str,
    payload: Any,
    *,
    instance_name: str | None,
    config: Mapping[str, Any] | None = None,
) -> list[NormalizedEvent]:
    """Turn one Events API request body into hub events; raise ``ValueError`` when it is unusable."""
    if not isinstance(payload, dict):
        raise ValueError(f"Slack payload must be a JSON object, got {type(payload).__name__}")
    kind = payload.get("type")
    if kind == "url_verification":
        return [Ignored(reason="url_verification is answered by the webhook, not stored")]
    if kind != "event_callback":
        return [Ignored(reason=f"Slack payload type {kind!r} is not handled")]
    event = payload.get("event")
    if not isinstance(event, dict):
        raise ValueError("Slack event_callback has no 'event' object")
    if instance_name is None:
        raise ValueError("Slack events must be ingested for the instance they arrived for")
    event_type = event.get("type")
    if event_type == "message":
        subtype = _str(event.get("subtype"))
        if subtype == "message_changed":
            return [normalize_edit(event)]
        if subtype == "message_deleted":
            return [normalize_deletion(event)]
        if subtype is not None and subtype not in MESSAGE_SUBTYPES:
            return [Ignored(reason=f"Slack message subtype {subtype!r} is not a message anyone said")]
        if event.get("hidden") is True:
            return [Ignored(reason="hidden Slack message event")]
    elif event_type != "app_mention":
        return [Ignored(reason=f"Slack event {event_type!r} is not handled")]
    ids = self_ids(config or {}, payload)
    return [normalize_message(tenant_id, instance_name, payload, event, ids)]


def normalize_message(
    tenant_id: str, instance_name: str, payload: Mapping[str, Any], event: Mapping[str, Any], ids: SelfIds
) -> Message:
    """A ``message`` (any conversation type, thread replies, file shares, bots) or an ``app_mention``."""
    where = f"{event.get('type')} event"
    channel = _require_str(event, "channel", where)
    ts = _require_str(event, "ts", where)
    thread_ts = _str(event.get("thread_ts"))
    subtype = _str(event.get("subtype"))
    user = _str(event.get("user"))
    bot_id = _str(event.get("bot_id"))
    bot_profile = _dict(event.get("bot_profile"))
    posting_app = _str(event.get("app_id")) or _str(bot_profile.get("app_id"))
    own = bool(
        (user is not None and user == ids.bot_user_id)
        or (bot_id is not None and bot_id == ids.bot_id)
        or (bot_id is not None and posting_app is not None and posting_app == ids.app_id)
    )
    is_bot = own or bot_id is not None or subtype == "bot_message"
    sender = Sender(
        id=user or bot_id or "unknown",
        name=_sender_name(event, bot_profile),
        is_bot=is_bot,
        is_self=own,
    )
    text = _str(event.get("text"))
    content = _content(unescape(text) if text is not None else None, event.get("files"))
    meta = content.metadata
    meta["event_type"] = event.get("type")
    for key, value in (
        ("event_id", payload.get("event_id")),
        ("team_id", payload.get("team_id")),
        ("channel_type", event.get("channel_type")),
        ("subtype", subtype),
        ("client_msg_id", event.get("client_msg_id")),
        ("bot_id", bot_id),
    ):
        if isinstance(value, str) and value:
            meta[key] = value
    if ids.bot_user_id is not None and text is not None and f"<@{ids.bot_user_id}>" in text:
        meta["mentions_bot"] = True
    return Message(
        id=new_id("msg"),
        source=CHANNEL,
        tenant=tenant_id,
        instance=instance_name,
        # The app's own posts come back as events: they are our outbound messages (the core folds
        # them into the delivered message with the same external id).
        direction="outbound" if own else "inbound",
        chat=Chat(id=channel, type=chat_type(_str(event.get("channel_type")), channel), thread_id=thread_ts),
        sender=sender,
        content=content,
        timestamp=ts_iso(ts),
        external_id=external_id(channel, ts),
        reply_to=external_id(channel, thread_ts) if thread_ts is not None and thread_ts != ts else None,
        status="sent" if own else "received",
    )


def _sender_name(event: Mapping[str, Any], bot_profile: Mapping[str, Any]) -> str | None:
    profile = _dict(event.get("user_profile"))
    return (
        _str(profile.get("display_name"))
        or _str(profile.get("real_name"))
        or _str(profile.get("name"))
        or _str(event.get("username"))
        or _str(bot_profile.get("name"))
    )


def _content(text: str | None, files: Any) -> Content:
    media: list[Media] = []
    file_ids: list[str] = []
    for item in files if isinstance(files, list) else []:
        found = file_media(item)
        if found is not None:
            media.append(found)
            if _str(item.get("id")):
                file_ids.append(item["id"])
    metadata: dict[str, Any] = {"file_ids": file_ids} if file_ids else {}
    if media:
        return Content(type=media_content_type(media[0].mime_type), text=text, media=media, metadata=metadata)
    if text is None:
        return Content(type="unsupported", metadata=metadata)
    return Content(type="text", text=text, metadata=metadata)


def media_content_type(mime_type: str) -> ContentType:
    major = mime_type.split("/", 1)[0]
    if major == "image":
        return "image"
    if major == "audio":
        return "audio"
    if major == "video":
        return "video"
    return "document"


def file_media(item: Any) -> Media | None:
    """A shared Slack file as media: its private URL (fetched with the bot token), type, name, size."""
    if not isinstance(item, dict) or item.get("mode") in _UNAVAILABLE_FILE_MODES:
        return None
    url = _str(item.get("url_private")) or _str(item.get("url_private_download")) or _str(item.get("permalink"))
    if url is None:
        return None
    size = item.get("size")
    name = _str(item.get("name"))
    title = _str(item.get("title"))
    return Media(
        url=url,
        mime_type=_str(item.get("mimetype")) or "application/octet-stream",
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        filename=name,
        caption=title if title is not None and title != name else None,
    )


def normalize_edit(event: Mapping[str, Any]) -> MessageChange | Ignored:
    """``message_changed``: the new text, recorded on the original (``message.ts``), never a new turn."""
    channel = _require_str(event, "channel", "message_changed event")
    message = event.get("message")
    if not isinstance(message, dict):
        raise ValueError("Slack message_changed event has no 'message' object")
    ts = _require_str(message, "ts", "message_changed message")
    previous = _dict(event.get("previous_message"))
    text = _str(message.get("text"))
    if "edited" not in message and previous.get("text") == message.get("text"):
        # Slack also reports link unfurls and attachment updates as message_changed.
        return Ignored(reason="message_changed without a text edit (link unfurl or attachment update)")
    edited = _dict(message.get("edited"))
    return MessageChange(
        external_id=external_id(channel, ts),
        kind="edited",
        text=unescape(text) if text is not None else None,
        at=ts_iso(edited.get("ts") or event.get("event_ts") or event.get("ts")),
    )


def normalize_deletion(event: Mapping[str, Any]) -> MessageChange:
    """``message_deleted``: marks the original (``deleted_ts``) deleted."""
    channel = _require_str(event, "channel", "message_deleted event")
    deleted_ts = _str(event.get("deleted_ts")) or _str(_dict(event.get("previous_message")).get("ts"))
    if deleted_ts is None:
        raise ValueError("Slack message_deleted event has no 'deleted_ts'")
    return MessageChange(
        external_id=external_id(channel, deleted_ts),
        kind="deleted",
        at=ts_iso(event.get("event_ts") or event.get("ts")),
    )
