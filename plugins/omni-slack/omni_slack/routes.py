"""The Events API endpoint: verify Slack's signature, find the instance, ingest, answer. Thin.

Slack sends every workspace's events for an app to one Request URL, so the instance is found from the
payload (``api_app_id`` / ``team_id``) among the channel's instances — only the tenant's when the URL names
it (``/webhooks/slack/{tenant_id}``) — and confirmed by the signature made with its signing secret.
The answer goes out right after the durable commit; Slack retries anything not acknowledged within 3 s.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import structlog

from omni_core import ApiError, Hub, Instance, Tenant, WebhookRequest, WebhookRoute, webhook_route
from omni_slack import signature, wire
from omni_slack.normalize import CHANNEL

WEBHOOK_PATH = "/webhooks/slack"
RETRY_HEADER = "x-slack-retry-num"
RETRY_REASON_HEADER = "x-slack-retry-reason"

log = structlog.get_logger("omni.slack")


class RecentEvents:
    """``event_id``s whose edit/deletion was already recorded, so a retried one is not recorded twice.

    Messages need none of this: the store deduplicates them durably on ``channel:ts``.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._items: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def get(self, instance_id: str, event_id: str) -> dict[str, Any] | None:
        return self._items.get((instance_id, event_id))

    def add(self, instance_id: str, event_id: str, answer: dict[str, Any]) -> None:
        self._items[(instance_id, event_id)] = answer
        while len(self._items) > self._limit:
            self._items.popitem(last=False)


RECENT_CHANGES = RecentEvents()


async def slack_events(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    """``POST /webhooks/slack``: any tenant's app; the instance is found from the payload and signature."""
    return await _handle(hub, request, None)


async def slack_events_for_tenant(hub: Hub, request: WebhookRequest) -> tuple[int, Any]:
    """``POST /webhooks/slack/{tenant_id}``: only that tenant's instances are considered."""
    tenant = await hub.tenant_for_webhook(request.path_params["tenant_id"])
    return await _handle(hub, request, tenant)


async def _handle(hub: Hub, request: WebhookRequest, tenant: Tenant | None) -> tuple[int, Any]:
    try:
        timestamp, sent_signature = signature.signed_headers(request.headers, time.time())
    except signature.SignatureError as exc:
        raise ApiError(401, exc.code, exc.message) from None
    payload = Hub.parse_json(request.body)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "Slack request body must be a JSON object")
    instance = await _instance_for(hub, request, tenant, payload, timestamp, sent_signature)
    kind = payload.get("type")
    if kind == "url_verification":
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            raise ApiError(400, "invalid_payload", "url_verification has no string 'challenge'")
        return 200, {"challenge": challenge}
    if kind != "event_callback":
        return 200, {"status": "ignored", "reason": f"Slack payload type {kind!r} is not handled"}
    if tenant is None:
        tenant = await hub.get_tenant(instance.tenant)
        if tenant is None:
            raise ApiError(404, "unknown_tenant", f"Slack instance {instance.name!r} belongs to no existing tenant")
    event_id = payload.get("event_id") if isinstance(payload.get("event_id"), str) else None
    retry = request.headers.get(RETRY_HEADER)
    if retry is not None:
        log.info(
            "slack_event_retry",
            instance=instance.name,
            event_id=event_id,
            retry_num=retry,
            reason=request.headers.get(RETRY_REASON_HEADER),
        )
    if event_id is not None and (seen := RECENT_CHANGES.get(instance.id, event_id)) is not None:
        return 200, {**seen, "status": "duplicate"}
    result = await hub.ingest(CHANNEL, tenant, payload, instance.name)
    answer = result.body()
    if event_id is not None and result.status == "updated":
        RECENT_CHANGES.add(instance.id, event_id, answer)
    return 200, answer


async def _instance_for(
    hub: Hub,
    request: WebhookRequest,
    tenant: Tenant | None,
    payload: dict[str, Any],
    timestamp: str,
    sent_signature: str,
) -> Instance:
    """The instance whose app/team ids fit the payload and whose signing secret made the signature."""
    instances = await hub.instances_for_channel(CHANNEL)
    if tenant is not None:
        instances = [i for i in instances if i.tenant == tenant.id]
    fitting = wire.candidates(instances, payload)
    if not fitting:
        app_id, teams = payload.get("api_app_id"), sorted(wire.payload_team_ids(payload))
        about = f" for app {app_id} / team {', '.join(teams)}" if app_id or teams else ""
        scope = f" of tenant {tenant.id!r}" if tenant is not None else ""
        raise ApiError(
            404,
            "unknown_instance",
            f"no Slack instance{scope}{about}; create it with POST /instances/create before setting the Request URL",
        )
    verified = [
        (score, instance)
        for score, instance in fitting
        if signature.matches(str(instance.config["signing_secret"]).strip(), timestamp, request.body, sent_signature)
    ]
    if not verified:
        raise ApiError(401, "invalid_signature", "X-Slack-Signature does not match the app's signing secret")
    winners = wire.best(verified)
    if len(winners) > 1 and payload.get("type") != "url_verification":
        names = ", ".join(sorted(f"{i.tenant}/{i.name}" for i in winners))
        raise ApiError(
            409,
            "ambiguous_instance",
            f"several Slack instances match this event ({names}); give each its app_id and team_id,"
            " or use the tenant's Request URL /webhooks/slack/{tenant_id}",
        )
    return winners[0]


def build_routes() -> list[WebhookRoute]:
    return [
        webhook_route(f"{WEBHOOK_PATH}/{{tenant_id:str}}", slack_events_for_tenant, name="slack_events_for_tenant"),
        webhook_route(WEBHOOK_PATH, slack_events, name="slack_events"),
    ]
