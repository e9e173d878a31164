"""Pure parts of the Evolution (WhatsApp) plugin: webhook normalization, addresses, REST bodies and answers.

Fixtures live in ``tests/fixtures/evolution`` and follow Evolution v2.2+ shapes (plus a few v1 ones).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import omni_whatsapp_evolution.plugin as plugin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omni_whatsapp_evolution.normalize import (
    disconnect_reason,
    file_size,
    map_status,
    normalize_address,
    normalize_event,
    phone_jid,
    recipient_number,
    timestamp_iso,
)
from omni_whatsapp_evolution.wire import (
    WEBHOOK_EVENTS,
    OutboundCall,
    base_url,
    build_instance_create_body,
    build_send_media_body,
    build_send_text_body,
    build_webhook_set_body,
    error_detail,
    error_message,
    evolution_config,
    first_str,
    media_type_for,
    parse_connect_response,
    parse_connection_state,
    parse_instance_create_response,
    parse_send_response,
    plan_delivery,
    webhook_url,
)

from omni_core import (
    Chat,
    Content,
    Ignored,
    Instance,
    InstanceUpdate,
    Media,
    Message,
    Sender,
    StatusUpdate,
    Tenant,
)
from omni_core.model import decode_message, iso

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "evolution"
TENANT = "ten_01HX0TESTTENANT"
INSTANCE = "loja-centro"
OWNER = "5521911112222@s.whatsapp.net"
CUSTOMER = "5521987650001@s.whatsapp.net"
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def load(name: str) -> Any:
    """A fixture payload, decoded fresh on every call so tests may mutate it."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def one(payload: Any) -> Any:
    events = normalize_event(TENANT, payload)
    assert len(events) == 1
    return events[0]


def message_of(name: str) -> Message:
    event = one(load(name))
    assert isinstance(event, Message)
    return event


def roundtrip(message: Message) -> Message:
    return decode_message(msgspec.json.encode(message))


# --- messages.upsert ----------------------------------------------------------------------------------


def test_text_upsert_maps_every_field() -> None:
    msg = message_of("upsert_text.json")
    assert msg.id.startswith("msg_")
    assert (msg.source, msg.tenant, msg.instance) == ("whatsapp", TENANT, INSTANCE)
    assert msg.direction == "inbound"
    assert msg.status == "received"
    assert msg.external_id == "AC31D0E5F7A9B2C4D6E8F0A1B3C5D7E9"
    # remoteJid is already the phone JID; the @lid alternate is kept only as metadata.
    assert msg.chat == Chat(id=CUSTOMER, type="direct")
    assert msg.sender == Sender(id=CUSTOMER, name="Carla Mendes")
    assert msg.content.type == "text"
    assert msg.content.text == "Boa tarde! Vocês entregam no Méier?"
    assert msg.content.media == []
    assert msg.content.metadata == {
        "message_type": "conversation",
        "device": "android",
        "push_name": "Carla Mendes",
        "lid": "204010203040506@lid",
    }
    assert msg.timestamp == "2025-11-01T12:26:40.000Z"
    assert msg.reply_to is None


def test_message_ids_are_unique_per_normalization() -> None:
    payload = load("upsert_text.json")
    assert message_of("upsert_text.json").id != one(payload).id


def test_lid_dm_resolves_to_phone_jid() -> None:
    msg = message_of("upsert_lid_dm.json")
    assert msg.chat.id == CUSTOMER
    assert msg.sender.id == CUSTOMER
    assert msg.content.metadata["lid"] == "204010203040506@lid"


def test_lid_dm_without_alternate_keeps_lid() -> None:
    payload = load("upsert_lid_dm.json")
    del payload["data"]["key"]["remoteJidAlt"]
    msg = one(payload)
    assert msg.chat.id == "204010203040506@lid"
    assert msg.sender.id == "204010203040506@lid"


def test_group_message_uses_group_chat_and_phone_participant() -> None:
    msg = message_of("upsert_group.json")
    assert msg.chat == Chat(id="120363999888777666@g.us", type="group")
    # participant is an @lid, participantAlt the phone: the phone wins.
    assert msg.sender == Sender(id="5521955554444@s.whatsapp.net", name="Rafael Lima")
    assert msg.direction == "inbound"


def test_group_message_without_phone_participant_keeps_participant() -> None:
    payload = load("upsert_group.json")
    del payload["data"]["key"]["participantAlt"]
    assert one(payload).sender.id == "310020030040050@lid"


def test_status_broadcast_is_not_a_conversation() -> None:
    # Status updates (stories) have nobody to answer: never stored as a turn, never routed.
    (event,) = normalize_event(TENANT, load("upsert_status_broadcast.json"))
    assert isinstance(event, Ignored)
    assert "broadcast" in event.reason


def test_from_me_upsert_is_outbound_from_the_instance_owner() -> None:
    msg = message_of("upsert_from_me.json")
    assert msg.direction == "outbound"
    assert msg.sender == Sender(id=OWNER, is_self=True)
    assert msg.chat.id == CUSTOMER
    assert msg.status == "received"
    assert "push_name" not in msg.content.metadata
    assert msg.content.metadata["device"] == "ios"


