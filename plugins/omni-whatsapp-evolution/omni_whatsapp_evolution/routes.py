"""Litestar handlers for Evolution's webhooks. Thin: authenticate, hand the payload to ``hub.ingest``, answer.

Evolution retries non-2xx answers (except 400/401/403/404/422), so the answer is sent only after the
event is durably stored, and client errors use those non-retried codes.
"""

from typing import Any

from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler

from omni_core import ApiError, Hub, Tenant  # runtime import: Litestar resolves handler annotations
from omni_whatsapp_evolution.normalize import CHANNEL

WEBHOOK_PATH = "/webhooks/evolution"


async def _payload(hub: Hub, request: Request[Any, Any, Any]) -> dict[str, Any]:
    payload = await hub.read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "Evolution webhook body must be a JSON object")
    if not isinstance(payload.get("event"), str) or not payload["event"]:
        raise ApiError(400, "invalid_payload", "Evolution webhook body has no string 'event' field")
    return payload


async def _ingest(hub: Hub, request: Request[Any, Any, Any], tenant: Tenant, payload: dict[str, Any]) -> Response[Any]:
    Hub.check_webhook_token(tenant, request.headers, request.query_params)
    instance = payload.get("instance")
    result = await hub.ingest(CHANNEL, tenant, payload, instance if isinstance(instance, str) else None)
    return Response(content=result.body(), status_code=200)


async def evolution_webhook_for_tenant(tenant_id: str, request: Request[Any, Any, Any], hub: Hub) -> Response[Any]:
    """The URL the hub configures on instances it creates: the tenant is in the path."""
    payload = await _payload(hub, request)
    tenant = await hub.tenant_for_webhook(tenant_id)
    return await _ingest(hub, request, tenant, payload)


async def evolution_webhook_by_instance(request: Request[Any, Any, Any], hub: Hub) -> Response[Any]:
    """A shared URL (e.g. Evolution's global webhook): the tenant is found through the instance name."""
    payload = await _payload(hub, request)
    name = payload.get("instance")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "invalid_payload", "Evolution webhook body has no string 'instance' field")
    instance = await hub.instance_by_name(CHANNEL, name)
    if instance is None:
        raise ApiError(404, "unknown_instance", f"no WhatsApp instance named {name!r}")
    tenant = await hub.get_tenant(instance.tenant)
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"instance {name!r} belongs to no existing tenant")
    return await _ingest(hub, request, tenant, payload)


def build_routes() -> list[HTTPRouteHandler]:
    """Fresh handler objects per call: Litestar binds a handler to the app that registers it."""
    return [
        post(f"{WEBHOOK_PATH}/{{tenant_id:str}}", status_code=200, name="evolution_webhook_for_tenant")(
            evolution_webhook_for_tenant
        ),
        post(WEBHOOK_PATH, status_code=200, name="evolution_webhook_by_instance")(evolution_webhook_by_instance),
    ]
