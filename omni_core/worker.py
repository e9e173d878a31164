"""In-process worker pool over the durable job queue.

One dispatcher claims runnable jobs (the head of each chat's lane) up to the free capacity
and runs each in its own task. Jobs of one chat therefore run one at a time and in order,
while different chats and tenants proceed in parallel: a slow agent for one tenant only
occupies that tenant's slots, never a queue others wait behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

import structlog

from omni_core.pipeline import HandOff, Pipeline
from omni_core.store.base import Job, Lease, Store

log = structlog.get_logger("omni.worker")


class WorkerPool:
    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        *,
        concurrency: int,
        tenant_concurrency: int = 0,
        lease_seconds: float,
        poll_interval: float,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.concurrency = concurrency
        # A per-tenant share keeps one tenant's slow agent from taking every slot.
        self.tenant_concurrency = tenant_concurrency or max(1, concurrency // 2)
        self._per_tenant: dict[str, int] = {}
        #: Slots promised to jobs being stored already leased to us (direct dispatch, see reserve).
        self._reserved = 0
        #: Direct dispatch only uses spare capacity: the rest stays for claims, which take
        #: replies and webhook deliveries before new routing.
        self.headroom = max(1, concurrency // 4)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.owner_prefix = f"{socket.gethostname()}:{os.getpid()}:"
        self.owner = self.owner_prefix + uuid.uuid4().hex[:8]
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.last_tick = time.monotonic()

    def notify(self) -> None:
        """Something changed in the queue; look for runnable jobs now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # --- direct dispatch: a job stored already leased to this worker ---------------------------
    def reserve(self, tenant: str) -> Lease | None:
        """A slot for a job about to be stored leased to this worker, when there is spare capacity
        (and the tenant is under its share); then :meth:`run_leased` or :meth:`release` must follow.

        A message that arrives while workers are free then starts at once, with no claim query
        and no wait for the dispatcher; under load the queue and its claim order decide."""
        if self._stopping or not self._tasks:
            return None
        if self.concurrency - len(self._running) - self._reserved <= self.headroom:
            return None
        if self._per_tenant.get(tenant, 0) >= self.tenant_concurrency:
            return None
        self._reserved += 1
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        return Lease(self.owner, time.time() + self.lease_seconds)

    def run_leased(self, job: Job) -> None:
        """Run a job stored leased to us in a slot taken with :meth:`reserve`."""
        self._reserved -= 1
        self._running[job.id] = asyncio.create_task(self._run(job), name=f"omni-job-{job.id}")

    def release(self, tenant: str) -> None:
        """Give back a reserved slot whose job was queued instead (its lane was busy)."""
        self._reserved -= 1
        self._release_tenant(tenant)
        self._wake.set()

    @property
    def alive(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def start(self) -> None:
        released = await self.store.recover_leases(self.owner_prefix)
        if released:
            log.warning("recovered_jobs", count=released, reason="leases held by a previous run")
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="omni-dispatcher"),
            asyncio.create_task(self._keep_leases(), name="omni-lease-keeper"),
        ]

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming, let running jobs finish for a while, then cancel the rest.

        A cancelled job keeps its lease and is picked up again after the restart.
        """
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._running:
            _, pending = await asyncio.wait(list(self._running.values()), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _dispatch(self) -> None:
        while not self._stopping:
            self.last_tick = time.monotonic()
            self._wake.clear()
            free = self.concurrency - len(self._running) - self._reserved
            claimed: list[Job] = []
            if free > 0:
                try:
                    claimed = await self.store.claim_jobs(
                        self.owner,
                        free,
                        time.time(),
                        self.lease_seconds,
                        busy=dict(self._per_tenant),
                        tenant_cap=self.tenant_concurrency,
                    )
                except Exception:
                    log.exception("claim_failed")
                    await asyncio.sleep(self.poll_interval)
                    continue
                for job in claimed:
                    task = asyncio.create_task(self._run(job), name=f"omni-job-{job.id}")
                    self._running[job.id] = task
                    self._per_tenant[job.tenant] = self._per_tenant.get(job.tenant, 0) + 1
            if claimed and len(claimed) == free:
                # Saturated: wait for a slot, not for the poll interval.
                await self._wait(self.poll_interval)
                continue
            if claimed:
                continue  # there may be more runnable work
            await self._wait(await self._idle_timeout())

    async def _idle_timeout(self) -> float:
        try:
            due = await self.store.next_due()
        except Exception:
            return self.poll_interval
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, due - time.time()))

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run(self, job: Job) -> None:
        task = self._running[job.id]
        current: Job | None = job
        try:
            while current is not None:
                running = current
                try:
                    current = await self.pipeline.run_job(running, self._hand_off())
                except Exception:
                    log.exception("job_crashed", job_id=running.id)
                    current = None
                self._running.pop(running.id, None)
                if current is not None:
                    # The reply's deliver job, leased to us as the route job finished: same
                    # tenant, same slot; the lease keeper now extends it.
                    self._running[current.id] = task
        finally:
            if current is not None:  # cancelled mid-job: that job keeps its lease (taken over after a restart)
                self._running.pop(current.id, None)
            self._release_tenant(job.tenant)
            self._wake.set()

    def _release_tenant(self, tenant: str) -> None:
        left = self._per_tenant.get(tenant, 1) - 1
        if left > 0:
            self._per_tenant[tenant] = left
        else:
            self._per_tenant.pop(tenant, None)

    def _hand_off(self) -> HandOff | None:
        """Take over the reply's send when a route job finishes, unless shutting down."""
        return None if self._stopping else HandOff(self.owner, self.lease_seconds)

    async def _keep_leases(self) -> None:
        """Extend the leases of jobs still running here, so a long agent call is not taken over."""
        interval = max(0.5, self.lease_seconds / 3)
        while not self._stopping:
            await asyncio.sleep(interval)
            ids = list(self._running)
            if ids:
                try:
                    await self.store.extend_leases(self.owner, ids, time.time() + self.lease_seconds)
                except Exception:
                    log.exception("lease_extension_failed")
