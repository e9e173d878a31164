"""Pure parts of the Slack plugin: normalization, signatures, delivery plans, error mapping, instance matching."""

from __future__ import annotations

import time
from typing import Any

import pytest
from omni_slack import signature, wire
from omni_slack.client import DeliveryProgress, Progress, filename_for
from omni_slack.normalize import (
    chat_type,
    external_id,
    normalize_address,
    normalize_event,
    ts_iso,
    unescape,
)
from slack_sdk.signature import SignatureVerifier

from omni_core import (
    Chat,
    Content,
    Ignored,
    Instance,
    Media,
    Message,
    MessageChange,
    PermanentError,
    Sender,
    TransientError,
)
from tests.slack import payloads

CONFIG = {"bot_user_id": payloads.BOT_USER, "bot_id": payloads.BOT_ID, "app_id": payloads.APP}


def one(payload: Any, config: dict[str, Any] | None = None) -> Any:
    [event] = normalize_event("acme", payload, instance_name="acme-slack", config=CONFIG if config is None else config)
    return event


# --- normalization ------------------------------------------------------------------------------------
def test_channel_message() -> None:
    event = payloads.message_event("Hi there! Is order 4521 &amp; 4522 shipped? &lt;soon&gt;", ts="1761057130.001400")
    msg = one(payloads.envelope(event, event_id="Ev0MSG0001"))
    assert isinstance(msg, Message)
    assert msg.source == "slack" and msg.tenant == "acme" and msg.instance == "acme-slack"
    assert msg.direction == "inbound" and msg.status == "received"
    assert msg.chat == Chat(id="C0SUPPORT", type="channel", thread_id=None)
    assert msg.sender == Sender(id=payloads.USER, is_bot=False, is_self=False)
    assert msg.content.type == "text"
    assert msg.content.text == "Hi there! Is order 4521 & 4522 shipped? <soon>"
    assert msg.external_id == "C0SUPPORT:1761057130.001400"
    assert msg.timestamp == "2025-10-21T14:32:10.001Z"
    assert msg.reply_to is None
    assert msg.content.metadata["event_id"] == "Ev0MSG0001"
    assert msg.content.metadata["channel_type"] == "channel"
    assert msg.content.metadata["event_type"] == "message"


@pytest.mark.parametrize(
    ("channel", "channel_type", "expected"),
    [("D0MARIADM", "im", "direct"), ("G0PRIVATE", "group", "channel"), ("G0MPIM001", "mpim", "group")],
)
def test_conversation_types(channel: str, channel_type: str, expected: str) -> None:
    msg = one(payloads.envelope(payloads.message_event("hey", channel=channel, channel_type=channel_type)))
    assert msg.chat.type == expected and msg.chat.id == channel


def test_thread_reply_keeps_thread_ts() -> None:
    event = payloads.message_event("Thanks, got it.", ts="1761057190.002100", thread_ts="1761057130.001400")
    msg = one(payloads.envelope(event))
    assert msg.chat.thread_id == "1761057130.001400"
    assert msg.reply_to == "C0SUPPORT:1761057130.001400"


def test_app_mention_and_message_share_the_external_id() -> None:
    ts = "1761057500.397809"
    text = f"<@{payloads.BOT_USER}> status of order 4521?"
    mention = one(payloads.envelope(payloads.app_mention_event(text, ts=ts)))
    plain = one(payloads.envelope(payloads.message_event(text, ts=ts)))
    assert mention.external_id == plain.external_id == f"C0SUPPORT:{ts}"
    assert mention.chat.type == "channel" and mention.content.metadata["mentions_bot"] is True
    dm_mention = one(payloads.envelope(payloads.app_mention_event(text, channel="D0MARIADM")))
    assert dm_mention.chat.type == "direct"


