"""Instances: one tenant's account on one channel, created and managed on the channel's server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import httpx
import msgspec
from litestar import Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery

from omni_core.api.common import HubDep, PrincipalDep, parse_body
from omni_core.api.tenants import visible_tenant
from omni_core.auth import Principal
from omni_core.entities import Instance, merge_config
from omni_core.errors import ApiError, ExternalError
from omni_core.hub import Hub
from omni_core.ids import new_id
from omni_core.lifecycle import InstanceInfo, QrCode
from omni_core.model import now_iso
from omni_core.plugins import channels

T = TypeVar("T")
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LIVE_TIMEOUT_S = 10.0


class InstanceCreate(msgspec.Struct, rename={"instance_name": "instanceName"}):
    instance_name: str
    tenant: str | None = None
    channel: str = "whatsapp"
    qrcode: bool = True


Rate = Annotated[float, msgspec.Meta(ge=0)]
Burst = Annotated[int, msgspec.Meta(ge=1)]


class PacingPatch(msgspec.Struct, forbid_unknown_fields=True):
    """The instance's ``pacing`` override (omni_core.pacing.PaceLimits); ``null`` restores a default."""

    per_chat_per_second: Rate | msgspec.UnsetType | None = msgspec.UNSET
    per_chat_burst: Burst | msgspec.UnsetType | None = msgspec.UNSET
    per_instance_per_second: Rate | msgspec.UnsetType | None = msgspec.UNSET
    per_instance_burst: Burst | msgspec.UnsetType | None = msgspec.UNSET


class InstancePatch(msgspec.Struct, forbid_unknown_fields=True):
    """The settings the hub itself reads from an instance's config; the channel's own settings
    (server URL, credentials) are set at creation, where the channel's server is configured too."""

    split_messages: bool | msgspec.UnsetType | None = msgspec.UNSET
    pacing: PacingPatch | msgspec.UnsetType | None = msgspec.UNSET


def _set_fields(struct: msgspec.Struct) -> dict[str, Any]:
    """The fields the request named (``null`` included), as a JSON merge patch."""
    return {f: getattr(struct, f) for f in struct.__struct_fields__ if getattr(struct, f) is not msgspec.UNSET}


async def call_channel(pending: Awaitable[T] | None, what: str) -> T:
    """Await a lifecycle hook's result, turning channel-server failures into a 502 that names them."""
    if pending is None:
        raise ApiError(400, "unsupported_channel", f"no plugin can {what} on this channel")
    try:
        return await asyncio.wait_for(pending, LIVE_TIMEOUT_S * 3)
    except ExternalError as exc:
        raise ApiError(502, "channel_error", f"{what} failed: {exc.message}") from None
    except (TimeoutError, httpx.TimeoutException):
        raise ApiError(504, "channel_timeout", f"{what} timed out") from None
    except httpx.TransportError as exc:
        raise ApiError(
            502, "channel_unreachable", f"{what} failed: cannot reach the channel server ({type(exc).__name__})"
        ) from None


async def visible_instance(hub: Hub, principal: Principal, ref: str) -> Instance:
    instance = await hub.store.find_instance(principal.tenant_scope(), ref)
    if instance is None:
        raise ApiError(404, "unknown_instance", f"no instance {ref!r}")
    return instance


def qr_body(qr: QrCode) -> dict[str, Any]:
    return {"status": qr.status, "qrcode_base64": qr.qrcode_base64, "code": qr.code, "pairing_code": qr.pairing_code}


