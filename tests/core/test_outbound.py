"""Outbound splitting: ordered parts within the channel limit, first part keeps id, media and reply."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from omni_core.model import Chat, Content, Media, Message, Sender
from omni_core.outbound import split_enabled, split_outbound


def outbound(text: str, source: str = "discord", media: list[Media] | None = None) -> Message:
    return Message(
        id="msg_1",
        source=source,
        tenant="t",
        instance="i",
        direction="outbound",
        chat=Chat(id="c"),
        sender=Sender(id="i", is_self=True),
        content=Content(type="image" if media else "text", text=text, media=media or []),
        timestamp="2026-01-01T00:00:00.000Z",
        reply_to="ext-1",
        status="queued",
    )


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=15), max_size=800))
def test_parts_fit_keep_order_and_every_word(words: list[str]) -> None:
    text = " ".join(words)
    parts = split_outbound(outbound(text), 2000)
    assert all(len(p.content.text or "") <= 2000 for p in parts)
    assert " ".join(p.content.text or "" for p in parts).split() == text.split()
    assert parts[0].id == "msg_1" and len({p.id for p in parts}) == len(parts)


def test_first_part_keeps_media_and_reply() -> None:
    media = [Media(url="https://x/y.png", mime_type="image/png")]
    parts = split_outbound(outbound("palavra " * 600, media=media), 2000)
    assert len(parts) == 3
    assert parts[0].content.media == media and parts[0].reply_to == "ext-1"
    assert all(p.content.media == [] and p.reply_to is None for p in parts[1:])
    assert [p.content.metadata["part"] for p in parts] == [1, 2, 3]


def test_short_text_is_untouched_and_switches() -> None:
    message = outbound("oi")
    assert split_outbound(message) == [message]
    assert split_enabled({}, None) is True
    assert split_enabled({"split_messages": False}, None) is False
    assert split_enabled({"split_messages": False}, True) is True
    assert split_enabled({"split_messages": "off"}, None) is False