def test_bots_and_self() -> None:
    classic = one(payloads.envelope(payloads.classic_bot_message_event("Deploy finished")))
    assert classic.sender.is_bot and not classic.sender.is_self
    assert classic.sender.id == "B0CLASSIC" and classic.sender.name == "classic-bot"
    assert classic.direction == "inbound"
    own = one(payloads.envelope(payloads.own_bot_message_event("Order 4521 shipped today.", ts="1761057250.000900")))
    assert own.sender.is_bot and own.sender.is_self
    assert own.direction == "outbound" and own.status == "sent"
    # Without the ids from auth.test the envelope's bot authorization and api_app_id still tell.
    bare = one(payloads.envelope(payloads.own_bot_message_event("again", ts="1761057251.000100")), config={})
    assert bare.sender.is_self
    modern_other = payloads.message_event("another app", user="U0OTHERBOT")
    modern_other["bot_id"] = "B0OTHER"
    other = one(payloads.envelope(modern_other))
    assert other.sender.is_bot and not other.sender.is_self and other.direction == "inbound"


def test_file_share_becomes_media() -> None:
    msg = one(payloads.envelope(payloads.file_share_event("here is the invoice")))
    assert msg.content.type == "document"
    assert msg.content.text == "here is the invoice"
    assert msg.content.media == [
        Media(
            url="https://files.slack.com/files-pri/T0ACME001-F0INVOICE1/invoice-4521.pdf",
            mime_type="application/pdf",
            size=48213,
            filename="invoice-4521.pdf",
            caption="Invoice 4521",
        )
    ]
    assert msg.content.metadata["file_ids"] == ["F0INVOICE1"]  # the tombstoned file is left out
    image = payloads.file_share_event("")
    image["files"] = [{"id": "F1", "name": "a.png", "mimetype": "image/png", "url_private": "https://f/a.png"}]
    assert one(payloads.envelope(image)).content.type == "image"


def test_edits_and_deletions() -> None:
    change = one(payloads.envelope(payloads.message_changed_event("1761057130.001400", "old &amp; text", "new &lt;3")))
    assert isinstance(change, MessageChange)
    assert change.kind == "edited" and change.external_id == "C0SUPPORT:1761057130.001400"
    assert change.text == "new <3"
    unfurl = payloads.message_changed_event("1761057130.001400", "see https://x", "see https://x")
    del unfurl["message"]["edited"]
    assert isinstance(one(payloads.envelope(unfurl)), Ignored)
    deletion = one(payloads.envelope(payloads.message_deleted_event("1761057130.001400", "bye")))
    assert isinstance(deletion, MessageChange)
    assert deletion.kind == "deleted" and deletion.external_id == "C0SUPPORT:1761057130.001400"


def test_other_events_are_ignored() -> None:
    join = payloads.message_event("joined")
    join["subtype"] = "channel_join"
    assert isinstance(one(payloads.envelope(join)), Ignored)
    assert isinstance(one(payloads.envelope({"type": "reaction_added", "reaction": "+1"})), Ignored)
    assert isinstance(one(payloads.url_verification()), Ignored)
    assert isinstance(one({"type": "app_rate_limited"}), Ignored)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"type": "event_callback"},
        {"type": "event_callback", "event": {"type": "message", "text": "no channel", "ts": "1.2"}},
        {"type": "event_callback", "event": {"type": "message", "subtype": "message_changed", "channel": "C1"}},
        {"type": "event_callback", "event": {"type": "message", "subtype": "message_deleted", "channel": "C1"}},
    ],
)
def test_malformed_payloads_raise(payload: Any) -> None:
    with pytest.raises(ValueError):
        normalize_event("acme", payload, instance_name="acme-slack", config=CONFIG)


def test_small_helpers() -> None:
    assert external_id("C1", "1.000100") == "C1:1.000100"
    assert ts_iso("1761057130.001400") == "2025-10-21T14:32:10.001Z"
    assert ts_iso("not a ts").endswith("Z")
    assert unescape("&amp;lt; &lt;@U1&gt;") == "&lt; <@U1>"
    assert chat_type(None, "D1") == "direct" and chat_type(None, "C1") == "channel"
    assert normalize_address(" #C0SUPPORT ") == "C0SUPPORT"
    assert normalize_address("U0MARIA01") == "U0MARIA01"
    for bad in ("general", "c0lower", "", "+5511999"):
        with pytest.raises(ValueError):
            normalize_address(bad)


