"""One discord.py gateway client per Discord instance, inside the hub's event loop.

discord.py does the gateway work (IDENTIFY, heartbeats, RESUME after a drop, reconnecting with back-off,
per-route REST rate limits). The hub needs Discord's raw message JSON rather than discord.py's objects, so
the client uses a :class:`HubConnectionState` whose ``MESSAGE_CREATE`` parser hands the raw dict (exactly as
discord.py decoded it from the socket) to the instance's :class:`InstanceRuntime`. The runtime keeps only
messages that concern the hub (DMs, mentions of the bot, ``listen_channels``), wraps them with what
discord.py's cache knows about the channel (a thread's parent) and ingests them one at a time, in order.

A runtime never lets its failure reach another instance: a rejected token marks only its instance
``failed``; transient trouble (Discord down, network) keeps it ``connecting`` and retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import discord
import structlog
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.state import ConnectionState
from discord.voice_client import VoiceClient

from omni_core import ApiError, Hub, Instance
from omni_discord.normalize import CHANNEL, THREAD_TYPES, wanted
from omni_discord.settings import api_base_url, gateway_enabled
from omni_discord.wire import DiscordConfig, parse_config

if TYPE_CHECKING:
    from discord.types.gateway import MessageCreateEvent

log = structlog.get_logger("omni.discord")

#: Seconds a delivery waits for its instance's client to log in before it is retried later.
LOGIN_WAIT_SECONDS = 10.0
#: Longest rate-limit wait discord.py sleeps through inside a delivery (its minimum); longer waits
#: become a TransientError with ``retry_after`` so the queue retries instead of holding a worker.
MAX_RATELIMIT_WAIT = 30.0
#: Gateway close codes after which reconnecting cannot help.
FATAL_CLOSE_CODES: dict[int, str] = {
    4004: "Discord rejected the bot token (gateway close 4004: authentication failed)",
    4010: "invalid shard (gateway close 4010)",
    4011: "sharding required: the bot is in too many guilds for one connection (gateway close 4011)",
    4012: "invalid gateway API version (gateway close 4012)",
    4013: "invalid intents (gateway close 4013)",
    4014: "the MESSAGE_CONTENT privileged intent is not enabled for this bot (gateway close 4014)",
}
INGEST_ATTEMPTS = 6

State = Literal["connecting", "ready", "failed", "stopped"]


def intents() -> discord.Intents:
    """Guilds (channel/thread cache), guild messages, DMs and the privileged message content."""
    wanted_intents = discord.Intents.none()
    wanted_intents.guilds = True
    wanted_intents.guild_messages = True
    wanted_intents.dm_messages = True
    wanted_intents.message_content = True
    return wanted_intents


def apply_api_base_url() -> str:
    """Point discord.py's REST routes at ``DISCORD_API_URL`` (``Route.BASE`` is process-wide)."""
    url = api_base_url()
    if url != Route.BASE:
        Route.BASE = url
    return url


class HubConnectionState(ConnectionState[Any]):
    """discord.py's connection state, also handing each raw ``MESSAGE_CREATE`` to the hub.

    The raw dict goes to the hub first; discord.py's own parsing (its caches) follows and can never stop
    the hub from seeing a message, nor a hub problem stop discord.py.
    """

    runtime: InstanceRuntime | None = None

    def parse_message_create(self, data: MessageCreateEvent) -> None:
        runtime = self.runtime
        if runtime is not None:
            try:
                runtime.on_raw_message(data)  # type: ignore[arg-type]  # a TypedDict is a dict
            except Exception:
                log.exception("discord_message_hand_off_failed", instance=runtime.instance.name)
        try:
            super().parse_message_create(data)
        except Exception:
            log.exception("discord_message_parse_failed", message_id=data.get("id"))


class GatewayClient(discord.Client):
    """A discord.py client bound to one hub instance."""

    def __init__(self, runtime: InstanceRuntime) -> None:
        self.runtime = runtime
        # The hub never joins voice: skip discord.py's start-up warnings about voice libraries.
        VoiceClient.warn_nacl = VoiceClient.warn_dave = False
        super().__init__(
            intents=intents(),
            max_messages=None,
            chunk_guilds_at_startup=False,
            max_ratelimit_timeout=MAX_RATELIMIT_WAIT,
        )

    def _get_state(self, **options: Any) -> ConnectionState[Any]:
        state = HubConnectionState(
            dispatch=self.dispatch, handlers=self._handlers, hooks=self._hooks, http=self.http, **options
        )
        state.runtime = self.runtime
        return state

    async def on_connect(self) -> None:  # READY received: the session is up
        self.runtime.set_state("ready")

    async def on_resumed(self) -> None:
        self.runtime.set_state("ready")

    async def on_disconnect(self) -> None:
        if not self.is_closed():
            self.runtime.set_state("connecting", "gateway connection lost; reconnecting")