def test_from_me_without_envelope_sender_falls_back_to_instance_name() -> None:
    payload = load("upsert_from_me.json")
    del payload["sender"]
    assert one(payload).sender == Sender(id=INSTANCE, is_self=True)


def test_reply_to_comes_from_top_level_context_info() -> None:
    msg = message_of("upsert_reply.json")
    assert msg.reply_to == "3EB0AA11BB22CC33DD44EE"
    assert msg.timestamp == "2025-11-01T12:43:20.000Z"  # numeric string timestamp


def test_legacy_v1_extended_text() -> None:
    msg = message_of("upsert_text_legacy_v1.json")
    assert msg.content.type == "text"
    assert msg.content.text == "Olha esse link https://example.org/promo"
    assert msg.content.metadata["message_type"] == "extendedTextMessage"
    # v1 keeps the quote inside the typed message's own contextInfo.
    assert msg.reply_to == "3EB0FFEE00DD11CC22BB33"
    assert msg.timestamp == "2024-11-12T08:26:40.000Z"


def test_image_with_caption_and_base64_is_not_copied() -> None:
    payload = load("upsert_image.json")
    msg = one(payload)
    assert msg.content.type == "image"
    assert msg.content.text == "A embalagem chegou amassada"
    assert msg.content.media == [
        Media(
            url="https://mmg.whatsapp.net/o1/v/t62.7118-24/f2/m232/AQexample?ccb=9-4&mms3=true",
            mime_type="image/jpeg",
            size=204117,
            caption="A embalagem chegou amassada",
        )
    ]
    assert msg.content.metadata["has_base64"] is True
    encoded = msgspec.json.encode(msg).decode()
    assert payload["data"]["message"]["base64"] not in encoded
    assert "jpegThumbnail" not in encoded and "/9j/4AAQ" not in encoded


def test_document_inside_caption_wrapper() -> None:
    msg = message_of("upsert_document_wrapped.json")
    assert msg.content.type == "document"
    assert msg.content.text == "Segue a nota fiscal"
    assert msg.content.media == [
        Media(
            url="https://mmg.whatsapp.net/v/t62.7119-24/nota.enc",
            mime_type="application/pdf",
            size=88213,
            filename="nota-fiscal-8812.pdf",
            caption="Segue a nota fiscal",
        )
    ]
    assert msg.content.metadata["message_type"] == "documentWithCaptionMessage"
    assert msg.reply_to == "3EB0C0FFEE1234567890AB"  # from the wrapped message's own contextInfo


def test_voice_note() -> None:
    msg = message_of("upsert_audio_ptt.json")
    assert msg.content.type == "audio"
    assert msg.content.text is None
    assert msg.content.metadata["ptt"] is True
    assert msg.content.metadata["seconds"] == 9
    (media,) = msg.content.media
    assert media.mime_type == "audio/ogg; codecs=opus"
    assert media.size == 12034  # protobuf Long {low, high}
    assert msg.timestamp == "2025-11-01T12:34:16.000Z"  # Long timestamp


def test_sticker() -> None:
    msg = message_of("upsert_sticker.json")
    assert msg.content.type == "sticker"
    assert msg.content.media[0].mime_type == "image/webp"
    assert msg.content.media[0].size == 23110


def test_location() -> None:
    msg = message_of("upsert_location.json")
    assert msg.content.type == "location"
    assert msg.content.text == "Praça Tiradentes"
    meta = msg.content.metadata
    assert (meta["latitude"], meta["longitude"]) == (-22.9035, -43.2096)
    assert meta["name"] == "Praça Tiradentes"
    assert meta["address"] == "Centro, Rio de Janeiro - RJ"


def test_single_contact() -> None:
    msg = message_of("upsert_contact.json")
    assert msg.content.type == "contact"
    assert msg.content.text == "Oficina do Beto"
    (card,) = msg.content.metadata["contacts"]
    assert card["name"] == "Oficina do Beto"
    assert card["vcard"].startswith("BEGIN:VCARD")


def test_contacts_array() -> None:
    msg = message_of("upsert_contacts_array.json")
    assert msg.content.type == "contact"
    assert [c["name"] for c in msg.content.metadata["contacts"]] == ["Ana Paula", "Bruno"]


def test_reaction() -> None:
    msg = message_of("upsert_reaction.json")
    assert msg.content.type == "reaction"
    assert msg.content.text == "👍"
    assert msg.content.metadata["target_id"] == "3EB0AA11BB22CC33DD44EE"
    assert "removed" not in msg.content.metadata


def test_reaction_removal_has_no_text() -> None:
    payload = load("upsert_reaction.json")
    payload["data"]["message"]["reactionMessage"]["text"] = ""
    msg = one(payload)
    assert msg.content.text is None
    assert msg.content.metadata["removed"] is True


