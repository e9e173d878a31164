"""The history answer, encoded straight from the structs, is the JSON the dict route produced."""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from litestar.serialization import encode_json

from omni_core.api.messages import _cursor_decode, _cursor_encode, history_body
from omni_core.model import Chat, ChatType, Content, ContentType, Media, Message, MessageStatus, Sender, shareable
from omni_core.store.base import HistoryPage

text = st.text(max_size=20)
optional = st.none() | text
metadata_values = st.none() | text | st.integers() | st.booleans() | st.lists(text, max_size=2)
metadata = st.dictionaries(st.sampled_from(["part", "parts", "token", "api_key", "note", "Secret"]), metadata_values)

messages = st.builds(
    Message,
    id=text,
    source=text,
    tenant=text,
    instance=text,
    direction=st.sampled_from(["inbound", "outbound"]),
    chat=st.builds(Chat, id=text, type=st.sampled_from(get_args(ChatType)), thread_id=optional, name=optional),
    sender=st.builds(Sender, id=text, name=optional, is_bot=st.booleans(), is_self=st.booleans()),
    content=st.builds(
        Content,
        type=st.sampled_from(get_args(ContentType)),
        text=optional,
        media=st.lists(st.builds(Media, url=optional, size=st.none() | st.integers(0, 10**9)), max_size=2),
        metadata=metadata,
    ),
    timestamp=text,
    external_id=optional,
    reply_to=optional,
    status=st.sampled_from(get_args(MessageStatus)),
)


def as_dicts(page: HistoryPage) -> bytes:
    """The earlier answer: builtins first, then Litestar's JSON encoder."""
    return encode_json(
        {
            "messages": msgspec.to_builtins([shareable(m) for m in page.messages]),
            "next_cursor": _cursor_encode(page.next_before_id) if page.next_before_id else None,
        }
    )


@given(st.lists(messages, max_size=5), st.none() | st.just("msg_01JD0000000000000000000000"))
def test_history_body_is_the_same_json(page_messages: list[Message], before: str | None) -> None:
    page = HistoryPage(messages=page_messages, next_before_id=before)
    body = history_body(page)
    assert body == as_dicts(page)
    decoded: dict[str, Any] = json.loads(body)
    assert len(decoded["messages"]) == len(page_messages)
    if before is None:
        assert decoded["next_cursor"] is None
    else:
        assert _cursor_decode(decoded["next_cursor"]) == before
    # Secret-named metadata never leaves the hub in clear.
    for shown, original in zip(decoded["messages"], page_messages, strict=True):
        for key, value in original.content.metadata.items():
            if key in ("token", "api_key", "Secret") and value not in (None, "") and not isinstance(value, list):
                assert shown["content"]["metadata"][key] != value