class InstanceRuntime:
    """The gateway client, REST client and ingest queue of one Discord instance in this process."""

    def __init__(self, hub: Hub, instance: Instance, *, gateway: bool = True) -> None:
        self.hub = hub
        self.instance = instance
        self.gateway = gateway
        self.state: State = "connecting"
        self.reason: str | None = None
        self.client: GatewayClient | None = None
        self.bot_user_id: str | None = None
        self.config: DiscordConfig | None = None
        try:
            self.config = parse_config(instance.config)
        except ValueError as exc:
            self.state, self.reason = "failed", f"invalid instance config: {exc}"
        self._logged_in = asyncio.Event()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        #: interaction token -> (hub message id whose reply edited the original response, when)
        self.original_owner: dict[str, tuple[str, float]] = {}

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks or self.config is None:
            return
        name = self.instance.name
        self._tasks = [
            asyncio.create_task(self._run(), name=f"discord-gateway:{name}"),
            asyncio.create_task(self._consume(), name=f"discord-ingest:{name}"),
        ]

    async def stop(self, grace_seconds: float = 10.0) -> None:
        self._stopping = True
        client = self.client
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), grace_seconds)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._logged_in.clear()
        if not self.failed:
            self.set_state("stopped")

    def set_state(self, state: State, reason: str | None = None) -> None:
        if self.failed or (self._stopping and state != "stopped"):
            return  # "failed" is final for this runtime (a new one starts after a restart or re-create)
        if (state, reason) != (self.state, self.reason):
            log.info("discord_gateway_state", instance=self.instance.name, state=state, reason=reason)
        self.state, self.reason = state, reason

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def _fail(self, reason: str) -> None:
        self.set_state("failed", reason)
        self._logged_in.clear()

    async def _run(self) -> None:
        assert self.config is not None
        attempt = 0
        while not self._stopping:
            client = GatewayClient(self)
            self.client = client
            try:
                apply_api_base_url()
                await client.login(self.config.bot_token)
                if client.user is not None:
                    self.bot_user_id = str(client.user.id)
                self._logged_in.set()
                if not self.gateway:
                    self.set_state("ready", "REST only (DISCORD_GATEWAY_ENABLED=false)")
                    await asyncio.Event().wait()  # until stopped
                await self._discover_gateway(client)
                attempt = 0
                await client.connect(reconnect=True)
                if self._stopping:
                    return
                reason = "gateway connection closed; reconnecting"
            except asyncio.CancelledError:
                raise
            except discord.LoginFailure:
                self._fail("Discord rejected the bot token (401 Unauthorized)")
                await _close_quietly(client)
                return
            except discord.PrivilegedIntentsRequired:
                self._fail(FATAL_CLOSE_CODES[4014])
                await _close_quietly(client)
                return
            except discord.ConnectionClosed as exc:
                if exc.code in FATAL_CLOSE_CODES:
                    self._fail(FATAL_CLOSE_CODES[exc.code])
                    await _close_quietly(client)
                    return
                reason = f"gateway closed with code {exc.code}; reconnecting"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300]
            if self._stopping:
                return
            self._logged_in.clear()
            await _close_quietly(client)
            attempt += 1
            delay = min(60.0, 2.0 ** min(attempt, 6)) * random.uniform(0.5, 1.0)
            self.set_state("connecting", f"{reason} (retry in {delay:.1f}s)")
            await asyncio.sleep(delay)

    @staticmethod
    async def _discover_gateway(client: GatewayClient) -> None:
        """Connect where ``GET /gateway/bot`` says (Discord's recommended way; a fake in tests)."""
        try:
            _shards, url, _limits = await client.http.get_bot_gateway()
        except discord.GatewayNotFound:
            return
        gateway = yarl.URL(url if url.endswith("/") else url + "/")
        if gateway != DiscordWebSocket.DEFAULT_GATEWAY:
            DiscordWebSocket.DEFAULT_GATEWAY = gateway

    # --- REST for deliveries --------------------------------------------------------------------
    async def rest(self, wait_seconds: float = LOGIN_WAIT_SECONDS) -> HTTPClient:
        """The instance's logged-in discord.py HTTP client (shared rate-limit buckets with the gateway).

        Raises :class:`RuntimeError` with the reason when the instance failed for good, and
        :class:`TimeoutError` when it is not logged in yet.
        """
        if self.failed:
            raise RuntimeError(self.reason or "instance failed")
        try:
            await asyncio.wait_for(self._logged_in.wait(), wait_seconds)
        except TimeoutError:
            if self.failed:
                raise RuntimeError(self.reason or "instance failed") from None
            raise
        client = self.client
        if client is None:
            raise TimeoutError
        return client.http

    def claim_original(self, token: str, message_id: str) -> bool | None:
        """Whether ``message_id`` owns the interaction's original response; None when not known here."""
        now = time.monotonic()
        for key, (_owner, at) in list(self.original_owner.items()):
            if now - at > 900:
                del self.original_owner[key]
        found = self.original_owner.get(token)
        if found is None:
            return None
        return found[0] == message_id

    def record_original(self, token: str, message_id: str) -> None:
        self.original_owner[token] = (message_id, time.monotonic())

    # --- inbound --------------------------------------------------------------------------------
    def on_raw_message(self, data: dict[str, Any]) -> None:
        """Called by discord.py's parser (synchronously) for every ``MESSAGE_CREATE`` this bot sees."""
        if self.config is None or self._stopping:
            return
        bot_user_id = self.bot_user_id
        client = self.client
        if client is not None and client.user is not None:
            bot_user_id = str(client.user.id)
        channel = self._channel_context(data)
        why = wanted(data, bot_user_id, self.config.listen_channels, channel.get("parent_id"))
        if why is None:
            return
        # A deep copy: discord.py goes on to build its own objects from the same dict.
        self._queue.put_nowait(
            {
                "t": "MESSAGE_CREATE",
                "d": copy.deepcopy(data),
                "bot_user_id": bot_user_id,
                "channel": channel,
                "trigger": why,
            }
        )

    def _channel_context(self, data: dict[str, Any]) -> dict[str, Any]:
        """What discord.py's cache knows about the message's channel: a thread's parent, the type, the name."""
        client = self.client
        out: dict[str, Any] = {"parent_id": None, "thread": False, "type": None, "name": None}
        raw_type = data.get("channel_type")
        if isinstance(raw_type, int):
            out["type"] = raw_type
            out["thread"] = raw_type in THREAD_TYPES
        if client is None:
            return out
        try:
            channel_id = int(data["channel_id"])
            guild_id = int(data["guild_id"]) if data.get("guild_id") else None
        except (KeyError, TypeError, ValueError):
            return out
        channel: Any = None
        if guild_id is not None:
            guild = client.get_guild(guild_id)
            if guild is not None:
                channel = guild.get_channel_or_thread(channel_id)
        else:
            channel = client.get_channel(channel_id)
        if channel is None:
            return out
        if isinstance(channel, discord.Thread):
            out["thread"] = True
            out["parent_id"] = str(channel.parent_id)
        channel_type = getattr(channel, "type", None)
        if isinstance(channel_type, discord.ChannelType):
            out["type"] = channel_type.value
        name = getattr(channel, "name", None)
        if isinstance(name, str):
            out["name"] = name
        return out

    async def _consume(self) -> None:
        while True:
            envelope = await self._queue.get()
            await self._ingest(envelope)

    async def _ingest(self, envelope: dict[str, Any]) -> None:
        """Store one message through the hub; retried a few times (Discord will not send it again)."""
        message_id = envelope.get("d", {}).get("id")
        for attempt in range(INGEST_ATTEMPTS):
            try:
                # The instance may have been deleted (by another hub process): never let a late message
                # re-register it through ingest.
                current = await self.hub.instance_by_name(CHANNEL, self.instance.name)
                if current is None or current.id != self.instance.id:
                    log.info("discord_ingest_instance_gone", instance=self.instance.name, message_id=message_id)
                    return
                tenant = await self.hub.get_tenant(self.instance.tenant)
                if tenant is None:
                    log.warning("discord_ingest_no_tenant", instance=self.instance.name, tenant=self.instance.tenant)
                    return
                result = await self.hub.ingest(CHANNEL, tenant, envelope, self.instance.name)
                log.debug("discord_ingested", instance=self.instance.name, message_id=message_id, status=result.status)
                return
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                log.warning(
                    "discord_ingest_rejected", instance=self.instance.name, message_id=message_id, error=exc.message
                )
                return
            except Exception as exc:
                log.warning(
                    "discord_ingest_failed",
                    instance=self.instance.name,
                    message_id=message_id,
                    attempt=attempt + 1,
                    error=repr(exc),
                )
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        log.error("discord_message_dropped", instance=self.instance.name, message_id=message_id)