def test_unknown_kind_is_unsupported() -> None:
    msg = message_of("upsert_unsupported.json")
    assert msg.content.type == "unsupported"
    assert msg.content.text is None
    assert msg.content.metadata["message_type"] == "pollCreationMessageV3"


def test_message_type_is_inferred_when_missing() -> None:
    payload = load("upsert_image.json")
    del payload["data"]["messageType"]
    msg = one(payload)
    assert msg.content.type == "image"
    assert msg.content.metadata["message_type"] == "imageMessage"


def test_message_type_contradicted_by_body_reports_the_body() -> None:
    payload = load("upsert_image.json")
    payload["data"]["messageType"] = "conversation"
    msg = one(payload)
    assert msg.content.type == "image"
    assert msg.content.metadata["message_type"] == "imageMessage"


def test_upsert_without_message_body_is_unsupported() -> None:
    payload = load("upsert_text.json")
    del payload["data"]["message"]
    del payload["data"]["messageType"]
    msg = one(payload)
    assert msg.content.type == "unsupported"
    assert msg.content.metadata["message_type"] == "unknown"


def test_protocol_message_is_ignored() -> None:
    payload = load("upsert_text.json")
    payload["data"]["message"] = {"protocolMessage": {"type": "REVOKE", "key": {"id": "X"}}}
    payload["data"]["messageType"] = "protocolMessage"
    assert isinstance(one(payload), Ignored)


def test_send_message_event_is_outbound_and_sent() -> None:
    msg = message_of("send_message.json")
    assert msg.direction == "outbound"
    assert msg.status == "sent"
    assert msg.sender == Sender(id=OWNER, is_self=True)
    assert msg.external_id == "3EB0B7C8D9E0F1A2B3C4D5"
    assert msg.content.text == "Seu pedido 7731 saiu para entrega."
    assert msg.reply_to is None
    assert msg.content.metadata["device"] == "web"


def test_uppercase_event_names_are_accepted() -> None:
    payload = load("upsert_text.json")
    payload["event"] = "MESSAGES_UPSERT"
    assert isinstance(one(payload), Message)


def test_data_array_yields_one_event_per_item() -> None:
    payload = load("upsert_text.json")
    second = copy.deepcopy(payload["data"])
    second["key"]["id"] = "SECOND000000000000000000000000"
    payload["data"] = [payload["data"], second]
    events = normalize_event(TENANT, payload)
    assert [e.external_id for e in events if isinstance(e, Message)] == [
        "AC31D0E5F7A9B2C4D6E8F0A1B3C5D7E9",
        "SECOND000000000000000000000000",
    ]


def test_instance_name_fallback_when_envelope_has_none() -> None:
    payload = load("upsert_text.json")
    del payload["instance"]
    with pytest.raises(ValueError, match="instance"):
        normalize_event(TENANT, payload)
    (msg,) = normalize_event(TENANT, payload, instance_name="from-path")
    assert isinstance(msg, Message) and msg.instance == "from-path"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1762000000, "2025-11-01T12:26:40.000Z"),
        ("1762000000", "2025-11-01T12:26:40.000Z"),
        ({"low": 1762000000, "high": 0, "unsigned": False}, "2025-11-01T12:26:40.000Z"),
        (1762000000123, "2025-11-01T12:26:40.000Z"),  # milliseconds
        (1762000000.0, "2025-11-01T12:26:40.000Z"),
    ],
)
def test_timestamp_forms(value: Any, expected: str) -> None:
    assert timestamp_iso(value) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=4_102_444_800) | st.sampled_from([1762000000, 1762000001]), max_size=8)
)
def test_repeated_seconds_format_the_same_as_the_first_time(seconds: list[int]) -> None:
    # timestamp_iso remembers the last second it formatted; any sequence must give what
    # formatting each value afresh gives.
    for value in seconds:
        assert timestamp_iso(value) == iso(datetime.fromtimestamp(value, UTC))


@pytest.mark.parametrize("value", [None, "", "soon", -5, 0, True, {"low": "x"}, [1], 10**40])
def test_unusable_timestamp_falls_back_to_now(value: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    stamp = timestamp_iso(value)
    assert ISO_RE.match(stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= parsed <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8742", 8742), (8742, 8742), ({"low": 5, "high": 1, "unsigned": True}, 2**32 + 5), (None, None), ("big", None)],
)
def test_file_size_forms(value: Any, expected: int | None) -> None:
    assert file_size(value) == expected


# --- messages.update ----------------------------------------------------------------------------------


def test_status_update_v2_read() -> None:
    assert one(load("update_read.json")) == StatusUpdate(
        external_id="3EB0B7C8D9E0F1A2B3C4D5", status="read", chat_id=CUSTOMER
    )


def test_status_update_v1_uses_id() -> None:
    assert one(load("update_delivered_legacy_v1.json")) == StatusUpdate(
        external_id="3EB0E1D2C3B4A5F6E7D8", status="delivered", chat_id=CUSTOMER
    )


def test_pending_status_is_ignored() -> None:
    event = one(load("update_pending.json"))
    assert isinstance(event, Ignored)
    assert "PENDING" in event.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("DELIVERY_ACK", "delivered"),
        ("READ", "read"),
        ("PLAYED", "read"),
        ("SERVER_ACK", "sent"),
        ("ERROR", "failed"),
        ("PENDING", None),
        ("SOMETHING_NEW", None),
        (3, "delivered"),
        (4, "read"),
        (None, None),
    ],
)
def test_status_mapping(raw: Any, expected: str | None) -> None:
    assert map_status(raw) == expected


