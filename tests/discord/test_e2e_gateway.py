"""End to end over real sockets: the hub process, the fake Discord gateway and REST API, the fake Hive agent.

Inbound messages travel Discord -> fake gateway (WebSocket) -> discord.py in the hub -> ingest -> Hive;
replies travel back through discord.py's HTTP client to the fake REST API.
"""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.helpers import history, message, wait_status, wait_until
from tests.fakes.discord import FakeDiscord
from tests.fakes.hive import FakeHive
from tests.hub_process import HubProcess

from . import payloads as p
from .conftest import BOT_A, BOT_B, create_instance, instance_state, register, setup_discord


def inbound(hub: HubProcess, tenant: str, external_id: str, timeout: float = 10.0) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for m in history(hub, tenant, direction="inbound"):
            if m["external_id"] == external_id:
                return m
        return None

    found: dict[str, Any] = wait_until(find, timeout, what=f"inbound message {external_id}")
    return found


def outbound(hub: HubProcess, tenant: str) -> list[dict[str, Any]]:
    return list(reversed(history(hub, tenant, direction="outbound")))


def test_instance_create_validates_with_discord_and_connects(
    discord_hub: HubProcess, fake_discord: FakeDiscord
) -> None:
    hub = discord_hub
    hub.create_tenant("acme")
    body = create_instance(hub, "acme", "acme-discord", BOT_A, listen_channels=[int(p.OTHER_CHANNEL_ID)]).json()
    assert body["channel"] == "discord"
    config = body["config"]
    assert config["bot_token"] == "***" and config["public_key"] == "***"  # secrets are write-only
    assert config["application_id"] == BOT_A.application_id
    assert config["bot_user_id"] == BOT_A.user_id
    assert config["listen_channels"] == [p.OTHER_CHANNEL_ID]
    assert body["state"] in ("connecting", "ready")
    fake_discord.gateway.wait_live(BOT_A.token)
    wait_until(lambda: instance_state(hub, body["id"])["state"] == "ready", 10, what="ready")
    assert hub.admin.get(f"/instances/{body['id']}").json()["state"] == "ready"
    assert fake_discord.requests_to("/api/v10/users/@me", "GET")
    assert fake_discord.requests_to("/api/v10/gateway/bot", "GET")
    # No QR pairing on Discord.
    assert hub.admin.get(f"/instances/qr/{body['id']}").status_code == 400

    # The same application cannot be connected twice.
    create_instance(hub, "acme", "acme-discord-2", BOT_A, expect=409)


def test_instance_create_rejects_bad_credentials(discord_hub: HubProcess, fake_discord: FakeDiscord) -> None:
    hub = discord_hub
    hub.create_tenant("acme")
    r = hub.admin.post(
        "/instances/create",
        json={"instanceName": "x", "tenant": "acme", "channel": "discord", "bot_token": "abc", "public_key": "zz"},
    )
    assert r.status_code == 400 and "application_id" in r.json()["error"]["message"]
    fake_discord.revoke(BOT_B.token)
    r = create_instance(hub, "acme", "bad-token", BOT_B, expect=502)
    assert "401" in r.json()["error"]["message"]
    # A public key that is not the application's.
    wrong_key = {
        "instanceName": "wrong-key",
        "tenant": "acme",
        "channel": "discord",
        "bot_token": BOT_A.token,
        "application_id": BOT_A.application_id,
        "public_key": BOT_B.public_key,
    }
    r = hub.admin.post("/instances/create", json=wrong_key)
    assert r.status_code == 400 and "public_key" in r.json()["error"]["message"]
    assert hub.admin.get("/instances").json()["instances"] == []
    assert fake_discord.gateway.live_sessions(BOT_A.token) == 0


def test_dm_round_trip_replies_with_message_reference(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    data = p.message_create("Hi! Is order 4521 shipped?", guild=False, channel_id=p.DM_CHANNEL_ID)
    assert fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data) == 1
    hive.wait_for(1, timeout=10)
    assert hive.received_texts() == ["Hi! Is order 4521 shipped?"]
    (posted,) = fake_discord.wait_for(1, timeout=10)
    assert posted.channel_id == p.DM_CHANNEL_ID
    assert posted.content == "echo: Hi! Is order 4521 shipped?"
    assert posted.reference == data["id"]
    assert posted.payload["allowed_mentions"]["parse"] == ["users"]
    assert posted.payload["enforce_nonce"] is True
    assert posted.bot_token == BOT_A.token

    msg = inbound(hub, "acme", data["id"])
    assert msg["chat"] == {"id": p.DM_CHANNEL_ID, "type": "direct", "thread_id": None, "name": None}
    assert msg["sender"]["id"] == p.USER_ID
    (reply,) = outbound(hub, "acme")
    done = wait_status(hub, reply["id"], "sent")
    assert done["external_id"] == posted.id
    assert done["content"]["metadata"]["in_reply_to_external_id"] == data["id"]

    # The same gateway event again (e.g. replayed after a RESUME) is stored once.
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    time.sleep(0.5)
    assert len(history(hub, "acme", direction="inbound")) == 1
    assert len(hive.processed()) == 1


