"""Hook implementations for the ``whatsapp`` channel over Evolution API. Thin glue over normalize/client/routes."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

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
from omni_whatsapp_evolution import client
from omni_whatsapp_evolution.normalize import CHANNEL, normalize_address, normalize_event
from omni_whatsapp_evolution.routes import build_routes


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
    return normalize_event(tenant.id, payload, instance_name=instance.name if instance is not None else None)


@hookimpl
def omni_normalize_address(channel: str, address: str) -> str | None:
    if channel != CHANNEL:
        return None
    return normalize_address(address)


@hookimpl
def omni_deliver(hub: Hub, instance: Instance, message: Message) -> Awaitable[DeliveryReceipt] | None:
    if instance.channel != CHANNEL:
        return None
    return client.deliver(hub, instance, message)


@hookimpl
def omni_instance_create(
    hub: Hub, tenant: Tenant, instance: Instance, options: dict[str, Any]
) -> Awaitable[InstanceInfo] | None:
    if instance.channel != CHANNEL:
        return None
    return client.create_instance(hub, tenant, instance, options)


@hookimpl
def omni_instance_status(hub: Hub, instance: Instance) -> Awaitable[InstanceInfo] | None:
    if instance.channel != CHANNEL:
        return None
    return client.instance_status(hub, instance)


@hookimpl
def omni_instance_qr(hub: Hub, instance: Instance) -> Awaitable[QrCode] | None:
    if instance.channel != CHANNEL:
        return None
    return client.instance_qr(hub, instance)


@hookimpl
def omni_instance_delete(hub: Hub, instance: Instance) -> Awaitable[None] | None:
    if instance.channel != CHANNEL:
        return None
    return client.delete_instance(hub, instance)


@hookimpl
def omni_tenant_secret_rotated(hub: Hub, tenant: Tenant, instance: Instance) -> Awaitable[None] | None:
    if instance.channel != CHANNEL:
        return None
    return client.set_webhook(hub, tenant, instance)