def test_error_status_carries_an_error_text() -> None:
    payload = load("update_read.json")
    payload["data"]["status"] = "ERROR"
    event = one(payload)
    assert isinstance(event, StatusUpdate)
    assert event.status == "failed" and event.error


# --- instance events ----------------------------------------------------------------------------------


def test_connection_open_carries_profile() -> None:
    assert one(load("connection_open.json")) == InstanceUpdate(
        state="open",
        reason="200",
        profile={
            "wuid": OWNER,
            "profile_name": "Loja Centro",
            "profile_picture_url": "https://pps.whatsapp.net/v/t61.24694-24/555_666_n.jpg?ccb=11-4",
        },
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("connection_close_replaced.json", "440 replaced by another session"),
        ("connection_close_logged_out.json", "401 logged out"),
    ],
)
def test_connection_close_reasons(name: str, reason: str) -> None:
    event = one(load(name))
    assert event == InstanceUpdate(state="close", reason=reason)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (403, "403 forbidden"),
        (408, "408 timed out"),
        (428, "428 connection closed"),
        (500, "500 bad session"),
        (515, "515 restart required"),
        ("401", "401 logged out"),
        (999, "999"),
        (None, None),
    ],
)
def test_disconnect_reason_labels(code: Any, expected: str | None) -> None:
    assert disconnect_reason(code) == expected


def test_qrcode_updated() -> None:
    event = one(load("qrcode_updated.json"))
    assert isinstance(event, InstanceUpdate)
    assert event.state == "qrcode"
    assert event.qrcode_base64 is not None and event.qrcode_base64.startswith("data:image/png;base64,")
    assert event.qrcode_code is not None and event.qrcode_code.startswith("2@")
    assert event.pairing_code is None


def test_qrcode_limit_reached_is_refused() -> None:
    assert one(load("qrcode_limit_reached.json")) == InstanceUpdate(
        state="refused", reason="QR code limit reached, please login again"
    )


def test_other_events_are_ignored() -> None:
    assert one(load("presence_update.json")) == Ignored(reason="event 'presence.update' is not handled")


# --- malformed payloads -------------------------------------------------------------------------------


def _without(name: str, *path: str) -> Any:
    payload = load(name)
    node = payload
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return payload