@post("/instances/create", status_code=201)
async def create_instance(request: Request[Any, Any, Any], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    body = await parse_body(request, hub, InstanceCreate)
    raw: dict[str, Any] = await hub.read_json(request)
    tenant_id = body.tenant or principal.tenant_scope()
    if tenant_id is None:
        raise ApiError(400, "invalid_request", "tenant is required when using the admin key")
    tenant = await visible_tenant(hub, principal, tenant_id)
    if not INSTANCE_NAME.match(body.instance_name):
        raise ApiError(400, "invalid_request", "instanceName must be 1-64 characters: letters, digits, '_', '.', '-'")
    if body.channel not in channels(hub.pm):
        raise ApiError(400, "unknown_channel", f"no installed plugin provides channel {body.channel!r}")
    # Everything else in the body is channel configuration (e.g. "evolution": {base_url, api_key}).
    options = {k: v for k, v in raw.items() if k not in ("instanceName", "tenant", "channel", "qrcode")}
    now = now_iso()
    instance = Instance(
        id=new_id("ins"),
        tenant=tenant.id,
        name=body.instance_name,
        channel=body.channel,
        config=options,
        state="creating",
        created_at=now,
        updated_at=now,
    )
    if not await hub.store.create_instance(instance):
        raise ApiError(409, "instance_exists", f"a {body.channel} instance named {body.instance_name!r} already exists")
    pending = hub.pm.hook.omni_instance_create(
        hub=hub, tenant=tenant, instance=instance, options={**options, "qrcode": body.qrcode}
    )
    try:
        info: InstanceInfo = await call_channel(pending, "create the instance")
    except ApiError:
        await hub.store.delete_instance(instance.id)
        raise
    instance.state = info.state
    instance.state_reason = info.reason
    instance.config = merge_config(instance.config, info.config_patch)
    if info.qr is not None:
        instance.qrcode_base64 = info.qr.qrcode_base64
        instance.qrcode_code = info.qr.code
        instance.pairing_code = info.qr.pairing_code
    instance.updated_at = now_iso()
    await hub.store.update_instance(instance)
    out = instance.public()
    if info.qr is not None:
        out["qr"] = qr_body(info.qr)
    return out


@get("/instances")
async def list_instances(hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    return {"instances": [i.public() for i in await hub.store.list_instances(principal.tenant_scope())]}


@get("/instances/{instance_id:str}")
async def get_instance(instance_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    instance = await visible_instance(hub, principal, instance_id)
    out = instance.public()
    pending = hub.pm.hook.omni_instance_status(hub=hub, instance=instance)
    if pending is not None:
        # The live state from the channel's server; the stored one stays when it cannot answer.
        try:
            info: InstanceInfo = await asyncio.wait_for(pending, LIVE_TIMEOUT_S)
        except Exception as exc:
            out["live"] = {"status": "error", "error": getattr(exc, "message", None) or type(exc).__name__}
        else:
            out["live"] = {"status": "ok", "state": info.state, "reason": info.reason}
            if info.state != instance.state:
                instance.state, instance.state_reason = info.state, info.reason
                instance.updated_at = now_iso()
                await hub.store.update_instance(instance)
                out["state"], out["state_reason"] = info.state, info.reason
    return out


@patch("/instances/{instance_id:str}")
async def patch_instance(
    instance_id: FromPath[str], request: Request[Any, Any, Any], hub: HubDep, principal: PrincipalDep
) -> dict[str, Any]:
    instance = await visible_instance(hub, principal, instance_id)
    body = await parse_body(request, hub, InstancePatch)
    changes = _set_fields(body)
    if isinstance(body.pacing, PacingPatch):
        changes["pacing"] = _set_fields(body.pacing)
    # A JSON merge patch over the stored config: null removes a setting (back to the default).
    instance.config = merge_config(instance.config, changes)
    instance.updated_at = now_iso()
    await hub.store.update_instance(instance)
    return instance.public()


@get("/instances/qr/{instance_id:str}")
async def get_qr(instance_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    instance = await visible_instance(hub, principal, instance_id)
    pending = hub.pm.hook.omni_instance_qr(hub=hub, instance=instance)
    if pending is None and instance.qrcode_base64 is None:
        raise ApiError(400, "unsupported_channel", f"channel {instance.channel!r} has no QR pairing")
    if pending is not None:
        try:
            qr: QrCode = await call_channel(pending, "fetch the QR code")
        except ApiError:
            if instance.qrcode_base64 is None:
                raise
        else:
            if qr.qrcode_base64 is not None:
                instance.qrcode_base64, instance.qrcode_code, instance.pairing_code = (
                    qr.qrcode_base64,
                    qr.code,
                    qr.pairing_code,
                )
                instance.updated_at = now_iso()
                await hub.store.update_instance(instance)
            return qr_body(qr)
    # The latest QR the channel pushed to us (qrcode.updated webhook).
    return qr_body(
        QrCode(
            status="qrcode",
            qrcode_base64=instance.qrcode_base64,
            code=instance.qrcode_code,
            pairing_code=instance.pairing_code,
        )
    )


@delete("/instances/{instance_id:str}", status_code=200)
async def delete_instance(
    instance_id: FromPath[str], hub: HubDep, principal: PrincipalDep, force: FromQuery[bool] = False
) -> dict[str, Any]:
    instance = await visible_instance(hub, principal, instance_id)
    pending = hub.pm.hook.omni_instance_delete(hub=hub, instance=instance)
    if pending is not None:
        try:
            await call_channel(pending, "delete the instance on the channel server")
        except ApiError:
            if not force:
                raise
    await hub.store.delete_instance(instance.id)
    return {"status": "deleted", "id": instance.id, "name": instance.name}
