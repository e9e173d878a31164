"""Discord events -> unified hub events. Pure functions: no I/O, no discord.py import.

The plugin hands :meth:`Hub.ingest` one of its own small envelopes around Discord's raw JSON:

* ``{"t": "MESSAGE_CREATE", "d": <gateway message>, "bot_user_id": "...", "channel": {...}}`` from the
  gateway client. ``channel`` is what discord.py's cache knew about the message's channel at that
  moment (``parent_id``/``thread``/``type``/``name``), because a raw ``MESSAGE_CREATE`` does not say
  which channel a thread belongs to.
* ``{"t": "INTERACTION_CREATE", "d": <interaction>}`` from the interactions endpoint (slash commands).

Anything structurally unusable raises :class:`ValueError` naming the problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from omni_core import (
    Chat,
    Content,
    Ignored,
    Media,
    Message,
    NormalizedEvent,
    Sender,
    iso,
    new_id,
    utcnow,
)
from omni_core.model import ChatType, ContentType

CHANNEL = "discord"

#: Discord's epoch (2015-01-01T00:00:00Z) in milliseconds: snowflake ``id >> 22`` counts from here.
DISCORD_EPOCH_MS = 1_420_070_400_000

# Message types that carry something a person wrote (DEFAULT, REPLY, CHAT_INPUT_COMMAND's echo is a bot's).
MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_REPLY = 19
USER_MESSAGE_TYPES = frozenset({MESSAGE_TYPE_DEFAULT, MESSAGE_TYPE_REPLY})

# Channel types (https://discord.com/developers/docs/resources/channel#channel-object-channel-types).
CHANNEL_DM = 1
CHANNEL_GROUP_DM = 3
THREAD_TYPES = frozenset({10, 11, 12})  # announcement, public, private thread

# Interaction types and application command types.
INTERACTION_PING = 1
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5
COMMAND_CHAT_INPUT = 1
COMMAND_USER = 2
COMMAND_MESSAGE = 3
OPTION_SUB_COMMAND = 1
OPTION_SUB_COMMAND_GROUP = 2
OPTION_STRING = 3

SNOWFLAKE = re.compile(r"[0-9]{15,21}")
_MENTION_FORMS = ("<@{}>", "<@!{}>")


# --- small typed accessors --------------------------------------------------------------------------


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def snowflake(value: Any) -> str | None:
    """A Discord id as a string (Discord sends strings; ints are accepted from hand-written configs)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and SNOWFLAKE.fullmatch(value.strip()):
        return value.strip()
    return None


def _require_snowflake(value: Any, where: str) -> str:
    found = snowflake(value)
    if found is None:
        raise ValueError(f"{where} must be a Discord id (a snowflake string), got {value!r}")
    return found


def snowflake_time(value: str) -> datetime:
    """When a snowflake was made (its top 42 bits are milliseconds since the Discord epoch)."""
    return datetime.fromtimestamp(((int(value) >> 22) + DISCORD_EPOCH_MS) / 1000, UTC)


def timestamp_iso(value: Any, fallback_id: str | None = None) -> str:
    """ISO 8601 UTC for Discord's ISO timestamp; else the snowflake's time; else now."""
    if isinstance(value, str) and value:
        try:
            return iso(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            pass
    if fallback_id is not None:
        try:
            return iso(snowflake_time(fallback_id))
        except (ValueError, OverflowError, OSError):
            pass
    return iso(utcnow())


def display_name(user: Mapping[str, Any], member: Mapping[str, Any] | None = None) -> str | None:
    """Guild nickname, else global display name, else the username."""
    return (_str(member.get("nick")) if member else None) or _str(user.get("global_name")) or _str(user.get("username"))


def strip_mentions(text: str, user_id: str | None) -> str:
    """``text`` without mentions of ``user_id`` (``<@id>`` / ``<@!id>``), edges trimmed."""
    if not user_id:
        return text.strip()
    for form in _MENTION_FORMS:
        text = text.replace(form.format(user_id), " ")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def mentions_user(data: Mapping[str, Any], user_id: str | None) -> bool:
    """Whether a gateway message mentions ``user_id`` directly (``@everyone`` does not count)."""
    if not user_id:
        return False
    return any(_dict(m).get("id") == user_id for m in _list(data.get("mentions")))


# --- media -------------------------------------------------------------------------------------------

_MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "wav": "audio/wav",
    "pdf": "application/pdf",
    "txt": "text/plain",
}