def _with(name: str, value: Any, *path: str) -> Any:
    payload = load(name)
    node = payload
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return payload


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([], "JSON object"),
        ("messages.upsert", "JSON object"),
        ({"instance": INSTANCE}, "'event'"),
        ({"event": 7}, "'event'"),
        (_without("upsert_text.json", "data"), "no 'data'"),
        (_with("upsert_text.json", "oops", "data"), "'data' must be a JSON object"),
        (_with("upsert_text.json", [], "data"), "empty array"),
        (_without("upsert_text.json", "data", "key"), "'data.key'"),
        (_without("upsert_text.json", "data", "key", "id"), "'data.key.id'"),
        (_with("upsert_text.json", 12345, "data", "key", "id"), "'data.key.id'"),
        (_without("send_message.json", "data", "key", "id"), "send.message: 'data.key.id'"),
        (_without("upsert_text.json", "data", "key", "remoteJid"), "remoteJid"),
        (_with("upsert_text.json", ["x"], "data", "message"), "'data.message'"),
        (_with("upsert_text.json", 42, "data", "message", "conversation"), "conversation"),
        (_without("update_read.json", "data", "keyId"), "keyId"),
        (_without("connection_open.json", "data"), "connection.update"),
        (_with("qrcode_updated.json", {}, "data"), "qrcode.updated"),
    ],
)
def test_malformed_payloads_raise_value_error(payload: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        normalize_event(TENANT, payload)


# --- hooks --------------------------------------------------------------------------------------------


def test_normalize_hook_only_answers_for_whatsapp() -> None:
    tenant = Tenant(id=TENANT, name="Loja")
    payload = load("upsert_text.json")
    assert plugin.omni_normalize(channel="slack", tenant=tenant, instance=None, payload=payload) is None
    events = plugin.omni_normalize(channel="whatsapp", tenant=tenant, instance=None, payload=payload)
    assert events is not None
    (msg,) = events
    assert isinstance(msg, Message) and msg.tenant == TENANT


def test_io_hooks_decline_other_channels() -> None:
    other = Instance(id="ins_1", tenant=TENANT, name="bot", channel="slack")
    hub: Any = object()  # never touched when the hook declines
    assert plugin.omni_deliver(hub=hub, instance=other, message=outbound("x")) is None
    assert plugin.omni_instance_create(hub=hub, tenant=Tenant(id=TENANT, name="t"), instance=other, options={}) is None
    assert plugin.omni_instance_status(hub=hub, instance=other) is None
    assert plugin.omni_instance_qr(hub=hub, instance=other) is None
    assert plugin.omni_instance_delete(hub=hub, instance=other) is None
    assert plugin.omni_tenant_secret_rotated(hub=hub, tenant=Tenant(id=TENANT, name="t"), instance=other) is None


def test_channel_and_address_hooks() -> None:
    assert plugin.omni_channels() == ["whatsapp"]
    assert plugin.omni_normalize_address(channel="telegram", address="123") is None
    assert plugin.omni_normalize_address(channel="whatsapp", address="+55 21 98765-0001") == CUSTOMER


# --- property tests -----------------------------------------------------------------------------------

_digits = st.text(alphabet="0123456789", min_size=10, max_size=15)
_key_ids = st.text(alphabet="0123456789ABCDEF", min_size=16, max_size=32)
_texts = st.text(min_size=1, max_size=200)
_timestamps = st.one_of(
    st.integers(min_value=1_000_000_000, max_value=4_000_000_000),
    st.integers(min_value=1_000_000_000, max_value=4_000_000_000).map(str),
    st.integers(min_value=1_000_000_000, max_value=2**31 - 1).map(lambda n: {"low": n, "high": 0, "unsigned": False}),
)
_contents = st.one_of(
    _texts.map(lambda t: ("conversation", {"conversation": t})),
    _texts.map(lambda t: ("extendedTextMessage", {"extendedTextMessage": {"text": t}})),
    st.tuples(_texts, st.integers(0, 10**9)).map(
        lambda a: (
            "imageMessage",
            {
                "imageMessage": {
                    "url": "https://m.example/x",
                    "mimetype": "image/png",
                    "caption": a[0],
                    "fileLength": str(a[1]),
                }
            },
        )
    ),
    st.tuples(st.booleans(), st.integers(0, 600)).map(
        lambda a: ("audioMessage", {"audioMessage": {"mimetype": "audio/ogg", "ptt": a[0], "seconds": a[1]}})
    ),
    st.tuples(st.floats(-90, 90), st.floats(-180, 180)).map(
        lambda a: ("locationMessage", {"locationMessage": {"degreesLatitude": a[0], "degreesLongitude": a[1]}})
    ),
    st.tuples(_key_ids, st.sampled_from(["❤️", "😂", ""])).map(
        lambda a: ("reactionMessage", {"reactionMessage": {"key": {"id": a[0]}, "text": a[1]}})
    ),
    st.just(("buttonsResponseMessage", {"buttonsResponseMessage": {"selectedButtonId": "b1"}})),
)


@st.composite
def upserts(draw: st.DrawFn) -> dict[str, Any]:
    """A structurally valid messages.upsert / send.message envelope of any chat kind and content kind."""
    kind = draw(st.sampled_from(["dm", "lid_dm", "group"]))
    phone = draw(_digits) + "@s.whatsapp.net"
    lid = draw(_digits) + "@lid"
    key: dict[str, Any] = {"id": draw(_key_ids), "fromMe": draw(st.booleans())}
    if kind == "dm":
        key["remoteJid"] = phone
    elif kind == "lid_dm":
        key.update(remoteJid=lid, remoteJidAlt=phone)
    else:
        key.update(remoteJid=draw(_digits) + "@g.us", participant=lid, participantAlt=phone)
    message_type, message = draw(_contents)
    data: dict[str, Any] = {"key": key, "message": message, "messageType": message_type}
    if draw(st.booleans()):
        data["messageTimestamp"] = draw(_timestamps)
    if draw(st.booleans()):
        data["pushName"] = draw(_texts)
    if draw(st.booleans()):
        data["contextInfo"] = {"stanzaId": draw(_key_ids)}
    envelope: dict[str, Any] = {
        "event": draw(st.sampled_from(["messages.upsert", "send.message"])),
        "instance": draw(st.text(min_size=1, max_size=30)),
        "data": data,
    }
    if draw(st.booleans()):
        envelope["sender"] = draw(_digits) + "@s.whatsapp.net"
    return envelope


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(upserts())
def test_any_valid_upsert_normalizes(payload: dict[str, Any]) -> None:
    (msg,) = normalize_event(TENANT, payload)
    assert isinstance(msg, Message)
    key = payload["data"]["key"]
    assert msg.external_id == key["id"]
    assert msg.instance == payload["instance"]
    assert ISO_RE.match(msg.timestamp)
    outbound = payload["event"] == "send.message" or key["fromMe"]
    assert msg.direction == ("outbound" if outbound else "inbound")
    assert msg.sender.is_self is outbound
    remote = key["remoteJid"]
    if remote.endswith("@g.us"):
        assert msg.chat == Chat(id=remote, type="group")
    else:
        # DMs always land in the phone-number chat, whichever form the key used.
        assert msg.chat.type == "direct" and msg.chat.id.endswith("@s.whatsapp.net")
    if not outbound:
        assert msg.sender.id.endswith("@s.whatsapp.net") or msg.sender.id == remote
    assert msg.reply_to == payload["data"].get("contextInfo", {}).get("stanzaId")


@settings(max_examples=300, deadline=None)
@given(upserts())
def test_encoding_round_trips(payload: dict[str, Any]) -> None:
    (msg,) = normalize_event(TENANT, payload)
    assert isinstance(msg, Message)
    assert roundtrip(msg) == msg


def test_fixture_messages_round_trip() -> None:
    for path in sorted(FIXTURES.glob("*.json")):
        if path.name.startswith(("upsert_", "send_")) and "broadcast" not in path.name:
            msg = message_of(path.name)
            assert roundtrip(msg) == msg, path.name


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(
    [
        ("data",),
        ("data", "key"),
        ("data", "key", "id"),
        ("data", "key", "remoteJid"),
        ("data", "key", "remoteJidAlt"),
        ("data", "key", "participant"),
        ("data", "key", "fromMe"),
        ("data", "message"),
        ("data", "messageType"),
        ("data", "messageTimestamp"),
        ("data", "contextInfo"),
        ("data", "pushName"),
        ("sender",),
        ("instance",),
    ]
)


@settings(max_examples=300, deadline=None)
@given(upserts(), _fields, _json)
def test_corrupted_upserts_fail_only_with_value_error(
    payload: dict[str, Any], field: tuple[str, ...], junk: Any
) -> None:
    node: Any = payload
    for part in field[:-1]:
        node = node[part]
    node[field[-1]] = junk
    try:
        events = normalize_event(TENANT, payload)
    except ValueError:
        return
    for event in events:
        assert isinstance(event, Message | Ignored)
        if isinstance(event, Message):
            assert roundtrip(event) == event


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["messages.upsert", "send.message", "messages.update", "connection.update", "qrcode.updated", "x"]),
    _json,
)
def test_arbitrary_data_fails_only_with_value_error(event: str, data: Any) -> None:
    try:
        events = normalize_event(TENANT, {"event": event, "instance": INSTANCE, "data": data})
    except ValueError:
        return
    assert all(isinstance(e, Message | StatusUpdate | InstanceUpdate | Ignored) for e in events)


