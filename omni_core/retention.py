"""Periodic purge: traces and finished jobs past TRACE_RETENTION_DAYS, and each tenant's message
history past its own ``history_retention_days`` (tenant config; default: keep forever)."""

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
    counts = await hub.store.purge(cutoff, cutoff, message_cutoffs(await hub.store.list_tenants(), now))
    if any(counts.values()):
        log.info("purged", **counts)
    return counts


async def purge_loop(hub: Hub) -> None:
    while True:
        try:
            await purge_once(hub)
        except Exception as exc:  # the next round tries again; the hub keeps serving
            log.warning("purge_failed", error=type(exc).__name__)
        await asyncio.sleep(hub.settings.purge_interval_seconds)
