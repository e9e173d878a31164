"""Tenant webhooks: subscriptions, their deliveries (with every attempt), replays."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, patch, post
from litestar.params import FromPath, FromQuery, QueryParameter

from omni_core import signing
from omni_core.api.common import HubDep, PrincipalDep, parse_body
from omni_core.api.tenants import visible_tenant
from omni_core.auth import Principal
from omni_core.entities import TenantWebhook
from omni_core.errors import ApiError
from omni_core.events import EVENTS
from omni_core.hub import Hub
from omni_core.ids import new_id
from omni_core.model import iso, now_iso
from omni_core.store.base import Job, TraceRecord
from omni_core.webhook_delivery import check_url_syntax, resolves_private

MAX_WEBHOOKS_PER_TENANT = 50
DELIVERY_STATUS = {"queued": "pending", "running": "pending", "done": "succeeded", "dead": "failed"}
STATUS_FILTER = {"pending": ["queued", "running"], "succeeded": ["done"], "failed": ["dead"]}


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[str]
    secret: str | None = None
    description: str | None = None
    enabled: bool = True


class WebhookPatch(msgspec.Struct, forbid_unknown_fields=True):
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None
    #: Replace the secret; the old one stays valid for OMNI_WEBHOOK_SECRET_OVERLAP_SECONDS.
    rotate_secret: bool = False
    secret: str | None = None


def _check_events(events: list[str]) -> list[str]:
    if not events:
        raise ApiError(400, "invalid_request", "events must name at least one event")
    unknown = [e for e in events if e not in EVENTS and e != "*"]
    if unknown:
        raise ApiError(400, "invalid_request", f"unknown events {unknown}; known: {list(EVENTS)}")
    return sorted(set(events))


def _check_secret(secret: str) -> str:
    try:
        signing.secret_bytes(secret)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return secret


async def _check_url(hub: Hub, url: str) -> str:
    check_url_syntax(url)
    if not hub.settings.webhook_allow_private and await resolves_private(url):
        raise ApiError(
            400,
            "invalid_webhook_url",
            "webhook url resolves to a private address (OMNI_WEBHOOK_ALLOW_PRIVATE allows it)",
        )
    return url


async def _webhook(hub: Hub, principal: Principal, tenant_id: str, webhook_id: str) -> TenantWebhook:
    await visible_tenant(hub, principal, tenant_id)
    webhook = await hub.store.get_webhook(webhook_id)
    if webhook is None or webhook.tenant != tenant_id:
        raise ApiError(404, "unknown_webhook", f"no webhook {webhook_id!r}")
    return webhook


@post("/tenants/{tenant_id:str}/webhooks", status_code=201)
async def create_webhook(
    tenant_id: FromPath[str], request: Request[Any, Any, Any], hub: HubDep, principal: PrincipalDep
) -> dict[str, Any]:
    tenant = await visible_tenant(hub, principal, tenant_id)
    body = await parse_body(request, hub, WebhookCreate)
    if len(await hub.store.list_webhooks(tenant.id)) >= MAX_WEBHOOKS_PER_TENANT:
        raise ApiError(409, "too_many_webhooks", f"a tenant may have at most {MAX_WEBHOOKS_PER_TENANT} webhooks")
    now = now_iso()
    webhook = TenantWebhook(
        id=new_id("whk"),
        tenant=tenant.id,
        url=await _check_url(hub, body.url),
        events=_check_events(body.events),
        secret=_check_secret(body.secret) if body.secret else signing.new_secret(),
        enabled=body.enabled,
        description=body.description,
        created_at=now,
        updated_at=now,
    )
    await hub.store.create_webhook(webhook)
    # The only time the secret is shown.
    return {**webhook.public(), "secret": webhook.secret}


@get("/tenants/{tenant_id:str}/webhooks")
async def list_webhooks(tenant_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    await visible_tenant(hub, principal, tenant_id)
    return {"webhooks": [w.public() for w in await hub.store.list_webhooks(tenant_id)]}


@get("/tenants/{tenant_id:str}/webhooks/{webhook_id:str}")
async def get_webhook(
    tenant_id: FromPath[str], webhook_id: FromPath[str], hub: HubDep, principal: PrincipalDep
) -> dict[str, Any]:
    return (await _webhook(hub, principal, tenant_id, webhook_id)).public()


@patch("/tenants/{tenant_id:str}/webhooks/{webhook_id:str}")
async def patch_webhook(
    tenant_id: FromPath[str],
    webhook_id: FromPath[str],
    request: Request[Any, Any, Any],
    hub: HubDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    webhook = await _webhook(hub, principal, tenant_id, webhook_id)
    body = await parse_body(request, hub, WebhookPatch)
    if body.url is not None:
        webhook.url = await _check_url(hub, body.url)
    if body.events is not None:
        webhook.events = _check_events(body.events)
    if body.description is not None:
        webhook.description = body.description
    if body.enabled is not None:
        webhook.enabled = body.enabled
        if body.enabled:
            webhook.disabled_reason = None
            webhook.failing_since = None
    new_secret = None
    if body.rotate_secret or body.secret:
        new_secret = _check_secret(body.secret) if body.secret else signing.new_secret()
        webhook.secret_previous = webhook.secret
        webhook.previous_valid_until = time.time() + hub.settings.webhook_secret_overlap_seconds
        webhook.secret = new_secret
    webhook.updated_at = now_iso()
    await hub.store.update_webhook(webhook)
    out = webhook.public()
    if new_secret is not None:
        out["secret"] = new_secret
    return out


@delete("/tenants/{tenant_id:str}/webhooks/{webhook_id:str}", status_code=200)
async def delete_webhook(
    tenant_id: FromPath[str], webhook_id: FromPath[str], hub: HubDep, principal: PrincipalDep
) -> dict[str, Any]:
    webhook = await _webhook(hub, principal, tenant_id, webhook_id)
    await hub.store.delete_webhook(webhook.id)
    return {"status": "deleted", "id": webhook.id}


def delivery_view(job: Job, attempts: list[TraceRecord]) -> dict[str, Any]:
    payload = job.payload
    return {
        "id": job.id,
        "webhook_id": payload.get("webhook_id"),
        "event": payload.get("event"),
        "event_id": payload.get("event_id"),
        "message_id": job.message_id,
        "status": DELIVERY_STATUS.get(job.status, job.status),
        "attempt_count": job.attempts,
        "last_error": job.last_error,
        "next_attempt_at": iso_epoch(job.run_at) if job.status == "queued" else None,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "attempts": [
            {
                "attempt": t.attempt,
                "at": t.at,
                "outcome": t.outcome,
                "status_code": t.status_code,
                "latency_ms": t.duration_ms,
                "error": t.error,
            }
            for t in attempts
        ],
    }


def iso_epoch(epoch: float) -> str:
    from datetime import UTC, datetime

    return iso(datetime.fromtimestamp(epoch, UTC))


@get("/tenants/{tenant_id:str}/deliveries")
async def list_deliveries(
    tenant_id: FromPath[str],
    hub: HubDep,
    principal: PrincipalDep,
    status: FromQuery[str | None] = None,
    webhook_id: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    cursor: FromQuery[str | None] = None,
) -> dict[str, Any]:
    await visible_tenant(hub, principal, tenant_id)
    if status is not None and status not in STATUS_FILTER:
        raise ApiError(400, "invalid_request", f"status must be one of {sorted(STATUS_FILTER)}")
    before = _delivery_cursor_decode(cursor) if cursor is not None else None
    jobs = await hub.store.list_jobs(
        tenant_id, "webhook", STATUS_FILTER.get(status or ""), limit + 1, before_seq=before, webhook_id=webhook_id
    )
    more, jobs = len(jobs) > limit, jobs[:limit]
    traces = await hub.store.traces_for_jobs([j.id for j in jobs])
    return {
        "deliveries": [delivery_view(j, traces.get(j.id, [])) for j in jobs],
        "next_cursor": _delivery_cursor_encode(jobs[-1].seq) if more else None,
    }


def _delivery_cursor_encode(seq: int) -> str:
    return base64.urlsafe_b64encode(f"dlv:{seq}".encode()).decode().rstrip("=")


def _delivery_cursor_decode(cursor: str) -> int:
    """The queue position a deliveries page continues below; 400 for anything this API did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "dlv" or not number.isdigit():
            raise ValueError(raw)
        return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from None


@post("/deliveries/{delivery_id:str}/replay", status_code=202)
async def replay_delivery(delivery_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    job = await hub.store.get_job(delivery_id)
    if job is None or job.kind != "webhook" or not principal.can_see(job.tenant):
        raise ApiError(404, "unknown_delivery", f"no delivery {delivery_id!r}")
    if job.status in ("queued", "running"):
        raise ApiError(409, "delivery_pending", f"delivery {delivery_id} has not finished yet")
    # A new delivery of the same event (same webhook-id header, so receivers can deduplicate).
    fresh = await hub.store.replay_job(job.id, new_id("dlv"), time.time(), now_iso())
    if fresh is None:
        raise ApiError(404, "unknown_delivery", f"no delivery {delivery_id!r}")
    hub.pipeline.on_enqueue()
    return delivery_view(fresh, [])