# --- addresses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5521987650001", CUSTOMER),
        ("+55 (21) 98765-0001", CUSTOMER),
        ("  +55 21 98765 0001 ", CUSTOMER),
        ("12345678", "12345678@s.whatsapp.net"),
        (CUSTOMER, CUSTOMER),
        ("120363999888777666@g.us", "120363999888777666@g.us"),
        ("204010203040506@lid", "204010203040506@lid"),
        ("status@broadcast", "status@broadcast"),
    ],
)
def test_normalize_address(raw: str, expected: str) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "abc", "1234567", "1" * 21, "carla@example.com", "@g.us", "55 21 9x765", "55 21@g.us", "٣٣٣٣٣٣٣٣٣"]
)
def test_normalize_address_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="not a WhatsApp number or JID"):
        normalize_address(raw)


@given(
    st.lists(
        st.tuples(st.sampled_from("0123456789"), st.sampled_from(["", " ", "-", "(", ")", "+"])),
        min_size=8,
        max_size=20,
    )
)
def test_formatted_numbers_normalize_to_their_digits(parts: list[tuple[str, str]]) -> None:
    raw = "".join(digit + sep for digit, sep in parts)
    digits = "".join(digit for digit, _ in parts)
    result = normalize_address(raw)
    assert result == f"{digits}@s.whatsapp.net"
    assert normalize_address(result) == result  # canonical form is a fixed point


def test_phone_jid_prefers_the_phone_form() -> None:
    assert phone_jid("1@lid", CUSTOMER) == CUSTOMER
    assert phone_jid(CUSTOMER, "1@lid") == CUSTOMER
    assert phone_jid("1@lid", None) == "1@lid"
    assert phone_jid(None, None) is None


@pytest.mark.parametrize(
    ("chat_id", "number"),
    [(CUSTOMER, "5521987650001"), ("120363999888777666@g.us", "120363999888777666@g.us"), ("99@lid", "99@lid")],
)
def test_recipient_number(chat_id: str, number: str) -> None:
    assert recipient_number(chat_id) == number


# --- outbound bodies ----------------------------------------------------------------------------------


def outbound(
    text: str | None = None, media: list[Media] | None = None, chat: str = CUSTOMER, reply_to: str | None = None
) -> Message:
    return Message(
        id="msg_01HX0TEST",
        source="whatsapp",
        tenant=TENANT,
        instance=INSTANCE,
        direction="outbound",
        chat=Chat(id=chat, type="group" if chat.endswith("@g.us") else "direct"),
        sender=Sender(id=OWNER, is_self=True),
        content=Content(type="image" if media else "text", text=text, media=media or []),
        timestamp="2025-11-01T12:00:00.000Z",
        reply_to=reply_to,
        status="queued",
    )


