"""Pure parts of the Discord plugin: signatures, config, reply planning, interactions, addresses."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from omni_discord.normalize import normalize_address, normalize_event, snowflake_time
from omni_discord.wire import (
    SIGNATURE_MAX_AGE_SECONDS,
    check_application,
    compose_text,
    interaction_target,
    is_deferred_original,
    nonce_for,
    parse_config,
    plan_posts,
    signature_problem,
)

from omni_core import Ignored, Message

from . import payloads as p

APP = "1300000000000000001"

# --- signatures ----------------------------------------------------------------------------------------


def test_known_vector_verifies_and_pynacl_reproduces_it() -> None:
    now = float(p.VECTOR_TIMESTAMP)
    body = p.VECTOR_BODY.encode()
    assert signature_problem(p.TEST_PUBLIC_KEY, p.VECTOR_SIGNATURE, p.VECTOR_TIMESTAMP, body, now) is None
    key = p.signing_key()
    assert p.public_key_hex(key) == p.TEST_PUBLIC_KEY
    assert key.sign(p.VECTOR_TIMESTAMP.encode() + body).signature.hex() == p.VECTOR_SIGNATURE


def test_signature_rejections() -> None:
    key = p.signing_key()
    body = p.encode(p.ping(APP))
    ts = str(int(time.time()))
    good = p.signed_headers(key, body, ts)["x-signature-ed25519"]
    now = time.time()
    assert signature_problem(p.TEST_PUBLIC_KEY, good, ts, body, now) is None
    assert signature_problem(p.TEST_PUBLIC_KEY, good, ts, body + b" ", now) == "invalid request signature"
    assert signature_problem(p.TEST_PUBLIC_KEY, good, str(int(ts) + 1), body, now) == "invalid request signature"
    other = p.public_key_hex(p.signing_key(bytes(range(2, 34))))
    assert signature_problem(other, good, ts, body, now) == "invalid request signature"
    assert signature_problem(p.TEST_PUBLIC_KEY, None, ts, body, now) is not None
    assert signature_problem(p.TEST_PUBLIC_KEY, "zz" * 64, ts, body, now) is not None
    assert signature_problem(p.TEST_PUBLIC_KEY, good, "yesterday", body, now) is not None


def test_stale_window_is_five_minutes_either_way() -> None:
    key = p.signing_key()
    body = p.encode(p.ping(APP))
    now = 1_761_057_130.0
    for offset, ok in ((0, True), (299, True), (-299, True), (301, False), (-301, False), (3600, False)):
        ts = str(int(now) + offset)
        signature = p.signed_headers(key, body, ts)["x-signature-ed25519"]
        problem = signature_problem(p.TEST_PUBLIC_KEY, signature, ts, body, now)
        assert (problem is None) is ok, (offset, problem)
        if not ok:
            assert problem is not None and "stale" in problem
    assert SIGNATURE_MAX_AGE_SECONDS == 300


# --- config ----------------------------------------------------------------------------------------------


def test_parse_config_normalizes() -> None:
    config = parse_config(
        {
            "bot_token": " Bot abc.def ",
            "application_id": int(APP),
            "public_key": p.TEST_PUBLIC_KEY.upper(),
            "listen_channels": [p.CHANNEL_ID, int(p.OTHER_CHANNEL_ID), p.CHANNEL_ID],
        }
    )
    assert config.bot_token == "abc.def"
    assert config.application_id == APP
    assert config.public_key == p.TEST_PUBLIC_KEY
    assert config.listen_channels == (p.CHANNEL_ID, p.OTHER_CHANNEL_ID)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bot_token": ""}, "bot_token"),
        ({"bot_token": "two words"}, "bot_token"),
        ({"application_id": "acme"}, "application_id"),
        ({"public_key": "abc"}, "public_key"),
        ({"listen_channels": "1100000000000000003"}, "listen_channels"),
        ({"listen_channels": ["general"]}, "listen_channels"),
    ],
)
def test_parse_config_names_the_bad_field(change: dict[str, object], field: str) -> None:
    base = {"bot_token": "abc", "application_id": APP, "public_key": p.TEST_PUBLIC_KEY}
    with pytest.raises(ValueError, match=field):
        parse_config({**base, **change})


def test_check_application() -> None:
    config = parse_config({"bot_token": "abc", "application_id": APP, "public_key": p.TEST_PUBLIC_KEY})
    check_application({"id": APP, "verify_key": p.TEST_PUBLIC_KEY}, config)
    with pytest.raises(ValueError, match="application_id"):
        check_application({"id": "1300000000000000099", "verify_key": p.TEST_PUBLIC_KEY}, config)
    with pytest.raises(ValueError, match="public_key"):
        check_application({"id": APP, "verify_key": "00" * 32}, config)


# --- planning replies --------------------------------------------------------------------------------------


def _long_text(n: int) -> str:
    sentence = "The order ships from the Lisbon warehouse on Monday. "
    return (sentence * (n // len(sentence) + 1))[:n]


def test_a_4500_char_reply_becomes_three_ordered_posts() -> None:
    text = _long_text(4500)
    posts = plan_posts(text, 0, reply_to="1370000000000000070", seed="msg_1")
    assert len(posts) == 3
    assert all(post.content is not None and len(post.content) <= 2000 for post in posts)
    assert " ".join(post.content or "" for post in posts).split() == text.split()
    assert [post.reference for post in posts] == ["1370000000000000070", None, None]
    nonces = [post.nonce for post in posts]
    assert len(set(nonces)) == 3 and all(n is not None and len(n) <= 25 for n in nonces)
    # Stable across retries: Discord deduplicates a re-sent part by its nonce.
    assert nonces == [post.nonce for post in plan_posts(text, 0, reply_to="1370000000000000070", seed="msg_1")]
    assert nonces != [post.nonce for post in plan_posts(text, 0, reply_to=None, seed="msg_2")]


def test_files_ride_on_the_last_text_post_ten_per_message() -> None:
    posts = plan_posts("caption", 12, reply_to="1", seed="s")
    assert [(post.content, post.files) for post in posts] == [
        ("caption", tuple(range(10))),
        (None, (10, 11)),
    ]
    only_files = plan_posts("", 2, reply_to="1", seed="s")
    assert [(post.content, post.files, post.reference) for post in only_files] == [(None, (0, 1), "1")]
    assert plan_posts("", 0, reply_to=None, seed="s") == []
    assert plan_posts("x", 0, reply_to=None, seed="s", with_nonce=False)[0].nonce is None
    assert len(nonce_for("msg_01JABCDEFGHJKMNPQRSTVWXYZ0", 999)) == 25


def test_compose_text() -> None:
    assert compose_text("hello", ["a caption"], []) == "hello"
    assert compose_text(None, ["a caption"], []) == "a caption"
    assert compose_text("see", [], ["https://x/big.mp4"]) == "see\nhttps://x/big.mp4"
    assert compose_text(None, [], ["https://x/big.mp4"]) == "https://x/big.mp4"


# --- interactions ------------------------------------------------------------------------------------------


def test_interaction_target_expires_with_the_token() -> None:
    interaction_id = p.fresh_id()
    meta = {"interaction_id": interaction_id, "application_id": APP, "interaction_token": "tok"}
    created = snowflake_time(interaction_id)
    target = interaction_target(meta, created + timedelta(minutes=1))
    assert target is not None and target.token == "tok" and target.application_id == APP
    assert interaction_target(meta, created + timedelta(minutes=15)) is None
    assert interaction_target({"application_id": APP}, created) is None


def test_deferred_original() -> None:
    assert is_deferred_original({"flags": 128, "content": ""})
    assert not is_deferred_original({"flags": 0, "content": "done"})
    assert not is_deferred_original(None)


def test_slash_command_normalizes_to_an_inbound_message() -> None:
    data = p.interaction_command(APP)
    events = normalize_event("acme", "acme-discord", {"t": "INTERACTION_CREATE", "d": data})
    (msg,) = events
    assert isinstance(msg, Message)
    assert msg.external_id == data["id"]
    assert msg.content.text == "Is order 4521 shipped?"
    meta = msg.content.metadata
    assert meta["interaction_token"] == data["token"]
    assert meta["application_id"] == APP
    assert meta["command"] == "ask"
    assert meta["options"] == {"question": "Is order 4521 shipped?"}
    assert msg.chat.id == p.CHANNEL_ID and msg.chat.type == "channel"
    assert msg.sender.id == p.USER_ID and msg.sender.name == "Maria Silva"
    # The interaction's own time (its snowflake), not the hub's clock.
    assert abs(datetime.fromisoformat(msg.timestamp.replace("Z", "+00:00")) - datetime.now(UTC)) < timedelta(minutes=1)


def test_other_commands_and_dms() -> None:
    data = p.interaction_command(
        APP,
        name="order",
        options=[{"name": "number", "type": 4, "value": 4521}, {"name": "urgent", "type": 5, "value": True}],
        guild=False,
        channel_id=p.DM_CHANNEL_ID,
    )
    (msg,) = normalize_event("acme", "acme-discord", {"t": "INTERACTION_CREATE", "d": data})
    assert isinstance(msg, Message)
    assert msg.content.text == "/order number:4521 urgent:True"
    assert msg.chat.type == "direct" and msg.chat.id == p.DM_CHANNEL_ID
    sub = p.interaction_command(
        APP,
        name="ticket",
        options=[{"name": "open", "type": 1, "options": [{"name": "topic", "type": 3, "value": "refund"}]}],
    )
    (msg,) = normalize_event("acme", "acme-discord", {"t": "INTERACTION_CREATE", "d": sub})
    assert isinstance(msg, Message)
    assert msg.content.text == "refund"
    assert msg.content.metadata["subcommand"] == ["open"]
    component = {**data, "type": 3}
    (ignored,) = normalize_event("acme", "acme-discord", {"t": "INTERACTION_CREATE", "d": component})
    assert isinstance(ignored, Ignored)


def test_malformed_payloads_name_the_problem() -> None:
    with pytest.raises(ValueError, match="object"):
        normalize_event("acme", "acme-discord", ["not", "a", "dict"])
    with pytest.raises(ValueError, match="channel_id"):
        bad = p.message_create("x")
        del bad["channel_id"]
        normalize_event("acme", "acme-discord", {"t": "MESSAGE_CREATE", "d": bad})
    with pytest.raises(ValueError, match="token"):
        bad_interaction = p.interaction_command(APP)
        del bad_interaction["token"]
        normalize_event("acme", "acme-discord", {"t": "INTERACTION_CREATE", "d": bad_interaction})
    (ignored,) = normalize_event("acme", "acme-discord", {"t": "TYPING_START", "d": {}})
    assert isinstance(ignored, Ignored)


def test_empty_message_is_ignored_with_a_hint() -> None:
    data = p.message_create("", guild=False, channel_id=p.DM_CHANNEL_ID)
    (ignored,) = normalize_event("acme", "acme-discord", {"t": "MESSAGE_CREATE", "d": data})
    assert isinstance(ignored, Ignored) and "MESSAGE_CONTENT" in ignored.reason


# --- addresses --------------------------------------------------------------------------------------------


def test_addresses() -> None:
    assert normalize_address(" 1100000000000000003 ") == "1100000000000000003"
    assert normalize_address("<#1100000000000000003>") == "1100000000000000003"
    assert normalize_address("<@!1000000000000000004>") == "user:1000000000000000004"
    assert normalize_address("user:1000000000000000004") == "user:1000000000000000004"
    with pytest.raises(ValueError):
        normalize_address("#general")


# --- error mapping ------------------------------------------------------------------------------------------


def test_discord_errors_map_to_the_queue_errors() -> None:
    import discord
    from omni_discord.client import external_error

    from omni_core import PermanentError, TransientError

    limited = external_error("create message", discord.RateLimited(64.57))
    assert isinstance(limited, TransientError)
    assert limited.retry_after == 64.57 and limited.status_code == 429
    assert isinstance(external_error("x", discord.LoginFailure("bad")), PermanentError)
    assert isinstance(external_error("x", TimeoutError()), TransientError)
    assert isinstance(external_error("x", ConnectionResetError()), TransientError)
