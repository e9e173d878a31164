"""Gateway frames through discord.py's own websocket handling and parsers, then the hub's normalizer.

No network: realistic gateway frames (JSON text, as Discord sends them) are fed to a real
``discord.gateway.DiscordWebSocket.received_message`` bound to the plugin's client and connection state,
exactly as ``DiscordWebSocket.from_client`` wires them. What comes out is what the plugin would ingest.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from discord.gateway import DiscordWebSocket
from omni_discord.gateway import GatewayClient, InstanceRuntime
from omni_discord.normalize import normalize_event

from omni_core import Ignored, Instance, Message

from . import payloads as p

BOT = "1300000000000000001"


class Harness:
    def __init__(self, listen_channels: list[str] | None = None) -> None:
        self.instance = Instance(
            id="ins_test",
            tenant="acme",
            name="acme-discord",
            channel="discord",
            config={
                "bot_token": "test-token",
                "application_id": BOT,
                "public_key": p.TEST_PUBLIC_KEY,
                "listen_channels": listen_channels or [],
            },
        )
        self.runtime = InstanceRuntime(hub=None, instance=self.instance)  # type: ignore[arg-type]
        self.client = GatewayClient(self.runtime)
        self.runtime.client = self.client
        self.seq = 0
        self.ws: DiscordWebSocket | None = None

    async def connect(self, guilds: bool = True) -> None:
        await self.client._async_setup_hook()
        ws = DiscordWebSocket(socket=None, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        # What DiscordWebSocket.from_client does after opening the socket:
        ws._connection = self.client._connection
        ws._discord_parsers = self.client._connection.parsers
        ws._dispatch = self.client.dispatch
        ws.shard_id = None
        self.ws = ws
        await self.frame("READY", p.ready(BOT, BOT, [p.GUILD_ID] if guilds else []))
        if guilds:
            await self.frame("GUILD_CREATE", p.guild_create(BOT))

    async def frame(self, event: str, data: dict[str, Any]) -> None:
        assert self.ws is not None
        self.seq += 1
        await self.ws.received_message(json.dumps({"op": 0, "t": event, "s": self.seq, "d": data}))

    def taken(self) -> list[dict[str, Any]]:
        out = []
        while not self.runtime._queue.empty():
            out.append(self.runtime._queue.get_nowait())
        return out

    async def close(self) -> None:
        ready_task = self.client._connection._ready_task  # discord.py's wait for more GUILD_CREATEs
        if ready_task is not None:
            ready_task.cancel()
        await self.client.close()


def normalized(envelope: dict[str, Any]) -> Message:
    events = normalize_event("acme", "acme-discord", envelope)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, Message), event
    return event


async def test_dm_is_taken_and_normalized() -> None:
    h = Harness()
    await h.connect()
    data = p.message_create("Hi! Is order 4521 shipped?", guild=False, channel_id=p.DM_CHANNEL_ID)
    await h.frame("MESSAGE_CREATE", data)
    (envelope,) = h.taken()
    assert envelope["d"] == data  # the raw dict discord.py decoded, untouched
    assert envelope["trigger"] == "dm"
    assert envelope["bot_user_id"] == BOT  # from READY, parsed by discord.py
    msg = normalized(envelope)
    assert msg.external_id == data["id"]
    assert msg.chat.id == p.DM_CHANNEL_ID and msg.chat.type == "direct" and msg.chat.thread_id is None
    assert msg.sender.id == p.USER_ID and msg.sender.name == "Maria Silva"
    assert not msg.sender.is_bot and not msg.sender.is_self
    assert msg.content.type == "text" and msg.content.text == "Hi! Is order 4521 shipped?"
    assert msg.direction == "inbound" and msg.source == "discord"
    assert msg.timestamp == "2025-10-21T14:32:10.512Z"
    await asyncio.sleep(0.01)
    assert h.runtime.state == "ready"  # on_connect ran
    await h.close()


async def test_guild_message_needs_a_mention_and_the_mention_is_stripped() -> None:
    h = Harness()
    await h.connect()
    await h.frame("MESSAGE_CREATE", p.message_create("just chatting"))
    await h.frame("MESSAGE_CREATE", p.message_create("hey @everyone", mentions=[]))
    assert h.taken() == []
    data = p.message_create(f"<@{BOT}> where is my order?", mentions=[p.bot_user(BOT)], nick="Mari")
    await h.frame("MESSAGE_CREATE", data)
    (envelope,) = h.taken()
    msg = normalized(envelope)
    assert envelope["trigger"] == "mention"
    assert msg.content.text == "where is my order?"
    assert msg.chat.id == p.CHANNEL_ID and msg.chat.type == "channel" and msg.chat.name == "support"
    assert msg.sender.name == "Mari"  # the guild nickname wins
    assert msg.content.metadata["guild_id"] == p.GUILD_ID
    assert msg.content.metadata["mentions_bot"] is True
    await h.close()


async def test_listen_channels_take_every_message() -> None:
    h = Harness(listen_channels=[p.OTHER_CHANNEL_ID])
    await h.connect()
    await h.frame("MESSAGE_CREATE", p.message_create("in general", channel_id=p.OTHER_CHANNEL_ID))
    await h.frame("MESSAGE_CREATE", p.message_create("in support, no mention"))
    (envelope,) = h.taken()
    assert envelope["trigger"] == "listen_channel"
    assert normalized(envelope).chat.id == p.OTHER_CHANNEL_ID
    await h.close()


async def test_thread_message_keeps_its_thread_under_the_parent_channel() -> None:
    h = Harness()
    await h.connect()
    data = p.message_create(f"<@{BOT}> any news?", channel_id=p.THREAD_ID, channel_type=11, mentions=[p.bot_user(BOT)])
    await h.frame("MESSAGE_CREATE", data)
    (envelope,) = h.taken()
    assert envelope["channel"]["parent_id"] == p.CHANNEL_ID  # known from GUILD_CREATE's threads
    msg = normalized(envelope)
    assert msg.chat.id == p.CHANNEL_ID
    assert msg.chat.thread_id == p.THREAD_ID
    assert msg.chat.name == "Order 4521"
    await h.close()


async def test_thread_unknown_to_the_cache_still_keeps_its_thread_id() -> None:
    h = Harness()
    await h.connect(guilds=False)
    data = p.message_create(f"<@{BOT}> hi", channel_id=p.THREAD_ID, channel_type=11, mentions=[p.bot_user(BOT)])
    await h.frame("MESSAGE_CREATE", data)
    msg = normalized(h.taken()[0])
    assert msg.chat.thread_id == p.THREAD_ID
    assert msg.chat.id == p.THREAD_ID  # the parent is unknown: the thread is its own chat
    await h.close()


async def test_attachments_become_media() -> None:
    h = Harness()
    await h.connect()
    pdf = p.attachment()
    png = p.attachment("photo.png", "image/png", 1200)
    data = p.message_create("here it is", guild=False, channel_id=p.DM_CHANNEL_ID, attachments=[png, pdf])
    await h.frame("MESSAGE_CREATE", data)
    msg = normalized(h.taken()[0])
    assert msg.content.type == "image"
    assert [m.url for m in msg.content.media] == [png["url"], pdf["url"]]
    assert msg.content.media[1].mime_type == "application/pdf"
    assert msg.content.media[1].filename == "invoice.pdf"
    assert msg.content.media[1].size == 48213
    assert msg.content.text == "here it is"
    await h.close()


async def test_bots_and_webhooks_are_taken_as_bots_and_our_own_messages_not_at_all() -> None:
    h = Harness(listen_channels=[p.CHANNEL_ID])
    await h.connect()
    other_bot = p.message_create("beep", author=p.bot_user(p.OTHER_BOT_ID, "other-bot"))
    hooked = p.message_create("from a webhook", author=p.user(p.WEBHOOK_ID, "Captain Hook"), webhook_id=p.WEBHOOK_ID)
    own = p.message_create("our own reply", author=p.bot_user(BOT))
    for data in (other_bot, hooked, own):
        await h.frame("MESSAGE_CREATE", data)
    envelopes = h.taken()
    assert [e["d"]["id"] for e in envelopes] == [other_bot["id"], hooked["id"]]
    bot_msg, hook_msg = (normalized(e) for e in envelopes)
    assert bot_msg.sender.is_bot and not bot_msg.sender.is_self
    assert hook_msg.sender.is_bot
    assert hook_msg.content.metadata["webhook_id"] == p.WEBHOOK_ID
    await h.close()


async def test_reply_and_system_messages() -> None:
    h = Harness()
    await h.connect()
    reply = p.message_create("thanks!", guild=False, channel_id=p.DM_CHANNEL_ID, reply_to="1370000000000000071")
    join = {**p.message_create("", guild=False, channel_id=p.DM_CHANNEL_ID), "type": 7}
    await h.frame("MESSAGE_CREATE", reply)
    await h.frame("MESSAGE_CREATE", join)
    first, second = h.taken()
    assert normalized(first).reply_to == "1370000000000000071"
    events = normalize_event("acme", "acme-discord", second)
    assert len(events) == 1 and isinstance(events[0], Ignored)
    await h.close()


async def test_a_payload_discord_py_cannot_parse_still_reaches_the_hub() -> None:
    h = Harness()
    await h.connect()
    data = p.message_create("odd", guild=False, channel_id=p.DM_CHANNEL_ID)
    data["author"] = {"id": p.USER_ID}  # no username: discord.py's User parser raises KeyError
    await h.frame("MESSAGE_CREATE", data)
    (envelope,) = h.taken()
    assert normalized(envelope).content.text == "odd"
    await h.close()
