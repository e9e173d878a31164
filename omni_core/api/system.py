"""Health, plugin listing and job control."""

from __future__ import annotations

import time
from typing import Any

from litestar import Response, get, post
from litestar.params import FromPath

from omni_core.api.common import HubDep, PrincipalDep
from omni_core.errors import ApiError
from omni_core.hub import Hub
from omni_core.plugins import describe_plugins

QUEUE_STATS_TTL_S = 1.0
_queue_stats: dict[int, tuple[float, dict[str, Any]]] = {}


async def cached_queue_stats(hub: Hub) -> dict[str, Any]:
    """Queue counts at most once a second: health checks stay cheap however often they come."""
    taken, stats = _queue_stats.get(id(hub), (0.0, {}))
    if time.monotonic() - taken > QUEUE_STATS_TTL_S:
        stats = await hub.store.queue_stats(time.time())
        _queue_stats[id(hub)] = (time.monotonic(), stats)
    return dict(stats)


@get("/health")
async def health(hub: HubDep) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {}
    healthy = True
    started = time.perf_counter()
    try:
        await hub.store.ping()
        stats = await cached_queue_stats(hub)
        checks["database"] = {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        stats.pop("oldest_created_at", None)
        due = stats.pop("oldest_due_at", None)
        age = round(max(0.0, time.time() - due), 3) if due else None
        checks["queue"] = {"status": "ok", "depth": stats["queued"] + stats["running"], **stats, "oldest_age_s": age}
    except Exception as exc:
        healthy = False
        checks["database"] = {"status": "error", "error": type(exc).__name__}
    workers = hub.workers
    checks["workers"] = {
        "status": "ok" if workers is None or workers.alive else "error",
        "in_flight": workers.in_flight if workers else 0,
    }
    if workers is not None and not workers.alive:
        healthy = False
    body = {"status": "ok" if healthy else "error", "checks": checks}
    return Response(body, status_code=200 if healthy else 503)


@get("/plugins")
async def list_plugins(hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    principal.require_admin()
    return {"plugins": describe_plugins(hub.pm)}


@post("/jobs/{job_id:str}/retry", status_code=200)
async def retry_job(job_id: FromPath[str], hub: HubDep, principal: PrincipalDep) -> dict[str, Any]:
    job = await hub.store.get_job(job_id)
    if job is None or not principal.can_see(job.tenant):
        raise ApiError(404, "unknown_job", f"no job with id {job_id!r}")
    if job.status != "dead":
        raise ApiError(409, "job_not_dead", f"job {job_id} is {job.status}; only dead jobs can be retried")
    fresh = await hub.pipeline.retry_dead_job(job_id)
    if fresh is None:
        raise ApiError(409, "job_not_dead", f"job {job_id} is no longer dead")
    return {"job": fresh.public()}
