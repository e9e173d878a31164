"""Handlers for Evolution's webhooks. Thin: authenticate, hand the payload to ``hub.ingest``, answer.

Evolution retries non-2xx answers (except 400/401/403/404/422), so the answer is sent only after the
event is durably stored, and client errors use those non-retried codes. The handlers use the core's
lean ``webhook_route`` (plain ASGI): this is the hub's hottest path.
"""

from typing import Any

from omni_core import ApiError, Hub, Tenant, WebhookRequest, WebhookRoute, webhook_route
from omni_whatsapp_evolution.normalize import CHANNEL

WEBHOOK_PATH = "/webhooks/evolution"


def _payload(request: WebhookRequest) -> dict[str, Any]:
    payload = Hub.parse_json(request.body)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "Evolution webhook body must be a JSON object")
    if not isinstance(payload.get("event"), str) or not payload["event"]:
        raise ApiError(400, "invalid_payload", "Evolution webhook body has no string 'event' field")
    return payload


async def _ingest(hub: Hub, request: WebhookRequest, tenant: Tenant, payload: dict[str, Any]) -> tuple[int, Any]:
    Hub.check_webhook_token(tenant, request.headers, request.query)
    instance = payload.get("instance")
    result = await hub.ingest(CHANNEL, tenant, payload, instance if isinstance(instance, str) else None)
    return 200, result.body()


async def evolution_webhook_for_tenant(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    """The URL the hub configures on instances it creates: the tenant is in the path."""
    payload = _payload(request)
    tenant = await hub.tenant_for_webhook(request.path_params["tenant_id"])
    return await _ingest(hub, request, tenant, payload)


async def evolution_webhook_by_instance(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    """A shared URL (e.g. Evolution's global webhook): the tenant is found through the instance name."""
    payload = _payload(request)
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


def build_routes() -> list[WebhookRoute]:
    return [
        webhook_route(
            f"{WEBHOOK_PATH}/{{tenant_id:str}}", evolution_webhook_for_tenant, name="evolution_webhook_for_tenant"
        ),
        webhook_route(WEBHOOK_PATH, evolution_webhook_by_instance, name="evolution_webhook_by_instance"),
    ]
