"""Unit tests for the pure Hive wire functions (omni_hive.wire): no server, no I/O."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from omni_hive.wire import (
    NO_URL_MESSAGE,
    HiveTarget,
    build_body,
    build_headers,
    encode_body,
    error_for_status,
    parse_reply,
    parse_reply_json,
    reply_from_response,
    resolve_target,
)

from omni_core import (
    AgentReply,
    Chat,
    Content,
    Media,
    Message,
    OutboundPart,
    PermanentError,
    RouteContext,
    Sender,
    Tenant,
    TransientError,
)


def make_message(
    text: str | None = "hello", msg_id: str = "msg_01TEST", chat_id: str = "5511@s.whatsapp.net"
) -> Message:
    return Message(
        id=msg_id,
        source="whatsapp",
        tenant="ten_a",
        instance="acme-sales",
        direction="inbound",
        chat=Chat(id=chat_id),
        sender=Sender(id=chat_id, name="Ana"),
        content=Content(type="text", text=text),
        timestamp="2025-10-21T14:30:00.000Z",
        external_id="3EB0AAAA",
    )


def resolve(config: dict[str, Any], **settings: Any) -> HiveTarget | None:
    kw: dict[str, Any] = {"enabled": False, "api_url": None, "api_key": None, "timeout": 30.0}
    kw.update(settings)
    return resolve_target(config, **kw)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- target resolution -----------------------------------------------------------------------------
def test_disabled_by_default() -> None:
    assert resolve({}) is None


def test_enabled_by_settings() -> None:
    target = resolve({}, enabled=True, api_url="http://hive:8000/", api_key="k", timeout=7.5)
    assert target is not None
    assert target.process_url == "http://hive:8000/process"
    assert (target.api_key, target.timeout, target.priority, target.preferred_agent) == ("k", 7.5, "normal", None)


@pytest.mark.parametrize("value", [False, "false", "0", "no", ""])
def test_tenant_can_disable(value: Any) -> None:
    assert resolve({"hive": {"enabled": value}}, enabled=True, api_url="http://hive") is None


@pytest.mark.parametrize("value", [True, "true", "1", "yes"])
def test_tenant_can_enable(value: Any) -> None:
    assert resolve({"hive": {"enabled": value}}, enabled=False, api_url="http://hive") is not None


def test_settings_apply_when_tenant_section_has_no_enabled_key() -> None:
    assert resolve({"hive": {"api_url": "http://t"}}, enabled=False) is None
    target = resolve({"hive": {"api_url": "http://t"}}, enabled=True, api_url="http://s")
    assert target is not None and target.api_url == "http://t"


def test_tenant_overrides_url_key_and_hints() -> None:
    config = {
        "hive": {
            "enabled": True,
            "api_url": "http://tenant-hive",
            "api_key": "tenant-key",
            "preferred_agent": "sales",
            "priority": "high",
        }
    }
    target = resolve(config, api_url="http://global", api_key="global-key")
    assert target == HiveTarget(
        api_url="http://tenant-hive", api_key="tenant-key", timeout=30.0, preferred_agent="sales", priority="high"
    )


def test_empty_tenant_values_fall_back_to_settings() -> None:
    target = resolve({"hive": {"enabled": True, "api_url": "", "api_key": None}}, api_url="http://g", api_key="gk")
    assert target is not None and (target.api_url, target.api_key) == ("http://g", "gk")


def test_non_dict_hive_section_is_ignored() -> None:
    assert resolve({"hive": "yes"}, enabled=False) is None


def test_enabled_without_url_is_permanent() -> None:
    target = resolve({"hive": {"enabled": True}})
    assert target is not None and target.api_url is None
    with pytest.raises(PermanentError, match=NO_URL_MESSAGE):
        _ = target.process_url


# --- request -----------------------------------------------------------------------------------------
def test_headers_with_and_without_key() -> None:
    msg = make_message(msg_id="msg_42")
    with_key = build_headers(HiveTarget(api_url="http://h", api_key="s3cret", timeout=1), msg)
    assert with_key == {
        "Content-Type": "application/json",
        "Idempotency-Key": "msg_42",
        "Authorization": "Bearer s3cret",
    }
    without = build_headers(HiveTarget(api_url="http://h", api_key=None, timeout=1), msg)
    assert "Authorization" not in without and without["Idempotency-Key"] == "msg_42"


def test_body_shape() -> None:
    msg = make_message("oi")
    older = make_message("earlier", msg_id="msg_00")
    tenant = Tenant(id="ten_a", name="Acme", config={"hive": {"api_key": "x"}})
    context = RouteContext(session_id="ses_1", tenant={"id": "ten_a", "name": "Acme"}, history=[older])
    target = HiveTarget(api_url="http://h", api_key="x", timeout=1, preferred_agent="sales")
    body = build_body(target, tenant, msg, context)
    assert body == {
        "tenant": "ten_a",
        "message": msgspec.to_builtins(msg),
        "context": {
            "tenant": {"id": "ten_a", "name": "Acme"},
            "history": [msgspec.to_builtins(older)],
            "session_id": "ses_1",
        },
        "routing_hints": {"preferred_agent": "sales", "priority": "normal", "session_id": "ses_1"},
    }
    assert body["message"]["content"]["text"] == "oi"
    decoded = json.loads(encode_body(body))
    assert decoded == body
    assert msgspec.convert(decoded["message"], Message) == msg


# --- replies ------------------------------------------------------------------------------------------
def test_reply_string() -> None:
    assert parse_reply(200, b'{"reply": "hi there"}') == AgentReply(
        backend="hive", parts=[OutboundPart(text="hi there")]
    )


def test_reply_object_with_media() -> None:
    body = {
        "reply": {
            "text": "catalog",
            "media": [
                {"url": "https://cdn/x.pdf", "mime_type": "application/pdf", "filename": "x.pdf", "caption": "c"},
                {"url": "https://cdn/photo.jpg"},
            ],
        }
    }
    reply = parse_reply(200, dumps(body))
    assert reply.parts == [
        OutboundPart(
            text="catalog",
            media=[
                Media(url="https://cdn/x.pdf", mime_type="application/pdf", filename="x.pdf", caption="c"),
                Media(url="https://cdn/photo.jpg", mime_type="image/jpeg"),
            ],
        )
    ]


def test_media_only_part_kept() -> None:
    reply = parse_reply(200, dumps({"reply": {"text": "  ", "media": [{"url": "https://cdn/a.png"}]}}))
    assert reply.parts == [OutboundPart(text=None, media=[Media(url="https://cdn/a.png", mime_type="image/png")])]


def test_messages_in_order_and_blank_dropped() -> None:
    body = {"messages": [{"text": "one"}, {"text": "   "}, "two", {"text": "three", "media": []}, None]}
    reply = parse_reply(200, dumps(body))
    assert [p.text for p in reply.parts] == ["one", "two", "three"]


def test_messages_win_over_reply() -> None:
    reply = parse_reply(200, dumps({"reply": "ignored", "messages": [{"text": "kept"}]}))
    assert [p.text for p in reply.parts] == ["kept"]


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (200, b""),
        (200, b"  \n"),
        (200, b"{}"),
        (200, b'{"reply": null}'),
        (200, b'{"reply": ""}'),
        (200, b'{"reply": "   "}'),
        (200, b'{"messages": []}'),
        (200, b"null"),
        (204, b""),
        (202, b'{"reply": "later"}'),
        (202, b"not json at all"),
    ],
)
def test_nothing_to_say(status: int, content: bytes) -> None:
    assert parse_reply(status, content) == AgentReply(backend="hive", parts=[])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"<html>oops</html>", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got array"),
        (b'"text"', "must be a JSON object, got string"),
        (b'{"reply": 5}', "reply must be a string or an object, got number"),
        (b'{"reply": {"text": 5}}', "reply.text must be a string"),
        (b'{"reply": {"media": "x"}}', "reply.media must be an array"),
        (b'{"reply": {"media": [{"mime_type": "image/png"}]}}', "reply.media[0].url"),
        (b'{"reply": {"media": ["https://x"]}}', "reply.media[0] must be an object"),
        (b'{"messages": {"text": "x"}}', "messages must be an array"),
        (b'{"messages": [{"text": "ok"}, 7]}', "messages[1] must be a string or an object"),
    ],
)
def test_malformed_2xx_is_permanent(content: bytes, fragment: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse_reply(200, content)
    assert fragment in info.value.message
    assert info.value.status_code == 200


@given(st.lists(st.text(min_size=1).filter(lambda s: s.strip() != ""), max_size=20))
def test_messages_shape_preserves_texts_in_order(texts: list[str]) -> None:
    content = msgspec.json.encode({"messages": [{"text": t} for t in texts]})
    reply = parse_reply(200, content)
    assert reply.backend == "hive"
    assert [p.text for p in reply.parts] == texts
    assert all(p.media == [] for p in reply.parts)


@given(st.lists(st.one_of(st.just(""), st.text(alphabet=" \t\n\r", max_size=5), st.text(min_size=1)), max_size=10))
def test_blank_texts_never_become_parts(texts: list[str]) -> None:
    reply = parse_reply_json({"messages": [{"text": t} for t in texts]})
    assert [p.text for p in reply.parts] == [t for t in texts if t.strip()]


# --- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_no_error_for_2xx(status: int) -> None:
    assert error_for_status(status) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_transient_statuses(status: int) -> None:
    err = error_for_status(status, b'{"detail": "busy"}', "3")
    assert isinstance(err, TransientError)
    assert err.status_code == status and err.retry_after == 3.0
    assert err.message == f"Hive answered HTTP {status}: busy"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 301])
def test_permanent_statuses(status: int) -> None:
    err = error_for_status(status, b"", "10")
    assert isinstance(err, PermanentError)
    assert err.status_code == status and err.retry_after is None
    assert err.message == f"Hive answered HTTP {status}"


def test_bad_retry_after_ignored() -> None:
    err = error_for_status(503, b"", "Wed, 21 Oct 2015 07:28:00 GMT")
    assert isinstance(err, TransientError) and err.retry_after is None


def test_error_message_is_short_and_secret_free() -> None:
    body = json.dumps({"detail": "bad key s3cret-key-value " + "x" * 500}).encode()
    err = error_for_status(401, body, secret="s3cret-key-value")
    assert err is not None
    assert "s3cret-key-value" not in err.message and "***" in err.message
    assert len(err.message) < 260


def test_error_detail_from_plain_text_body() -> None:
    err = error_for_status(502, b"<html>\n  Bad   Gateway\n</html>")
    assert err is not None and err.message == "Hive answered HTTP 502: <html> Bad Gateway </html>"


def test_reply_from_response() -> None:
    assert reply_from_response(200, b'{"reply": "x"}').parts == [OutboundPart(text="x")]
    with pytest.raises(TransientError):
        reply_from_response(503, b"")
    with pytest.raises(PermanentError):
        reply_from_response(400, b'{"detail": "no"}')
