"""Building outbound messages: splitting long texts into ordered parts. Pure functions."""

from __future__ import annotations

import msgspec

from omni_core.ids import new_id
from omni_core.model import Content, Message
from omni_core.text import split_for_sending, text_limit


def split_enabled(instance_config: dict[str, object], override: bool | None) -> bool:
    """Per-message override first, then the instance's ``split_messages`` switch (default on)."""
    if override is not None:
        return override
    value = instance_config.get("split_messages", True)
    return value if isinstance(value, bool) else str(value).lower() not in ("0", "false", "no", "off")


def split_outbound(message: Message, limit: int | None = None) -> list[Message]:
    """``message`` as one or more messages, each with a text within the channel's limit, in order.

    The first part keeps the message's id, media and reply; later parts are text only. Each
    part is its own message (own status, own platform id), delivered in order in the chat's lane.
    """
    text = message.content.text
    size = limit or text_limit(message.source)
    if not text or len(text) <= size:
        return [message]
    chunks = split_for_sending(text, size)
    if len(chunks) <= 1:
        return [message]
    parts = []
    for index, chunk in enumerate(chunks):
        metadata = {**message.content.metadata, "part": index + 1, "parts": len(chunks)}
        if index == 0:
            content = msgspec.structs.replace(message.content, text=chunk, metadata=metadata)
            parts.append(msgspec.structs.replace(message, content=content))
        else:
            content = Content(type="text", text=chunk, metadata=metadata)
            parts.append(
                msgspec.structs.replace(message, id=new_id("msg"), content=content, reply_to=None, external_id=None)
            )
    return parts
