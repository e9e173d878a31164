"""Tenants: the admin creates them; a tenant key sees and edits only its own."""

from __future__ import annotations

import asyncio
import copy
import re
import time
from typing import Annotated, Any

import msgspec
import pluggy
import structlog
from litestar import Request, delete, get, patch, post
from litestar.params import FromPath

from omni_core.api.common import HubDep, PrincipalDep, parse_body
from omni_core.auth import Principal, hash_key, new_tenant_key, new_webhook_secret
from omni_core.entities import Instance, Tenant, is_secret_key, merge_config
from omni_core.errors import ApiError
from omni_core.hub import Hub
from omni_core.ids import new_id
from omni_core.model import now_iso

TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Longest a rotated-out webhook secret may stay valid: a week.
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
#: How long one channel server gets to take a tenant's new webhook secret.
SECRET_UPDATE_TIMEOUT_S = 30

log = structlog.get_logger("omni.api")


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    id: str | None = None
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class TenantPatch(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    config: dict[str, Any] | None = None


class SecretRotation(msgspec.Struct, forbid_unknown_fields=True):
    #: How long the previous secret stays valid; None: OMNI_WEBHOOK_SECRET_OVERLAP_SECONDS.
    overlap_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_OVERLAP_SECONDS)] | None = None


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ApiError(400, "invalid_request", "name must be 1 to 200 characters")
    return name


def _secret_values(value: Any) -> set[str]:
    """Every secret-named scalar in a config tree, as text (what must never appear in an answer)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list):
                found |= _secret_values(v)
            elif is_secret_key(str(k)) and v not in (None, ""):
                found.add(str(v))
    elif isinstance(value, list):
        for v in value:
            found |= _secret_values(v)
    return found


def check_config(pm: pluggy.PluginManager, config: dict[str, Any]) -> None:
    """Ask every plugin about its own section of ``config``; ``400 invalid_config`` listing all problems.

    Plugins are called one by one (not through the hook caller) so a validator that raises can be
    skipped without hiding the others' answers: a plugin bug must not make tenants unwritable.
    """
    problems: list[str] = []
    impls = sorted(pm.hook.omni_validate_tenant_config.get_hookimpls(), key=lambda impl: impl.plugin_name)
    for impl in impls:
        try:
            # Each gets its own copy: a validator must not change what is stored or what the next one sees.
            found: Any = impl.function(config=copy.deepcopy(config)) or []
            problems.extend([found] if isinstance(found, str) else [str(p) for p in found])
        except Exception:
            log.exception("tenant_config_validator_failed", plugin=impl.plugin_name)
    if not problems:
        return
    message = "invalid tenant config: " + "; ".join(problems)
    # Plugins are told never to echo values; mask secrets anyway, longest first so that a
    # secret containing another is masked whole.
    for secret in sorted(_secret_values(config), key=len, reverse=True):
        message = message.replace(secret, "***")
    raise ApiError(400, "invalid_config", message)


async def visible_tenant(hub: Hub, principal: Principal, tenant_id: str) -> Tenant:
    """The tenant if the caller may see it; otherwise 404, exactly as if it did not exist."""
    tenant = await hub.store.get_tenant(tenant_id) if principal.can_see(tenant_id) else None
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"no tenant with id {tenant_id!r}")
    return tenant


@post("/tenants", status_code=201)
async def create_tenant(request: Request[Any, Any, Any], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
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
    check_config(hub.pm, tenant.config)
    if not await hub.store.create_tenant(tenant, hash_key(api_key)):
        raise ApiError(409, "tenant_exists", f"a tenant with id {tenant_id!r} already exists")
    # The only time the key and the webhook secret are shown.
    return {**tenant.public(), "api_key": api_key, "webhook_secret": tenant.webhook_secret}


@get("/tenants")
async def list_tenants(hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    principal.require_admin()
    return {"tenants": [t.public() for t in await hub.store.list_tenants()]}


@get("/tenants/{tenant_id:str}")
async def get_tenant(tenant_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    return (await visible_tenant(hub, principal, tenant_id)).public()


@patch("/tenants/{tenant_id:str}")
async def patch_tenant(
    tenant_id: FromPath[str], request: Request[Any, Any, Any], hub: HubDep, principal: PrincipalDep
) -> dict[str, Any]:
    tenant = await visible_tenant(hub, principal, tenant_id)
    body = await parse_body(request, hub, TenantPatch)
    if body.name is not None:
        tenant.name = _check_name(body.name)
    if body.config is not None:
        # The whole resulting config is checked, not just the patch: that is what gets stored.
        tenant.config = merge_config(tenant.config, body.config)
        check_config(hub.pm, tenant.config)
    tenant.updated_at = now_iso()
    await hub.store.update_tenant(tenant)
    return tenant.public()


@delete("/tenants/{tenant_id:str}", status_code=200)
async def delete_tenant(tenant_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
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


@post("/tenants/{tenant_id:str}/rotate-api-key", status_code=200)
async def rotate_api_key(tenant_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    await visible_tenant(hub, principal, tenant_id)
    api_key = new_tenant_key()
    if not await hub.store.set_tenant_api_key(tenant_id, hash_key(api_key), now_iso()):
        raise ApiError(404, "unknown_tenant", f"no tenant with id {tenant_id!r}")
    log.info("tenant_api_key_rotated", tenant=tenant_id, by="admin" if principal.admin else "tenant")
    # The only time the new key is shown; the old one no longer authenticates.
    return {"id": tenant_id, "api_key": api_key}


@post("/tenants/{tenant_id:str}/rotate-webhook-secret", status_code=200)
async def rotate_webhook_secret(
    tenant_id: FromPath[str], request: Request[Any, Any, Any], hub: HubDep, principal: PrincipalDep
) -> dict[str, Any]:
    await visible_tenant(hub, principal, tenant_id)
    # The body is optional: no body means the configured overlap.
    options = await parse_body(request, hub, SecretRotation) if (await request.body()).strip() else SecretRotation()
    overlap: float = hub.settings.webhook_secret_overlap_seconds
    if options.overlap_seconds is not None:
        overlap = options.overlap_seconds
    valid_until = time.time() + overlap if overlap > 0 else None
    tenant = await hub.store.rotate_tenant_webhook_secret(tenant_id, new_webhook_secret(), valid_until, now_iso())
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"no tenant with id {tenant_id!r}")
    log.info("tenant_webhook_secret_rotated", tenant=tenant_id, overlap_seconds=overlap)
    not_updated = await _hand_out_secret(hub, tenant)
    # The only time the new secret is shown.
    return {
        "id": tenant.id,
        "webhook_secret": tenant.webhook_secret,
        "previous_valid_until": tenant.previous_valid_until,
        "instances_not_updated": not_updated,
    }


async def _hand_out_secret(hub: Hub, tenant: Tenant) -> list[str]:
    """Give the new secret to every channel server that sends this tenant's webhooks (best effort:
    the previous secret covers the gap); the names of the instances that could not take it."""

    async def update(instance: Instance) -> str | None:
        try:
            pending = hub.pm.hook.omni_tenant_secret_rotated(hub=hub, tenant=tenant, instance=instance)
            if pending is not None:
                await asyncio.wait_for(pending, SECRET_UPDATE_TIMEOUT_S)
        except Exception as exc:
            error = getattr(exc, "message", None) or type(exc).__name__
            log.warning("tenant_secret_not_updated", tenant=tenant.id, instance=instance.name, error=error)
            return instance.name
        return None

    names = await asyncio.gather(*(update(i) for i in await hub.store.list_instances(tenant.id)))
    return [name for name in names if name is not None]
