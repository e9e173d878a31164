"""Tenants: the admin creates them; a tenant key sees and edits only its own."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from litestar import Request, delete, get, patch, post

from omni_core.api.common import parse_body
from omni_core.auth import Principal, hash_key, new_tenant_key, new_webhook_secret
from omni_core.entities import Tenant, merge_config
from omni_core.errors import ApiError
from omni_core.hub import Hub
from omni_core.ids import new_id
from omni_core.model import now_iso

TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    id: str | None = None
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class TenantPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    config: dict[str, Any] | None = None


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ApiError(400, "invalid_request", "name must be 1 to 200 characters")
    return name


async def visible_tenant(hub: Hub, principal: Principal, tenant_id: str) -> Tenant:
    """The tenant if the caller may see it; otherwise 404, exactly as if it did not exist."""
    tenant = await hub.store.get_tenant(tenant_id) if principal.can_see(tenant_id) else None
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"no tenant with id {tenant_id!r}")
    return tenant


@post("/tenants", status_code=201)
async def create_tenant(request: Request[Any, Any, Any], hub: Hub, principal: Principal) -> dict[str, Any]:
    principal.require_admin()
    body = await parse_body(request, hub, TenantCreate)
    tenant_id = body.id if body.id is not None else new_id("ten")
    if not TENANT_ID.match(tenant_id):
        raise ApiError(400, "invalid_request", "id must be 1-64 characters: letters, digits, '_', '.', '-'")
    now = now_iso()
    api_key = new_tenant_key()
    tenant = Tenant(
        id=tenant_id,
        name=_check_name(body.name),
        config=body.config,
        webhook_secret=new_webhook_secret(),
        created_at=now,
        updated_at=now,
    )
    if not await hub.store.create_tenant(tenant, hash_key(api_key)):
        raise ApiError(409, "tenant_exists", f"a tenant with id {tenant_id!r} already exists")
    # The only time the key and the webhook secret are shown.
    return {**tenant.public(), "api_key": api_key, "webhook_secret": tenant.webhook_secret}


@get("/tenants")
async def list_tenants(hub: Hub, principal: Principal) -> dict[str, Any]:
    principal.require_admin()
    return {"tenants": [t.public() for t in await hub.store.list_tenants()]}


@get("/tenants/{tenant_id:str}")
async def get_tenant(tenant_id: str, hub: Hub, principal: Principal) -> dict[str, Any]:
    return (await visible_tenant(hub, principal, tenant_id)).public()


@patch("/tenants/{tenant_id:str}")
async def patch_tenant(
    tenant_id: str, request: Request[Any, Any, Any], hub: Hub, principal: Principal
) -> dict[str, Any]:
    tenant = await visible_tenant(hub, principal, tenant_id)
    body = await parse_body(request, hub, TenantPatch)
    if body.name is not None:
        tenant.name = _check_name(body.name)
    if body.config is not None:
        tenant.config = merge_config(tenant.config, body.config)
    tenant.updated_at = now_iso()
    await hub.store.update_tenant(tenant)
    return tenant.public()


@delete("/tenants/{tenant_id:str}", status_code=200)
async def delete_tenant(tenant_id: str, hub: Hub, principal: Principal) -> dict[str, Any]:
    principal.require_admin()
    await visible_tenant(hub, principal, tenant_id)
    # Remove the tenant's accounts from the channel servers too (best effort: a server that is
    # down must not keep a tenant alive); report what could not be removed.
    leftovers = []
    for instance in await hub.store.list_instances(tenant_id):
        pending = hub.pm.hook.omni_instance_delete(hub=hub, instance=instance)
        if pending is None:
            continue
        try:
            await asyncio.wait_for(pending, 30)
        except Exception as exc:
            leftovers.append({"instance": instance.name, "error": getattr(exc, "message", None) or type(exc).__name__})
    await hub.store.delete_tenant(tenant_id)
    return {"status": "deleted", "id": tenant_id, "instances_not_removed": leftovers}