def guess_mime(filename: str | None) -> str:
    if filename and "." in filename:
        return _MIME_BY_EXTENSION.get(filename.rsplit(".", 1)[1].lower(), "application/octet-stream")
    return "application/octet-stream"


def content_type_for(media: Sequence[Media]) -> ContentType:
    major = media[0].mime_type.split("/", 1)[0]
    kinds: dict[str, ContentType] = {"image": "image", "audio": "audio", "video": "video"}
    return kinds.get(major, "document")


def attachments_to_media(attachments: Iterable[Any]) -> list[Media]:
    out: list[Media] = []
    for raw in attachments:
        item = _dict(raw)
        url = _str(item.get("url")) or _str(item.get("proxy_url"))
        if url is None:
            continue
        filename = _str(item.get("filename"))
        size = _int(item.get("size"))
        out.append(
            Media(
                url=url,
                mime_type=_str(item.get("content_type")) or guess_mime(filename),
                size=size if size is not None and size >= 0 else None,
                filename=filename,
                caption=_str(item.get("description")),
            )
        )
    return out


# --- gateway messages --------------------------------------------------------------------------------


def chat_for(
    channel_id: str, guild_id: str | None, channel_type: int | None, parent_id: str | None, thread: bool, name: Any
) -> Chat:
    """The hub chat of a Discord channel: threads keep their own id in ``thread_id`` under their parent."""
    kind: ChatType
    if guild_id is not None:
        kind = "channel"
    elif channel_type == CHANNEL_GROUP_DM:
        kind = "group"
    else:
        kind = "direct"
    is_thread = thread or channel_type in THREAD_TYPES
    if is_thread:
        return Chat(id=parent_id or channel_id, type=kind, thread_id=channel_id, name=_str(name))
    return Chat(id=channel_id, type=kind, name=_str(name))


def normalize_message_create(tenant_id: str, instance_name: str, payload: Mapping[str, Any]) -> list[NormalizedEvent]:
    data = payload.get("d")
    if not isinstance(data, dict):
        raise ValueError("MESSAGE_CREATE envelope has no object 'd'")
    message_id = _require_snowflake(data.get("id"), "message id")
    channel_id = _require_snowflake(data.get("channel_id"), "message channel_id")
    author = data.get("author")
    if not isinstance(author, dict):
        raise ValueError("MESSAGE_CREATE message has no object 'author'")
    author_id = _require_snowflake(author.get("id"), "message author.id")
    message_type = _int(data.get("type"))
    if message_type is None:
        message_type = MESSAGE_TYPE_DEFAULT
    if message_type not in USER_MESSAGE_TYPES:
        return [Ignored(reason=f"discord system message (type {message_type})")]

    bot_user_id = snowflake(payload.get("bot_user_id"))
    context = _dict(payload.get("channel"))
    guild_id = snowflake(data.get("guild_id"))
    channel_type = _int(context.get("type"))
    if channel_type is None:
        channel_type = _int(data.get("channel_type"))
    chat = chat_for(
        channel_id,
        guild_id,
        channel_type,
        snowflake(context.get("parent_id")),
        bool(context.get("thread")),
        context.get("name"),
    )

    raw_content = data.get("content")
    raw_text = raw_content if isinstance(raw_content, str) else ""
    text = strip_mentions(raw_text, bot_user_id)
    media = attachments_to_media(_list(data.get("attachments")))
    stickers = [_dict(s) for s in _list(data.get("sticker_items"))]
    content_type: ContentType
    if media:
        content_type = content_type_for(media)
    elif text:
        content_type = "text"
    elif stickers:
        content_type = "sticker"
    else:
        return [Ignored(reason="discord message without text or attachments (is the MESSAGE_CONTENT intent on?)")]

    webhook_id = snowflake(data.get("webhook_id"))
    metadata: dict[str, Any] = {"channel_id": channel_id, "message_type": message_type}
    if guild_id is not None:
        metadata["guild_id"] = guild_id
    if webhook_id is not None:
        metadata["webhook_id"] = webhook_id
    if bot_user_id is not None:
        metadata["mentions_bot"] = mentions_user(data, bot_user_id)
    if stickers:
        metadata["stickers"] = [{"id": s.get("id"), "name": s.get("name")} for s in stickers]
    if _str(payload.get("trigger")):
        metadata["trigger"] = payload["trigger"]
    if _str(author.get("username")):
        metadata["author_username"] = author["username"]

    reference = _dict(data.get("message_reference"))
    member = _dict(data.get("member"))
    return [
        Message(
            id=new_id("msg"),
            source=CHANNEL,
            tenant=tenant_id,
            instance=instance_name,
            direction="inbound",
            chat=chat,
            sender=Sender(
                id=author_id,
                name=display_name(author, member),
                # Other bots and webhooks are stored but never routed to an agent (no bot loops).
                is_bot=bool(author.get("bot")) or bool(author.get("system")) or webhook_id is not None,
                is_self=bot_user_id is not None and author_id == bot_user_id,
            ),
            content=Content(type=content_type, text=text or None, media=media, metadata=metadata),
            timestamp=timestamp_iso(data.get("timestamp"), message_id),
            external_id=message_id,
            reply_to=snowflake(reference.get("message_id")) if message_type == MESSAGE_TYPE_REPLY else None,
        )
    ]