async def _close_quietly(client: discord.Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 10)


class Registry:
    """The runtimes of this process, by instance id."""

    def __init__(self) -> None:
        self.runtimes: dict[str, InstanceRuntime] = {}

    def get(self, instance_id: str) -> InstanceRuntime | None:
        return self.runtimes.get(instance_id)

    def ensure(self, hub: Hub, instance: Instance) -> InstanceRuntime:
        """The instance's runtime, started now if this process has none yet."""
        runtime = self.runtimes.get(instance.id)
        if runtime is None:
            runtime = InstanceRuntime(hub, instance, gateway=gateway_enabled())
            self.runtimes[instance.id] = runtime
            runtime.start()
        return runtime

    async def replace(self, hub: Hub, instance: Instance) -> InstanceRuntime:
        await self.remove(instance.id)
        return self.ensure(hub, instance)

    async def remove(self, instance_id: str) -> None:
        runtime = self.runtimes.pop(instance_id, None)
        if runtime is not None:
            await runtime.stop()

    async def sync(self, hub: Hub, instances: Sequence[Instance]) -> None:
        """Run exactly the given instances: start the missing, stop those no longer there."""
        wanted_ids = {instance.id for instance in instances}
        for instance_id in [i for i in self.runtimes if i not in wanted_ids]:
            await self.remove(instance_id)
        for instance in instances:
            self.ensure(hub, instance)

    async def stop_all(self) -> None:
        runtimes = list(self.runtimes.values())
        self.runtimes.clear()
        await asyncio.gather(*(runtime.stop() for runtime in runtimes), return_exceptions=True)


#: This process's runtimes (the hub runs one event loop per process).
registry = Registry()