def test_guild_mentions_threads_and_listen_channels(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord, listen_channels=[p.OTHER_CHANNEL_ID])
    mention = [p.bot_user(BOT_A.user_id)]
    ignored = p.message_create("nobody asked the bot")
    asked = p.message_create(f"<@{BOT_A.user_id}> is order 4521 shipped?", mentions=mention)
    in_thread = p.message_create(
        f"<@{BOT_A.user_id}> and 4522?", channel_id=p.THREAD_ID, channel_type=11, mentions=mention
    )
    listened = p.message_create("anyone here?", channel_id=p.OTHER_CHANNEL_ID)
    for data in (ignored, asked, in_thread, listened):
        fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    hive.wait_for(3, timeout=10)
    posts = fake_discord.wait_for(3, timeout=10)
    expected = ["is order 4521 shipped?", "and 4522?", "anyone here?"]
    assert sorted(t or "" for t in hive.received_texts()) == sorted(expected)
    by_channel = {post.channel_id: post for post in posts}
    assert by_channel[p.CHANNEL_ID].reference == asked["id"]
    assert by_channel[p.THREAD_ID].reference == in_thread["id"]  # the reply goes into the thread
    assert by_channel[p.OTHER_CHANNEL_ID].reference == listened["id"]

    thread_msg = inbound(hub, "acme", in_thread["id"])
    assert thread_msg["chat"]["id"] == p.CHANNEL_ID
    assert thread_msg["chat"]["thread_id"] == p.THREAD_ID
    assert thread_msg["chat"]["type"] == "channel"
    ids = {m["external_id"] for m in history(hub, "acme", direction="inbound")}
    assert ignored["id"] not in ids