# --- interactions ------------------------------------------------------------------------------------


def flatten_options(options: Any) -> tuple[list[str], dict[str, Any]]:
    """(sub-command path, {option name: value}) of an application command's option tree."""
    path: list[str] = []
    values: dict[str, Any] = {}
    current = _list(options)
    while current:
        nested: list[Any] = []
        for raw in current:
            option = _dict(raw)
            name = _str(option.get("name"))
            if name is None:
                continue
            if option.get("type") in (OPTION_SUB_COMMAND, OPTION_SUB_COMMAND_GROUP):
                path.append(name)
                nested = _list(option.get("options"))
            elif "value" in option:
                values[name] = option["value"]
        current = nested
    return path, values


def command_text(name: str, path: Sequence[str], values: Mapping[str, Any]) -> str:
    """What the person asked: the value of a lone string option (``/ask question:...`` -> the question),
    else the command line as typed (``/order number:4521``)."""
    strings = [v for v in values.values() if isinstance(v, str) and v.strip()]
    if len(values) == 1 and len(strings) == 1:
        return strings[0].strip()
    words = ["/" + " ".join([name, *path])]
    words.extend(f"{k}:{v}" for k, v in values.items())
    return " ".join(words)


def interaction_user(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user, member) of an interaction: ``member.user`` in guilds, ``user`` in DMs."""
    member = _dict(data.get("member"))
    user = _dict(member.get("user")) or _dict(data.get("user"))
    return user, member


def normalize_interaction(tenant_id: str, instance_name: str, payload: Mapping[str, Any]) -> list[NormalizedEvent]:
    data = payload.get("d")
    if not isinstance(data, dict):
        raise ValueError("INTERACTION_CREATE envelope has no object 'd'")
    kind = _int(data.get("type"))
    if kind != INTERACTION_APPLICATION_COMMAND:
        return [Ignored(reason=f"discord interaction type {kind} is not a command")]
    interaction_id = _require_snowflake(data.get("id"), "interaction id")
    application_id = _require_snowflake(data.get("application_id"), "interaction application_id")
    token = _str(data.get("token"))
    if token is None:
        raise ValueError("interaction has no token")
    command = _dict(data.get("data"))
    name = _str(command.get("name"))
    if name is None:
        raise ValueError("application command interaction has no data.name")
    channel = _dict(data.get("channel"))
    channel_id = snowflake(data.get("channel_id")) or snowflake(channel.get("id"))
    if channel_id is None:
        raise ValueError("interaction has no channel_id")
    user, member = interaction_user(data)
    user_id = _require_snowflake(user.get("id"), "interaction user id")
    guild_id = snowflake(data.get("guild_id"))
    channel_type = _int(channel.get("type"))

    command_type = _int(command.get("type")) or COMMAND_CHAT_INPUT
    path, values = flatten_options(command.get("options"))
    metadata: dict[str, Any] = {
        "interaction_id": interaction_id,
        "interaction_token": token,
        "application_id": application_id,
        "command": name,
        "channel_id": channel_id,
    }
    if path:
        metadata["subcommand"] = path
    if values:
        metadata["options"] = values
    if guild_id is not None:
        metadata["guild_id"] = guild_id
    if _str(data.get("locale")):
        metadata["locale"] = data["locale"]

    text: str
    target = snowflake(command.get("target_id"))
    resolved = _dict(command.get("resolved"))
    if command_type == COMMAND_MESSAGE and target is not None:
        message = _dict(_dict(resolved.get("messages")).get(target))
        metadata["target_message_id"] = target
        text = _str(message.get("content")) or f"/{name}"
    elif command_type == COMMAND_USER and target is not None:
        metadata["target_user_id"] = target
        text = f"/{name} <@{target}>"
    else:
        text = command_text(name, path, values)

    return [
        Message(
            id=new_id("msg"),
            source=CHANNEL,
            tenant=tenant_id,
            instance=instance_name,
            direction="inbound",
            chat=chat_for(
                channel_id,
                guild_id,
                channel_type,
                snowflake(channel.get("parent_id")),
                False,
                channel.get("name"),
            ),
            sender=Sender(id=user_id, name=display_name(user, member), is_bot=bool(user.get("bot"))),
            content=Content(type="text", text=text, metadata=metadata),
            timestamp=timestamp_iso(None, interaction_id),
            external_id=interaction_id,
        )
    ]


def normalize_event(tenant_id: str, instance_name: str | None, payload: Any) -> list[NormalizedEvent]:
    """One plugin envelope -> unified events (see the module docstring for the envelopes)."""
    if not isinstance(payload, dict):
        raise ValueError("discord event must be a JSON object")
    kind = payload.get("t")
    if instance_name is None:
        raise ValueError("discord events need the instance they arrived on")
    if kind == "MESSAGE_CREATE":
        return normalize_message_create(tenant_id, instance_name, payload)
    if kind == "INTERACTION_CREATE":
        return normalize_interaction(tenant_id, instance_name, payload)
    return [Ignored(reason=f"discord event {kind!r} is not handled")]


# --- which gateway messages the hub takes ------------------------------------------------------------


def wanted(
    data: Mapping[str, Any], bot_user_id: str | None, listen_channels: Iterable[str], parent_id: str | None
) -> str | None:
    """Why a gateway ``MESSAGE_CREATE`` concerns the hub (``"dm"``, ``"listen_channel"``, ``"mention"``), or None.

    Our own messages are never taken: the hub already stored them as outbound.
    """
    author_id = _dict(data.get("author")).get("id")
    if bot_user_id is not None and author_id == bot_user_id:
        return None
    if data.get("guild_id") is None:
        return "dm"
    listen = set(listen_channels)
    if data.get("channel_id") in listen or (parent_id is not None and parent_id in listen):
        return "listen_channel"
    if mentions_user(data, bot_user_id):
        return "mention"
    return None


# --- addresses ---------------------------------------------------------------------------------------

_CHANNEL_MENTION = re.compile(r"<#([0-9]{15,21})>")
_USER_MENTION = re.compile(r"<@!?([0-9]{15,21})>")
USER_PREFIX = "user:"


def normalize_address(address: str) -> str:
    """Chat id for ``POST /messages/send``: a channel (or thread) id, ``<#id>``, or ``user:<id>`` / ``<@id>`` for
    a DM with a user (the DM channel is opened when sending)."""
    value = address.strip()
    if SNOWFLAKE.fullmatch(value):
        return value
    if found := _CHANNEL_MENTION.fullmatch(value):
        return found.group(1)
    if found := _USER_MENTION.fullmatch(value):
        return USER_PREFIX + found.group(1)
    if value.lower().startswith(USER_PREFIX) and SNOWFLAKE.fullmatch(value[len(USER_PREFIX) :].strip()):
        return USER_PREFIX + value[len(USER_PREFIX) :].strip()
    raise ValueError(f"{address!r} is not a Discord channel id, <#channel>, user:<id> or <@user>")
