"""The interactions endpoint through the real hub: Ed25519 signatures (PyNaCl test keys), PING, slash commands
answered with a deferred response and completed by editing it (and follow-ups) on the fake Discord."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e.helpers import history, wait_status, wait_until
from tests.fakes.discord import FakeDiscord
from tests.fakes.hive import FakeHive
from tests.hub_process import HubProcess

from . import payloads as p
from .conftest import BOT_A, BOT_B, post_interaction, setup_discord


def test_ping_and_signature_checks(discord_hub: HubProcess, fake_discord: FakeDiscord) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    ping = p.ping(BOT_A.application_id)
    r = post_interaction(hub, BOT_A, ping)
    assert r.status_code == 200 and r.json() == {"type": 1}
    assert r.headers["content-type"] == "application/json"
    assert post_interaction(hub, BOT_A, ping, path="/webhooks/discord/acme").json() == {"type": 1}

    def rejected(r: httpx.Response) -> bool:
        return r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature"

    command = p.interaction_command(BOT_A.application_id)
    assert rejected(post_interaction(hub, BOT_A, command, tamper=True))
    stale = str(int(time.time()) - 400)
    assert rejected(post_interaction(hub, BOT_A, command, timestamp=stale))
    future = str(int(time.time()) + 400)
    assert rejected(post_interaction(hub, BOT_A, command, timestamp=future))
    # Signed with another application's key.
    assert rejected(post_interaction(hub, BOT_B, command))
    # An application the hub has no instance for.
    assert rejected(post_interaction(hub, BOT_B, p.ping(BOT_B.application_id)))
    # Another tenant's URL.
    hub.create_tenant("globex")
    assert rejected(post_interaction(hub, BOT_A, ping, path="/webhooks/discord/globex"))
    # No signature at all, and a body that is not JSON.
    body = p.encode(command)
    assert rejected(httpx.post(hub.url + "/webhooks/discord", content=body, timeout=10))
    raw = b"not json"
    assert rejected(httpx.post(hub.url + "/webhooks/discord", content=raw, headers=p.signed_headers(BOT_A.key, raw)))
    assert history(hub, "acme") == []


def test_slash_command_is_deferred_then_the_reply_edits_it(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    command = p.interaction_command(BOT_A.application_id)
    fake_discord.open_interaction(BOT_A.application_id, command["token"], p.CHANNEL_ID)
    started = time.monotonic()
    r = post_interaction(hub, BOT_A, command)
    assert r.status_code == 200 and r.json() == {"type": 5}
    assert time.monotonic() - started < 3  # Discord's deadline for the initial response

    hive.wait_for(1, timeout=10)
    assert hive.received_texts() == ["Is order 4521 shipped?"]
    (edit,) = fake_discord.wait_for(1, timeout=10)
    assert edit.kind == "original"
    assert edit.content == "echo: Is order 4521 shipped?"
    assert edit.payload["allowed_mentions"]["parse"] == ["users"]
    assert "nonce" not in edit.payload and "message_reference" not in edit.payload

    (stored,) = history(hub, "acme", direction="inbound")
    assert stored["external_id"] == command["id"]
    assert stored["content"]["metadata"]["application_id"] == BOT_A.application_id
    # The hub keeps the token to answer later, but never shows it: API readers see it redacted.
    assert stored["content"]["metadata"]["interaction_token"] == "***"
    assert command["token"] not in str(stored)
    assert stored["chat"]["id"] == p.CHANNEL_ID
    (reply,) = history(hub, "acme", direction="outbound")
    done = wait_status(hub, reply["id"], "sent")
    assert done["external_id"] == edit.id

    # Discord does not resend interactions, but a duplicate POST is still stored once.
    assert post_interaction(hub, BOT_A, command).json() == {"type": 5}
    time.sleep(0.3)
    assert len(history(hub, "acme", direction="inbound")) == 1


def test_several_replies_and_long_text_become_follow_ups(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    sentence = "Tracking shows the parcel in Madrid, due tomorrow before noon. "
    long_text = (sentence * 50)[:3000]

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        return {"messages": ["Let me check that order.", long_text]}

    hive.responder = responder
    command = p.interaction_command(BOT_A.application_id, guild=False, channel_id=p.DM_CHANNEL_ID)
    fake_discord.open_interaction(BOT_A.application_id, command["token"], p.DM_CHANNEL_ID)
    assert post_interaction(hub, BOT_A, command).json() == {"type": 5}
    fake_discord.wait_for(3, timeout=10)
    time.sleep(0.3)
    posts = fake_discord.posted()
    assert [post.kind for post in posts] == ["original", "followup", "followup"]
    assert posts[0].content == "Let me check that order."
    assert all(post.content is not None and len(post.content) <= 2000 for post in posts)
    assert " ".join(post.content or "" for post in posts[1:]).split() == long_text.split()
    followups = fake_discord.requests_to(f"/api/v10/webhooks/{BOT_A.application_id}/{command['token']}", "POST")
    assert all(r.query.get("wait") == "true" for r in followups)
    for reply in history(hub, "acme", direction="outbound"):
        wait_status(hub, reply["id"], "sent")


def test_expired_interaction_is_answered_in_the_channel(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    old_id = str(((int((time.time() - 20 * 60) * 1000) - 1_420_070_400_000) << 22) | 7)
    command = p.interaction_command(BOT_A.application_id, interaction_id=old_id)
    assert post_interaction(hub, BOT_A, command).json() == {"type": 5}
    (posted,) = fake_discord.wait_for(1, timeout=10)
    assert posted.kind == "channel" and posted.channel_id == p.CHANNEL_ID
    assert posted.reference is None  # an interaction is not a message that can be quoted
    wait_until(lambda: history(hub, "acme", direction="outbound")[0]["status"] == "sent", 10, what="sent")


def test_unknown_interaction_webhook_falls_back_to_the_channel(
    discord_hub: HubProcess, fake_discord: FakeDiscord, hive: FakeHive
) -> None:
    hub = discord_hub
    setup_discord(hub, fake_discord)
    command = p.interaction_command(BOT_A.application_id)  # Discord never opened it: its webhook answers 404
    assert post_interaction(hub, BOT_A, command).json() == {"type": 5}
    (posted,) = fake_discord.wait_for(1, timeout=10)
    assert posted.kind == "channel" and posted.channel_id == p.CHANNEL_ID
    original = fake_discord.requests_to(f"/api/v10/webhooks/{BOT_A.application_id}/{command['token']}")
    assert [r.status for r in original] == [404]
