"""Hook implementations for the ``discord`` channel. Thin glue over normalize/routes/gateway/client.

discord.py is imported only when the hub has Discord work to do (a Discord instance exists, a delivery,
an instance call), so hubs without Discord instances do not pay for it at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Sequence
from typing import Any

import structlog

from omni_core import (
    DeliveryReceipt,
    Hub,
    Instance,
    InstanceInfo,
    Message,
    NormalizedEvent,
    QrCode,
    Tenant,
    hookimpl,
)
from omni_discord.normalize import CHANNEL, normalize_address, normalize_event
from omni_discord.routes import build_routes
from omni_discord.settings import gateway_enabled, sync_seconds

log = structlog.get_logger("omni.discord")


@hookimpl
def omni_channels() -> Sequence[str]:
    return [CHANNEL]


@hookimpl
def omni_routes(hub: Hub) -> Sequence[Any]:
    return build_routes()


@hookimpl
def omni_normalize(
    channel: str, tenant: Tenant, instance: Instance | None, payload: Any
) -> Sequence[NormalizedEvent] | None:
    if channel != CHANNEL:
        return None
    return normalize_event(tenant.id, instance.name if instance is not None else None, payload)


@hookimpl
def omni_normalize_address(channel: str, address: str) -> str | None:
    if channel != CHANNEL:
        return None
    return normalize_address(address)


@hookimpl
def omni_deliver(hub: Hub, instance: Instance, message: Message) -> Awaitable[DeliveryReceipt] | None:
    if instance.channel != CHANNEL:
        return None
    from omni_discord import client

    return client.deliver(hub, instance, message)


@hookimpl
def omni_instance_create(
    hub: Hub, tenant: Tenant, instance: Instance, options: dict[str, Any]
) -> Awaitable[InstanceInfo] | None:
    if instance.channel != CHANNEL:
        return None
    from omni_discord import client

    return client.create_instance(hub, tenant, instance, options)


@hookimpl
def omni_instance_status(hub: Hub, instance: Instance) -> Awaitable[InstanceInfo] | None:
    if instance.channel != CHANNEL:
        return None
    from omni_discord import client

    return client.instance_status(hub, instance)


@hookimpl
def omni_instance_qr(hub: Hub, instance: Instance) -> Awaitable[QrCode] | None:
    # Discord bots have no QR pairing; returning None lets the API answer "unsupported_channel".
    return None


@hookimpl
def omni_instance_delete(hub: Hub, instance: Instance) -> Awaitable[None] | None:
    if instance.channel != CHANNEL:
        return None
    from omni_discord import client

    return client.delete_instance(hub, instance)


_sync_task: asyncio.Task[None] | None = None


async def _sync(hub: Hub) -> None:
    """Run a gateway client for exactly the Discord instances that exist now."""
    instances = await hub.instances_for_channel(CHANNEL)
    if not instances and "omni_discord.gateway" not in sys.modules:
        return  # nothing to run, and nothing running: do not load discord.py
    from omni_discord.gateway import registry

    await registry.sync(hub, instances)


async def _sync_loop(hub: Hub, every_seconds: float) -> None:
    """Follow instances created or deleted by other hub processes (this process's own calls act at once)."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await _sync(hub)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discord_instance_sync_failed")


async def _startup(hub: Hub) -> None:
    global _sync_task
    if not gateway_enabled():
        return
    await _sync(hub)
    every = sync_seconds()
    if every > 0 and _sync_task is None:
        _sync_task = asyncio.create_task(_sync_loop(hub, every), name="discord-instance-sync")


async def _shutdown() -> None:
    global _sync_task
    task, _sync_task = _sync_task, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if "omni_discord.gateway" in sys.modules:  # loaded only when there was Discord work
        from omni_discord.gateway import registry

        await registry.stop_all()


@hookimpl
def omni_startup(hub: Hub) -> Awaitable[None] | None:
    return _startup(hub)


@hookimpl
def omni_shutdown(hub: Hub) -> Awaitable[None] | None:
    return _shutdown()