PHOTO = Media(url="https://cdn.example.org/p/123.jpg", mime_type="image/jpeg")
INVOICE = Media(url="https://cdn.example.org/nf.pdf", mime_type="application/pdf", filename="nf.pdf")
VOICE = Media(url="https://cdn.example.org/v.ogg", mime_type="audio/ogg")


def test_send_text_body_is_exact() -> None:
    assert build_send_text_body("5521987650001", "Olá") == {"number": "5521987650001", "text": "Olá"}
    assert build_send_text_body("5521987650001", "Olá", "3EB0XX") == {
        "number": "5521987650001",
        "text": "Olá",
        "quoted": {"key": {"id": "3EB0XX"}},
    }


def test_send_media_body() -> None:
    assert build_send_media_body("5521987650001", INVOICE, "Sua nota") == {
        "number": "5521987650001",
        "mediatype": "document",
        "mimetype": "application/pdf",
        "media": "https://cdn.example.org/nf.pdf",
        "caption": "Sua nota",
        "fileName": "nf.pdf",
    }
    assert build_send_media_body("5521987650001", PHOTO) == {
        "number": "5521987650001",
        "mediatype": "image",
        "mimetype": "image/jpeg",
        "media": "https://cdn.example.org/p/123.jpg",
    }
    with pytest.raises(ValueError, match="url"):
        build_send_media_body("5521987650001", Media(mime_type="image/png"))


@pytest.mark.parametrize(
    ("mime", "kind"),
    [
        ("image/png", "image"),
        ("video/mp4", "video"),
        ("audio/ogg; codecs=opus", "audio"),
        ("application/pdf", "document"),
        ("text/csv", "document"),
        ("", "document"),
        (None, "document"),
        ("IMAGE/JPEG", "image"),
    ],
)
def test_media_type_for(mime: str | None, kind: str) -> None:
    assert media_type_for(mime) == kind


def test_plan_text_only() -> None:
    assert plan_delivery(outbound("Pedido confirmado", reply_to="3EB0QQ")) == [
        OutboundCall(
            "sendText", {"number": "5521987650001", "text": "Pedido confirmado", "quoted": {"key": {"id": "3EB0QQ"}}}
        )
    ]


def test_plan_group_keeps_full_jid() -> None:
    (call,) = plan_delivery(outbound("Oi grupo", chat="120363999888777666@g.us"))
    assert call.body["number"] == "120363999888777666@g.us"


def test_plan_text_becomes_first_caption() -> None:
    calls = plan_delivery(outbound("Veja", media=[PHOTO, INVOICE], reply_to="3EB0QQ"))
    assert [c.action for c in calls] == ["sendMedia", "sendMedia"]
    assert calls[0].body["caption"] == "Veja"
    assert calls[0].body["quoted"] == {"key": {"id": "3EB0QQ"}}
    assert "caption" not in calls[1].body and "quoted" not in calls[1].body


def test_plan_keeps_own_caption_and_sends_text_after() -> None:
    captioned = Media(url=PHOTO.url, mime_type="image/jpeg", caption="Foto 1")
    calls = plan_delivery(outbound("Texto à parte", media=[captioned]))
    assert [c.action for c in calls] == ["sendMedia", "sendText"]
    assert calls[0].body["caption"] == "Foto 1"
    assert calls[1].body == {"number": "5521987650001", "text": "Texto à parte"}


def test_plan_text_equal_to_caption_is_not_repeated() -> None:
    captioned = Media(url=PHOTO.url, mime_type="image/jpeg", caption="Mesma")
    assert [c.action for c in plan_delivery(outbound("Mesma", media=[captioned]))] == ["sendMedia"]


def test_plan_audio_text_goes_separately() -> None:
    calls = plan_delivery(outbound("Ouça", media=[VOICE]))
    assert [c.action for c in calls] == ["sendMedia", "sendText"]
    assert calls[0].body["mediatype"] == "audio" and "caption" not in calls[0].body


def test_plan_rejects_empty_and_url_less_media() -> None:
    with pytest.raises(ValueError, match="neither text nor media"):
        plan_delivery(outbound(None))
    with pytest.raises(ValueError, match=r"media\[1\]"):
        plan_delivery(outbound("x", media=[PHOTO, Media(mime_type="image/png")]))


def test_parse_send_response() -> None:
    assert parse_send_response(load("api_send_text_response.json")) == "3EB0C5D6E7F8A9B0C1D2E3"
    assert parse_send_response({"status": "PENDING"}) is None
    assert parse_send_response("ok") is None


# --- instance lifecycle bodies and answers ------------------------------------------------------------


