"""Tenant events: what the hub tells tenants' webhooks, and the delivery jobs that carry them.

Delivery jobs are written in the same transaction as the change they report wherever the store
allows it (new messages, replies, status changes, dead jobs), so an event is never lost between
a commit and a crash.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from omni_core.entities import TenantWebhook
from omni_core.ids import new_id
from omni_core.model import Message, now_iso, shareable
from omni_core.store.base import NewJob

MESSAGE_INBOUND = "message.inbound"
MESSAGE_OUTBOUND = "message.outbound"
MESSAGE_STATUS = "message.status"
INSTANCE_STATUS = "instance.status"
JOB_DEAD = "job.dead"
WEBHOOK_DISABLED = "webhook.disabled"

EVENTS = (MESSAGE_INBOUND, MESSAGE_OUTBOUND, MESSAGE_STATUS, INSTANCE_STATUS, JOB_DEAD, WEBHOOK_DISABLED)
#: Statuses reported as ``message.status`` events.
REPORTED_STATUSES = frozenset({"sent", "delivered", "read", "failed", "dead"})


def envelope(event: str, data: Any) -> dict[str, Any]:
    """The body of a delivery: ``{"type", "timestamp", "data"}`` (data: the unified message, usually)."""
    if isinstance(data, Message):
        data = shareable(data)
    return {"type": event, "timestamp": now_iso(), "data": msgspec.to_builtins(data)}


def delivery_jobs(
    webhooks: Sequence[TenantWebhook],
    event: str,
    data: Any,
    max_attempts: int,
    *,
    body: dict[str, Any] | None = None,
    traceparent: str | None = None,
) -> list[NewJob]:
    """One delivery job per webhook of the tenant that subscribed to ``event``.

    Every delivery has its own lane: deliveries are independent, so one slow or dead endpoint
    never holds up another. ``traceparent`` (the step that caused the event) puts the delivery's
    span in that message's trace.
    """
    targets = [w for w in webhooks if w.wants(event)]
    if not targets:
        return []
    payload_body = body if body is not None else envelope(event, data)
    event_id = new_id("evt")
    jobs = []
    for webhook in targets:
        job_id = new_id("dlv")
        jobs.append(
            NewJob(
                id=job_id,
                kind="webhook",
                lane=f"webhook\x1f{job_id}",
                max_attempts=max_attempts,
                run_at=time.time(),
                payload={
                    "webhook_id": webhook.id,
                    "event": event,
                    "event_id": event_id,
                    "body": payload_body,
                    **({"traceparent": traceparent} if traceparent else {}),
                },
            )
        )
    return jobs


def message_event_jobs(
    webhooks: Sequence[TenantWebhook], message: Message, max_attempts: int, traceparent: str | None = None
) -> list[NewJob]:
    """``message.inbound`` / ``message.outbound`` deliveries for a newly stored message."""
    event = MESSAGE_INBOUND if message.direction == "inbound" else MESSAGE_OUTBOUND
    return delivery_jobs(webhooks, event, message, max_attempts, traceparent=traceparent)


def status_event_jobs(webhooks: Sequence[TenantWebhook], message: Message, max_attempts: int) -> list[NewJob]:
    """``message.status`` deliveries when an outbound message reached a reported status."""
    if message.status not in REPORTED_STATUSES:
        return []
    return delivery_jobs(webhooks, MESSAGE_STATUS, message, max_attempts)