def _long_reply_round_trip(hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive) -> tuple[str, Any]:
    sentence = "Your order left the Lisbon warehouse this morning and will arrive on Friday. "
    long_reply = (sentence * 60)[:4500]
    hive.responder = lambda body: {"reply": long_reply}
    data = p.message_create("status?", guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    fake_discord.wait_for(3, timeout=10)
    time.sleep(0.3)
    posts = fake_discord.posted()
    assert len(posts) == 3
    assert all(post.content is not None and len(post.content) <= 2000 for post in posts)
    assert " ".join(post.content or "" for post in posts).split() == long_reply.split()
    assert [post.reference for post in posts] == [data["id"], None, None]
    assert len({post.payload["nonce"] for post in posts}) == 3
    return data["id"], posts


def test_long_reply_split_by_the_hub_quotes_only_in_the_first_part(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    _, posts = _long_reply_round_trip(hub, fake_discord, hive)
    # The hub split the reply into three outbound messages (parts), each delivered as one Discord message.
    replies = outbound(hub, "acme")
    assert [r["content"]["metadata"].get("part") for r in replies] == [1, 2, 3]
    for reply, post in zip(replies, posts, strict=True):
        assert wait_status(hub, reply["id"], "sent")["external_id"] == post.id


def test_long_reply_split_by_the_plugin_when_the_hub_does_not(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord, split_messages=False)
    _, posts = _long_reply_round_trip(hub, fake_discord, hive)
    (reply,) = outbound(hub, "acme")
    done = wait_status(hub, reply["id"], "sent")
    assert done["external_id"] == posts[0].id  # the receipt names the first Discord message


def test_429_is_waited_out_by_discord_py_then_sent_once(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    fake_discord.rate_limit_next(1, retry_after=0.4, path="/messages")
    data = p.message_create("hello", guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    (posted,) = fake_discord.wait_for(1, timeout=10)
    attempts = fake_discord.requests_to(f"/api/v10/channels/{p.DM_CHANNEL_ID}/messages", "POST")
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[1].time - attempts[0].time >= 0.35  # slept for retry_after
    (reply,) = outbound(hub, "acme")
    done = wait_status(hub, reply["id"], "sent")
    assert done["external_id"] == posted.id
    assert [a["outcome"] for a in done["attempts"] if a["stage"] == "deliver"] == ["ok"]


def test_long_429_goes_back_to_the_queue_with_retry_after(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    # Longer than discord.py may sleep inside a delivery (30 s): the delivery fails with a TransientError
    # carrying retry_after, and the hub's queue (not a sleeping worker) waits it out.
    fake_discord.rate_limit_next(1, retry_after=64.57, path="/messages")
    data = p.message_create("hello", guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)

    def rate_limited() -> dict[str, Any] | None:
        replies = outbound(hub, "acme")
        if not replies:
            return None
        detail = message(hub, replies[0]["id"])
        return detail if any(a["status_code"] == 429 for a in detail["attempts"]) else None

    detail = wait_until(rate_limited, 10, what="the rate-limited attempt")
    (attempt,) = [a for a in detail["attempts"] if a["stage"] == "deliver"]
    assert attempt["outcome"] in ("rate_limited", "retry")
    assert "rate limited for 64.6s" in attempt["error"]
    time.sleep(1.5)
    assert [r.status for r in fake_discord.requests_to("/api/v10/channels/", "POST")] == [429]
    # Waiting for the queue's retry: neither sent nor given up.
    assert message(hub, detail["id"])["status"] not in ("sent", "failed", "dead")


def test_permanent_errors_are_not_retried(discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    for status in (403, 404, 401):
        fake_discord.fail_next(1, status, path="/messages")
        data = p.message_create(f"hello {status}", guild=False, channel_id=p.DM_CHANNEL_ID)
        fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)

        def failed_reply(text: str = f"echo: hello {status}") -> dict[str, Any] | None:
            for m in outbound(hub, "acme"):
                if m["content"]["text"] == text and m["status"] == "failed":
                    return m
            return None

        reply = wait_until(failed_reply, 10, what=f"reply failed after {status}")
        attempts = [a for a in wait_status(hub, reply["id"], "failed")["attempts"] if a["stage"] == "deliver"]
        assert [(a["outcome"], a["status_code"]) for a in attempts] == [("dead", status)]
    assert fake_discord.posted() == []


def test_bot_loop_prevention(discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord, listen_channels=[p.CHANNEL_ID])
    other_bot = p.message_create(
        f"<@{BOT_A.user_id}> ping", author=p.bot_user(p.OTHER_BOT_ID, "other-bot"), mentions=[p.bot_user(BOT_A.user_id)]
    )
    hooked = p.message_create("deploy finished", author=p.user(p.WEBHOOK_ID, "CI"), webhook_id=p.WEBHOOK_ID)
    own = p.message_create("echo: something", author=p.bot_user(BOT_A.user_id))
    person = p.message_create("and a person")
    for data in (other_bot, hooked, own, person):
        fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    hive.wait_for(1, timeout=10)
    inbound(hub, "acme", person["id"])
    bot_msg = inbound(hub, "acme", other_bot["id"])
    hook_msg = inbound(hub, "acme", hooked["id"])
    time.sleep(0.5)
    assert hive.received_texts() == ["and a person"]  # bots and webhooks are stored, never routed
    assert bot_msg["sender"]["is_bot"] and hook_msg["sender"]["is_bot"]
    assert bot_msg["status"] == "received" and hook_msg["status"] == "received"  # stored, no route job
    assert own["id"] not in {m["external_id"] for m in history(hub, "acme", direction="inbound")}
    # Our reply comes back over the gateway as a bot message from ourselves: nothing more happens.
    (posted,) = fake_discord.wait_for(1, timeout=10)
    echo = p.message_create(posted.content or "", author=p.bot_user(BOT_A.user_id), message_id=posted.id)
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", echo)
    time.sleep(0.5)
    assert len(hive.processed()) == 1
    assert len(fake_discord.posted()) == 1


def test_attachments_in_and_out(discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive) -> None:
    hub = discord_hub
    instance = setup_discord(hub, fake_discord)
    pdf = p.attachment()
    data = p.message_create("my invoice", guild=False, channel_id=p.DM_CHANNEL_ID, attachments=[pdf])
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    stored = inbound(hub, "acme", data["id"])
    assert stored["content"]["type"] == "document"
    assert stored["content"]["media"][0]["url"] == pdf["url"]
    fake_discord.wait_for(1, timeout=10)

    url = fake_discord.add_file("label.png", b"\x89PNG fake image bytes", "image/png")
    r = hub.admin.post(
        "/messages/send",
        json={
            "instance": instance["name"],
            "tenant": "acme",
            "to": p.DM_CHANNEL_ID,
            "text": "your shipping label",
            "media": [{"url": url, "mime_type": "image/png"}],
        },
    )
    assert r.status_code == 202, r.text
    wait_status(hub, r.json()["id"], "sent")
    posted = fake_discord.posted()[-1]
    assert posted.content == "your shipping label"
    assert posted.files == [("label.png", b"\x89PNG fake image bytes")]
    assert posted.payload["attachments"] == [{"id": 0, "filename": "label.png"}]

    # A DM to a user the bot has not talked to yet: the DM channel is opened first.
    r = hub.admin.post(
        "/messages/send",
        json={"instance": instance["name"], "tenant": "acme", "to": f"<@{p.USER_ID}>", "text": "hello there"},
    )
    assert r.status_code == 202, r.text
    wait_status(hub, r.json()["id"], "sent")
    assert fake_discord.requests_to("/api/v10/users/@me/channels", "POST")
    assert fake_discord.posted()[-1].content == "hello there"


def test_one_failing_instance_does_not_affect_another(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    a = setup_discord(hub, fake_discord, "acme", "acme-discord", BOT_A)
    b = setup_discord(hub, fake_discord, "globex", "globex-discord", BOT_B)

    # A's token is reset in the developer portal: Discord closes its session with 4004.
    fake_discord.revoke(BOT_A.token)
    fake_discord.disconnect(BOT_A.token, 4004)
    wait_until(lambda: instance_state(hub, a["id"])["state"] == "failed", 10, what="A failed")
    assert "4004" in (instance_state(hub, a["id"])["reason"] or "")
    assert instance_state(hub, b["id"])["state"] == "ready"

    data = p.message_create("still there?", guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.dispatch(BOT_B.token, "MESSAGE_CREATE", data)
    (posted,) = fake_discord.wait_for(1, timeout=10)
    assert posted.bot_token == BOT_B.token and posted.reference == data["id"]

    # After a restart A fails at login (401) and B connects again.
    hub.restart()
    fake_discord.gateway.wait_live(BOT_B.token)
    wait_until(lambda: instance_state(hub, a["id"])["state"] == "failed", 10, what="A failed after restart")
    assert "401" in (instance_state(hub, a["id"])["reason"] or "")
    wait_until(lambda: instance_state(hub, b["id"])["state"] == "ready", 10, what="B ready after restart")
    data = p.message_create("after restart", guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.dispatch(BOT_B.token, "MESSAGE_CREATE", data)
    wait_until(lambda: len(fake_discord.posted()) == 2, 10, what="second reply")

    # Sending through the failed instance fails for good, at once.
    r = hub.admin.post(
        "/messages/send", json={"instance": a["name"], "tenant": "acme", "to": p.DM_CHANNEL_ID, "text": "x"}
    )
    failed = wait_status(hub, r.json()["id"], "failed")
    assert "401" in failed["attempts"][-1]["error"]


def test_gateway_drop_resumes_and_delete_disconnects(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    instance = setup_discord(hub, fake_discord)
    assert fake_discord.disconnect(BOT_A.token, 4000) == 1  # an unexpected close: discord.py RESUMEs
    fake_discord.gateway.wait_until(lambda: fake_discord.gateway.count(BOT_A.token, "resume") >= 1, 15, what="resume")
    fake_discord.gateway.wait_live(BOT_A.token)
    wait_until(lambda: instance_state(hub, instance["id"])["state"] == "ready", 10, what="ready after resume")
    data = p.message_create("after the drop", guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.dispatch(BOT_A.token, "MESSAGE_CREATE", data)
    fake_discord.wait_for(1, timeout=10)
    assert fake_discord.gateway.count(BOT_A.token, "identify") == 1

    r = hub.admin.delete(f"/instances/{instance['id']}")
    assert r.status_code == 200, r.text
    fake_discord.gateway.wait_until(lambda: fake_discord.gateway.live_sessions(BOT_A.token) == 0, 10, what="closed")


def test_missing_message_content_intent_fails_the_instance(discord_hub: HubProcess, fake_discord: FakeDiscord) -> None:
    hub = discord_hub
    hub.create_tenant("acme")
    fake_discord.bot(BOT_A.token).message_content_intent = False
    body = create_instance(hub, "acme", "acme-discord", BOT_A).json()
    wait_until(lambda: instance_state(hub, body["id"])["state"] == "failed", 10, what="failed")
    assert "MESSAGE_CONTENT" in (instance_state(hub, body["id"])["reason"] or "")
    register(fake_discord, BOT_A)  # (the fixture's bots are shared by the session; restore)