# --- signatures -----------------------------------------------------------------------------------------
# Slack's published known-answer vector (python-slack-sdk's signature verifier test).
KNOWN_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
KNOWN_TS = "1531420618"
KNOWN_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
KNOWN_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_signature_known_answer() -> None:
    assert signature.compute(KNOWN_SECRET, KNOWN_TS, KNOWN_BODY.encode()) == KNOWN_SIGNATURE
    assert signature.matches(KNOWN_SECRET, KNOWN_TS, KNOWN_BODY.encode(), KNOWN_SIGNATURE)
    assert not signature.matches("other-secret", KNOWN_TS, KNOWN_BODY.encode(), KNOWN_SIGNATURE)


@pytest.mark.parametrize("body", [b"", b"{}", '{"text":"caf\u00e9 \u2615"}'.encode(), b"a:b:c"])
def test_signature_agrees_with_slack_sdk(body: bytes) -> None:
    ts = str(int(time.time()))
    theirs = SignatureVerifier("s3cr3t").generate_signature(timestamp=ts, body=body)
    assert signature.compute("s3cr3t", ts, body) == theirs
    assert SignatureVerifier("s3cr3t").is_valid(
        body=body, timestamp=ts, signature=signature.compute("s3cr3t", ts, body)
    )


def test_signed_headers_checks() -> None:
    now = 1_761_057_500.0
    good = {"x-slack-request-timestamp": "1761057500", "x-slack-signature": "v0=abc"}
    assert signature.signed_headers(good, now) == ("1761057500", "v0=abc")
    assert signature.signed_headers(good, now + 300)  # exactly five minutes is still fine
    cases = {
        "missing_signature": {"x-slack-request-timestamp": "1761057500"},
        "invalid_timestamp": {**good, "x-slack-request-timestamp": "17610575.0"},
        "stale_timestamp": {**good, "x-slack-request-timestamp": str(int(now) - 301)},
        "invalid_signature": {**good, "x-slack-signature": "v1=abc"},
    }
    for code, headers in cases.items():
        with pytest.raises(signature.SignatureError) as caught:
            signature.signed_headers(headers, now)
        assert caught.value.code == code


# --- delivery -----------------------------------------------------------------------------------------
def outbound(text: str | None, media: list[Media] | None = None) -> Message:
    return Message(
        id="msg_1",
        source="slack",
        tenant="acme",
        instance="acme-slack",
        direction="outbound",
        chat=Chat(id="C0SUPPORT", type="channel", thread_id="1761057130.001400"),
        sender=Sender(id="acme-slack", is_bot=True, is_self=True),
        content=Content(text=text, media=media or []),
        timestamp="2025-10-21T14:32:10.001Z",
    )


def test_plan_delivery() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 350 for i in range(5))
    steps = wire.plan_delivery(outbound(text))
    assert len(steps) >= 3 and all(s.text is not None and len(s.text) <= 4000 for s in steps)
    assert all(s.media is None for s in steps)
    assert wire.plan_delivery(outbound("short")) == [wire.Step(text="short")]
    pdf = Media(url="https://cdn/x.pdf", mime_type="application/pdf")
    assert wire.plan_delivery(outbound("caption", [pdf])) == [wire.Step(text="caption"), wire.Step(media=pdf)]
    assert wire.plan_delivery(outbound(None, [pdf])) == [wire.Step(media=pdf)]
    with pytest.raises(ValueError):
        wire.plan_delivery(outbound("   "))


def test_api_error_mapping() -> None:
    limited = wire.api_error("chat.postMessage", 429, "ratelimited", "7")
    assert isinstance(limited, TransientError) and limited.retry_after == 7 and limited.status_code == 429
    assert isinstance(wire.api_error("chat.postMessage", 200, "ratelimited", None), TransientError)
    for code in ("channel_not_found", "not_in_channel", "invalid_auth", "account_inactive", "no_text", "msg_too_long"):
        error = wire.api_error("chat.postMessage", 200, code, None)
        assert isinstance(error, PermanentError) and code in error.message
    assert "invite" in wire.api_error("chat.postMessage", 200, "not_in_channel", None).message
    assert isinstance(wire.api_error("chat.postMessage", 502, None, None), TransientError)
    assert isinstance(wire.api_error("chat.postMessage", 200, "internal_error", None), TransientError)
    assert isinstance(wire.api_error("chat.postMessage", 200, "something_new", None), PermanentError)
    assert isinstance(wire.api_error("chat.postMessage", 404, None, None), PermanentError)


