"""Discord's interactions endpoint: ``POST /webhooks/discord`` and ``POST /webhooks/discord/{tenant_id}``.

Every request is verified before anything else happens: Ed25519 over ``X-Signature-Timestamp`` + raw body
with the public key of the instance whose ``application_id`` the payload names (401 otherwise, also for a
timestamp more than 5 minutes off). PING answers PONG; a slash command is stored as an inbound message and
answered at once with a deferred response (type 5): the agent's reply edits it later.
"""

from __future__ import annotations

import time
from typing import Any

from omni_core import ApiError, Hub, Instance, WebhookRequest, WebhookRoute, webhook_route
from omni_discord.normalize import (
    CHANNEL,
    INTERACTION_APPLICATION_COMMAND,
    INTERACTION_AUTOCOMPLETE,
    INTERACTION_MESSAGE_COMPONENT,
    INTERACTION_MODAL_SUBMIT,
    INTERACTION_PING,
    snowflake,
)
from omni_discord.wire import signature_problem

WEBHOOK_PATH = "/webhooks/discord"

PONG = {"type": 1}
DEFERRED_CHANNEL_MESSAGE = {"type": 5}
DEFERRED_UPDATE_MESSAGE = {"type": 6}
NO_AUTOCOMPLETE_CHOICES = {"type": 8, "data": {"choices": []}}


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, "invalid_signature", f"discord interaction rejected: {reason}")


async def _verified_instance(hub: Hub, request: WebhookRequest, tenant_id: str | None) -> tuple[Instance, Any]:
    """The instance whose public key signed this request, and the parsed payload; 401 when none did."""
    signature = request.headers.get("x-signature-ed25519")
    timestamp = request.headers.get("x-signature-timestamp")
    if not signature or not timestamp:
        raise _unauthorized("missing X-Signature-Ed25519 or X-Signature-Timestamp")
    try:
        payload = Hub.parse_json(request.body)
    except ApiError:
        raise _unauthorized("body is not JSON") from None
    application_id = snowflake(payload.get("application_id")) if isinstance(payload, dict) else None
    if application_id is None:
        raise _unauthorized("payload names no application_id")
    now = time.time()
    problem = "no Discord instance for this application"
    for instance in await hub.instances_for_channel(CHANNEL):
        if tenant_id is not None and instance.tenant != tenant_id:
            continue
        if snowflake(instance.config.get("application_id")) != application_id:
            continue
        public_key = instance.config.get("public_key")
        if not isinstance(public_key, str):
            continue
        found = signature_problem(public_key, signature, timestamp, request.body, now)
        if found is None:
            return instance, payload
        problem = found
    raise _unauthorized(problem)


async def _handle(hub: Hub, request: WebhookRequest, tenant_id: str | None) -> tuple[int, Any]:
    instance, payload = await _verified_instance(hub, request, tenant_id)
    kind = payload.get("type")
    if kind == INTERACTION_PING:
        return 200, PONG
    if kind == INTERACTION_AUTOCOMPLETE:
        return 200, NO_AUTOCOMPLETE_CHOICES
    if kind in (INTERACTION_MESSAGE_COMPONENT, INTERACTION_MODAL_SUBMIT):
        return 200, DEFERRED_UPDATE_MESSAGE  # acknowledged; buttons and modals are not routed to agents
    if kind != INTERACTION_APPLICATION_COMMAND:
        raise ApiError(400, "invalid_payload", f"unknown discord interaction type {kind!r}")
    tenant = await hub.get_tenant(instance.tenant)
    if tenant is None:
        raise ApiError(404, "unknown_tenant", f"instance {instance.name!r} belongs to no existing tenant")
    await hub.ingest(CHANNEL, tenant, {"t": "INTERACTION_CREATE", "d": payload}, instance.name)
    return 200, DEFERRED_CHANNEL_MESSAGE


async def interactions(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    """The URL to paste as "Interactions Endpoint URL": the instance is found by the application id."""
    return await _handle(hub, request, None)


async def interactions_for_tenant(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    """Same, restricted to one tenant's instances."""
    return await _handle(hub, request, str(request.path_params["tenant_id"]))


def build_routes() -> list[WebhookRoute]:
    return [
        webhook_route(f"{WEBHOOK_PATH}/{{tenant_id:str}}", interactions_for_tenant, name="discord_interactions_tenant"),
        webhook_route(WEBHOOK_PATH, interactions, name="discord_interactions"),
    ]
