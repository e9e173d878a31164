"""The worker pool's slot accounting: direct dispatch (reserve / run_leased / release) and hand-offs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omni_core.pipeline import HandOff
from omni_core.store.base import Job
from omni_core.store.sqlite import SqliteStore
from omni_core.worker import WorkerPool


def job(job_id: str, tenant: str = "t1", kind: Any = "route") -> Job:
    return Job(
        id=job_id,
        seq=1,
        tenant=tenant,
        kind=kind,
        lane=f"{kind}\x1f{tenant}\x1fi1\x1fc1",
        message_id=None,
        status="running",
        attempts=1,
        max_attempts=3,
        run_at=0.0,
        lease_owner="w",
        lease_until=None,
        last_error=None,
        payload={},
        created_at="",
        updated_at="",
    )


class RecordingPipeline:
    """Runs nothing: records each job and hands over the follow-up job it was told to."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, HandOff | None]] = []
        self.follow_ups: dict[str, Job] = {}
        self.gate = asyncio.Event()
        self.gate.set()

    async def run_job(self, job: Job, hand_off: HandOff | None = None) -> Job | None:
        await self.gate.wait()
        self.ran.append((job.id, hand_off))
        return self.follow_ups.get(job.id)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[WorkerPool, RecordingPipeline]]:
    store = SqliteStore(str(tmp_path / "hub.db"))
    await store.open()
    pipeline = RecordingPipeline()
    workers = WorkerPool(store, pipeline, concurrency=8, lease_seconds=30, poll_interval=0.05)  # type: ignore[arg-type]
    await workers.start()
    yield workers, pipeline
    await workers.stop(grace_seconds=1)
    await store.close()


async def test_nothing_is_reserved_before_the_pool_runs(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "hub.db"))
    workers = WorkerPool(store, RecordingPipeline(), concurrency=8, lease_seconds=30, poll_interval=0.05)  # type: ignore[arg-type]
    assert workers.reserve("t1") is None


async def test_reservations_keep_headroom_and_the_tenant_share(pool: tuple[WorkerPool, RecordingPipeline]) -> None:
    workers, _ = pool
    assert workers.headroom == 2 and workers.tenant_concurrency == 4
    leases = [workers.reserve("t1") for _ in range(5)]
    assert all(lease is not None for lease in leases[:4]) and leases[4] is None  # t1's share is 4
    assert leases[0] is not None and leases[0].owner == workers.owner
    assert workers.reserve("t2") is not None and workers.reserve("t3") is not None
    assert workers.reserve("t4") is None  # 6 of 8 taken: the last 2 are left for claims
    workers.release("t1")
    assert workers.reserve("t5") is not None


async def test_a_leased_job_runs_and_gives_its_slot_back(pool: tuple[WorkerPool, RecordingPipeline]) -> None:
    workers, pipeline = pool
    pipeline.gate.clear()
    assert workers.reserve("t1") is not None
    workers.run_leased(job("job_a"))
    await asyncio.sleep(0.01)
    assert workers.in_flight == 1
    pipeline.gate.set()
    for _ in range(100):
        if workers.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert [ran for ran, _ in pipeline.ran] == ["job_a"]
    assert pipeline.ran[0][1] == HandOff(workers.owner, 30)
    assert workers.in_flight == 0 and workers._per_tenant == {} and workers._reserved == 0


async def test_a_hand_off_runs_in_the_same_slot(pool: tuple[WorkerPool, RecordingPipeline]) -> None:
    workers, pipeline = pool
    pipeline.follow_ups["route_1"] = job("deliver_1", kind="deliver")
    assert workers.reserve("t1") is not None
    workers.run_leased(job("route_1"))
    for _ in range(100):
        if len(pipeline.ran) == 2 and workers.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert [ran for ran, _ in pipeline.ran] == ["route_1", "deliver_1"]
    assert workers.in_flight == 0 and workers._per_tenant == {}
