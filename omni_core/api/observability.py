"""Traces, metrics and readiness: what an operator needs to answer "where is this message, and why"."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

from litestar import Response, get
from litestar.params import FromPath, FromQuery, QueryParameter

from omni_core.api.common import HubDep, PrincipalDep
from omni_core.api.messages import _timestamp
from omni_core.api.system import cached_queue_stats
from omni_core.errors import ApiError
from omni_core.store.base import TraceRecord
from omni_core.store.sqlite import migrations

PLUGIN_CHECK_TIMEOUT_S = 3.0


def trace_view(t: TraceRecord) -> dict[str, Any]:
    return {
        "message_id": t.message_id,
        "job_id": t.job_id,
        "stage": t.stage,
        "outcome": t.outcome,
        "at": t.at,
        "duration_ms": t.duration_ms,
        "plugin": t.plugin,
        "attempt": t.attempt,
        "status_code": t.status_code,
        "error": t.error,
    }


@get("/traces")
async def list_traces(
    hub: HubDep,
    principal: PrincipalDep,
    tenant: FromQuery[str | None] = None,
    message_id: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    scope = principal.tenant_scope()
    if scope is not None and tenant is not None and tenant != scope:
        raise ApiError(404, "unknown_tenant", f"no tenant with id {tenant!r}")
    rows = await hub.store.query_traces(
        scope or tenant, message_id, status, _timestamp("since", since), _timestamp("until", until), limit
    )
    return {"traces": [trace_view(t) for t in rows]}


@get("/messages/{message_id:str}/trace")
async def message_trace(message_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    message = await hub.store.get_message(message_id)
    if message is None or not principal.can_see(message.tenant):
        raise ApiError(404, "unknown_message", f"no message with id {message_id!r}")
    stages = await hub.store.traces_for_message(message_id)
    first = _epoch(stages[0].at) if stages else None
    last = _epoch(stages[-1].at) if stages else None
    return {
        "message_id": message_id,
        "status": message.status,
        "stages": [trace_view(t) for t in stages],
        "elapsed_ms": round((last - first) * 1000, 3) if first is not None and last is not None else None,
    }


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(hub: HubDep) -> Response[bytes]:
    """Prometheus text format. Queue gauges are refreshed at scrape (at most once a second)."""
    stats = await cached_queue_stats(hub)
    m = hub.pipeline.metrics
    m.queue_depth.set(stats["queued"] + stats["running"])
    m.dead_jobs.set(stats["dead"])
    due = stats.get("oldest_due_at")
    m.queue_oldest.set(max(0.0, time.time() - due) if due else 0.0)
    m.set_instances(await hub.store.list_instances(None))
    return Response(m.render(), media_type="text/plain; version=0.0.4")


@get("/health/ready")
async def ready(hub: HubDep) -> Response[dict[str, Any]]:
    """Readiness: the store answers, migrations are current, workers run, the queue keeps up,
    and every plugin's own check passes. 503 names what failed."""
    checks: dict[str, Any] = {}
    try:
        await hub.store.ping()
        version = await hub.store.schema_version()
        expected = max(v for v, _, _ in migrations("postgres" if hub.settings.database_url else "sqlite"))
        checks["database"] = {"status": "ok"}
        checks["migrations"] = {
            "status": "ok" if version >= expected else "error",
            "version": version,
            "expected": expected,
        }
        stats = await cached_queue_stats(hub)
        due = stats.get("oldest_due_at")  # jobs waiting for a scheduled retry are not "behind"
        age = max(0.0, time.time() - due) if due else 0.0
        limit = hub.settings.ready_max_queue_age_seconds
        checks["queue"] = {
            "status": "ok" if age <= limit else "error",
            "oldest_age_s": round(age, 3),
            "limit_s": limit,
            "depth": stats["queued"] + stats["running"],
        }
    except Exception as exc:
        checks["database"] = {"status": "error", "error": type(exc).__name__}
    workers = hub.workers
    if workers is not None:
        checks["workers"] = {"status": "ok" if workers.alive else "error", "in_flight": workers.in_flight}
    # Each plugin's check, called one by one so every result keeps its plugin's name.
    named = [(impl.plugin_name, impl.function(hub=hub)) for impl in hub.pm.hook.omni_health.get_hookimpls()]
    named = [(name, pending) for name, pending in named if pending is not None]
    for (name, _), result in zip(named, await _plugin_checks([p for _, p in named]), strict=True):
        checks[f"plugin:{name}"] = result
    failing = sorted(name for name, check in checks.items() if check.get("status") != "ok")
    body = {"status": "ok" if not failing else "error", "failing": failing, "checks": checks}
    return Response(body, status_code=200 if not failing else 503)


async def _plugin_checks(pending: list[Any]) -> list[dict[str, Any]]:
    async def run(awaitable: Any) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(awaitable, PLUGIN_CHECK_TIMEOUT_S)
        except Exception as exc:
            return {"status": "error", "error": getattr(exc, "message", None) or type(exc).__name__}
        return dict(result)

    return list(await asyncio.gather(*(run(p) for p in pending)))
