"""Periodic purge: traces and finished jobs past TRACE_RETENTION_DAYS, each tenant's message
history past its own ``history_retention_days`` (tenant config; default: keep forever), and send
idempotency keys past OMNI_IDEMPOTENCY_TTL_SECONDS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from omni_core.entities import Tenant
from omni_core.model import iso

if TYPE_CHECKING:
    from omni_core.hub import Hub

log = structlog.get_logger("omni.retention")
DAY = 86400.0


def message_cutoffs(tenants: Sequence[Tenant], now: float) -> dict[str, str]:
    """tenant -> ISO time before which its messages go, for tenants that set a retention."""
    cutoffs = {}
    for tenant in tenants:
        days = tenant.config.get("history_retention_days")
        if isinstance(days, int | float) and not isinstance(days, bool) and days > 0:
            cutoffs[tenant.id] = iso(datetime.fromtimestamp(now - days * DAY, UTC))
    return cutoffs


async def purge_once(hub: Hub, now: float | None = None) -> dict[str, int]:
    now = time.time() if now is None else now
    cutoff = iso(datetime.fromtimestamp(now - hub.settings.trace_retention_days * DAY, UTC))
    keys_cutoff = iso(datetime.fromtimestamp(now - hub.settings.idempotency_ttl_seconds, UTC))
    tenants = await hub.store.list_tenants()
    counts = await hub.store.purge(cutoff, cutoff, message_cutoffs(tenants, now), keys_cutoff)
    if any(counts.values()):
        log.info("purged", **counts)
    return counts


async def purge_loop(hub: Hub) -> None:
    while True:
        try:
            await purge_once(hub)
        except Exception as exc:  # the next round tries again; the hub keeps serving
            # With the error itself, not just its type: an operator must be able to tell a
            # missing table from a lock timeout without reproducing it.
            log.warning("purge_failed", error=repr(exc), interval_s=hub.settings.purge_interval_seconds)
        await asyncio.sleep(hub.settings.purge_interval_seconds)