def test_instance_create_body_is_exact() -> None:
    body = build_instance_create_body(INSTANCE, "https://omni.example.org/webhooks/evolution/ten_1", "whsec_1")
    assert body == {
        "instanceName": INSTANCE,
        "integration": "WHATSAPP-BAILEYS",
        "qrcode": True,
        "webhook": {
            "url": "https://omni.example.org/webhooks/evolution/ten_1",
            "byEvents": False,
            "base64": False,
            "headers": {"x-omni-webhook-token": "whsec_1"},
            "events": ["MESSAGES_UPSERT", "MESSAGES_UPDATE", "SEND_MESSAGE", "CONNECTION_UPDATE", "QRCODE_UPDATED"],
        },
    }
    assert build_instance_create_body(INSTANCE, "u", "t", qrcode=False)["qrcode"] is False
    assert list(WEBHOOK_EVENTS) == body["webhook"]["events"]


def test_build_webhook_set_body_re_sets_the_creation_webhook_with_a_new_token() -> None:
    url = "https://omni.example.org/webhooks/evolution/ten_1"
    body = build_webhook_set_body(url, "whsec_2")
    # v2.2+ shape of POST /webhook/set/{instance}: nested, `enabled` and `url` required.
    assert body == {
        "webhook": {
            "enabled": True,
            "url": url,
            "byEvents": False,
            "base64": False,
            "headers": {"x-omni-webhook-token": "whsec_2"},
            "events": list(WEBHOOK_EVENTS),
        }
    }
    created = build_instance_create_body(INSTANCE, url, "whsec_2")["webhook"]
    assert {k: v for k, v in body["webhook"].items() if k != "enabled"} == created


@pytest.mark.parametrize(
    ("override", "base", "expected"),
    [
        (None, "http://localhost:8882", "http://localhost:8882/webhooks/evolution/ten_1"),
        (None, "https://omni.example.org/", "https://omni.example.org/webhooks/evolution/ten_1"),
        ("https://edge.example.org/hooks/evo/", "http://ignored", "https://edge.example.org/hooks/evo/ten_1"),
    ],
)
def test_webhook_url(override: str | None, base: str, expected: str) -> None:
    assert webhook_url("ten_1", override, base) == expected


def test_parse_instance_create_response_v2() -> None:
    info = parse_instance_create_response(load("api_create_response.json"))
    assert info.state == "connecting"
    assert info.config_patch == {
        "evolution": {
            "instance_token": "9C1E7B3A-55D2-4F0E-8A6B-2D4C6E8F0A1B",
            "instance_id": "0b7e4f2a-91c3-4d8e-b5a6-3c2d1e0f9a87",
        }
    }
    assert info.qr is not None
    assert info.qr.status == "qrcode"
    assert info.qr.code is not None and info.qr.code.startswith("2@")
    assert info.qr.qrcode_base64 is not None and info.qr.qrcode_base64.startswith("data:image/png")


def test_parse_instance_create_response_v1_hash_object() -> None:
    info = parse_instance_create_response(load("api_create_response_legacy_v1.json"))
    assert info.state == "created"
    assert info.config_patch["evolution"]["instance_token"] == "7F3A9C1E5B2D4F6A8C0E"
    assert info.qr is None  # empty code strings are "no QR"


def test_parse_instance_create_response_rejects_non_object() -> None:
    with pytest.raises(ValueError):
        parse_instance_create_response(["nope"])


def test_parse_connection_state() -> None:
    assert parse_connection_state(load("api_connection_state.json")).state == "connecting"
    assert parse_connection_state({"state": "open"}).state == "open"
    with pytest.raises(ValueError, match="state"):
        parse_connection_state({"instance": {}})


def test_parse_connect_response() -> None:
    qr = parse_connect_response(load("api_connect_qr.json"))
    assert (qr.status, qr.pairing_code) == ("qrcode", "K7PQ2M9X")
    assert qr.code is not None and qr.qrcode_base64 is not None
    assert parse_connect_response(load("api_connect_open.json")).status == "open"
    assert parse_connect_response({"count": 0}).status == "connecting"
    with pytest.raises(ValueError, match="Connection Closed"):
        parse_connect_response({"error": True, "message": "Connection Closed"})


# --- errors and config --------------------------------------------------------------------------------


def test_error_messages_are_short_and_specific() -> None:
    assert (
        error_message("sendText", 400, load("api_error_not_on_whatsapp.json"))
        == "evolution sendText 400: number 5521900001111 is not on WhatsApp"
    )
    assert (
        error_message("instance/connect", 404, load("api_error_instance_not_found.json"))
        == 'evolution instance/connect 404: The "loja-fechada" instance does not exist'
    )
    assert error_message("sendText", 401, load("api_error_unauthorized.json")) == "evolution sendText 401: Unauthorized"
    assert error_message("sendText", 502, None) == "evolution sendText 502"
    assert error_message("sendText", 502, "<html>" + "x" * 1000).startswith("evolution sendText 502: <html>")
    assert len(error_detail("y" * 5000) or "") <= 300


def test_config_helpers() -> None:
    assert evolution_config({"evolution": {"base_url": "u"}}) == {"base_url": "u"}
    assert evolution_config({"evolution": "bad"}) == {}
    assert evolution_config(None) == {}
    assert first_str(None, "", "  ", "key", "other") == "key"
    assert base_url(None, "http://evo.example.org:8080/") == "http://evo.example.org:8080"
    assert base_url(None, "") is None