def test_answers() -> None:
    assert wire.posted_id({"ok": True, "channel": "D0DM", "ts": "1.5"}, "U0USER") == "D0DM:1.5"
    assert wire.posted_id({"ok": True}, "C1") is None
    assert wire.uploaded_file_ids({"files": [{"id": "F1"}, {"x": 1}, "y"]}) == ["F1"]
    assert wire.api_url(None) == "https://slack.com/api/"
    assert wire.api_url("http://127.0.0.1:9/api") == "http://127.0.0.1:9/api/"
    assert filename_for("https://cdn/a/b%20c.pdf?sig=1", None) == "b c.pdf"
    assert filename_for("https://cdn/", None) == "file"
    assert filename_for("https://cdn/x", "given.txt") == "given.txt"


def test_delivery_progress_is_bounded() -> None:
    progress = DeliveryProgress(limit=2)
    for i in range(3):
        progress.save(f"m{i}", Progress(done=i))
    assert len(progress) == 2 and progress.get("m0") == Progress() and progress.get("m2").done == 2
    progress.forget("m2")
    assert progress.get("m2") == Progress()


# --- instances --------------------------------------------------------------------------------------------
def test_create_options_and_auth_patch() -> None:
    opts = wire.create_options({"bot_token": " xoxb-1 ", "signing_secret": "s", "app_id": "A1", "qrcode": True})
    assert opts == wire.CreateOptions("xoxb-1", "s", "A1", None)
    with pytest.raises(ValueError, match="bot_token and signing_secret"):
        wire.create_options({})
    with pytest.raises(ValueError, match="team_id"):
        wire.create_options({"bot_token": "x", "signing_secret": "s", "team_id": ""})
    answer = {"ok": True, "team": "Acme", "team_id": "T1", "user_id": "U1", "bot_id": "B1", "url": "https://a/"}
    assert wire.auth_patch(answer) == {
        "bot_user_id": "U1",
        "bot_id": "B1",
        "team_id": "T1",
        "team": "Acme",
        "url": "https://a/",
    }
    wire.check_team("T1", answer)
    wire.check_team(None, answer)
    with pytest.raises(ValueError):
        wire.check_team("T2", answer)


def instance(name: str, tenant: str = "acme", **config: Any) -> Instance:
    return Instance(
        id=f"ins_{name}", tenant=tenant, name=name, channel="slack", config={"signing_secret": "s", **config}
    )


def test_candidates() -> None:
    exact = instance("exact", app_id="A1", team_id="T1")
    app_only = instance("app-only", app_id="A1")
    bare = instance("bare")
    other_app = instance("other-app", app_id="A2", team_id="T1")
    other_team = instance("other-team", app_id="A1", team_id="T9")
    no_secret = Instance(id="ins_x", tenant="acme", name="x", channel="slack", config={"app_id": "A1"})
    everyone = [exact, app_only, bare, other_app, other_team, no_secret]
    found = wire.candidates(everyone, payloads.envelope({}, team="T1", app="A1"))
    assert [(score, i.name) for score, i in found] == [(2, "exact"), (1, "app-only"), (0, "bare")]
    assert wire.best(found) == [exact]
    # url_verification names no app or team: every instance with a secret is a candidate.
    assert {i.name for _, i in wire.candidates(everyone, payloads.url_verification())} == {
        "exact",
        "app-only",
        "bare",
        "other-app",
        "other-team",
    }
    # Slack Connect: the installing workspace is in authorizations.
    shared = payloads.envelope({}, team="T0THEIRS", app="A1")
    shared["authorizations"][0]["team_id"] = "T1"
    assert wire.best(wire.candidates(everyone, shared)) == [exact]
    assert wire.best([]) == []
