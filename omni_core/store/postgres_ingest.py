"""PostgreSQL ingest with group commit: the webhooks that arrive together are stored in one statement.

One new message used to be one statement (the message, its queued jobs and its ingest trace rows
as data-modifying CTEs) and so one commit and one round trip; under webhook load the PostgreSQL
server's CPU, per statement and per commit, was what bounded ingest. :class:`IngestBatcher`
collects the messages queued during one pass of the event loop and, while ``max_inflight``
batches are already running, every message queued meanwhile, and stores each batch with
:data:`INGEST_BATCH_PG`: one round trip and one commit for all of them. Every caller still gets
its own answer, and only once the statement (its own implicit transaction) has committed.

Deduplication is unchanged: the unique index on (tenant, instance, external_id) decides, within
the batch and against every other transaction. Two copies of one webhook never share a batch
(the later copy waits for the next one), because a copy inserted by the same statement is
invisible to the statement's own lookup of the stored id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from omni_core.store.base import NewJob, TraceRecord
from omni_core.store.rows import json_encode

#: Messages ($1-$12, the message rows as column arrays), their queued jobs ($13-$19: the message's
#: position in the batch, then id, kind, lane, max_attempts, run_at, payload) and their ingest trace
#: rows ($20-$30: the message's position, then tenant, job_id, stage, plugin, attempt, at,
#: duration_ms, outcome, status_code, error). Returns one row per message: its position, the stored
#: id (the new one, or the earlier copy's for a duplicate) and whether it was new. A duplicate gets
#: no jobs and its trace rows go to the stored message. A copy committed by another transaction
#: while this statement waited on the unique index is invisible to it: then that message's id
#: comes back NULL and nothing but its (failed) insert happened; the caller finds the copy.
INGEST_BATCH_PG = (
    "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[]) WITH ORDINALITY"
    " AS i(id, tenant_id, instance, source, direction, external_id, chat_id, status, timestamp, created_at,"
    " updated_at, body, n)),"
    " m AS (INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
    " timestamp, created_at, updated_at, body)"
    " SELECT id, tenant_id, instance, source, direction, external_id, chat_id, status, timestamp, created_at,"
    " updated_at, body FROM input ORDER BY n ON CONFLICT DO NOTHING RETURNING id),"
    " j AS (INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at,"
    " payload, created_at, updated_at)"
    " SELECT r.id, i.tenant_id, r.kind, r.lane, i.id, 'queued', 0, r.max_attempts, r.run_at, r.payload,"
    " i.created_at, i.created_at"
    " FROM unnest($13::bigint[], $14::text[], $15::text[], $16::text[], $17::int[], $18::float8[], $19::text[])"
    " WITH ORDINALITY AS r(n, id, kind, lane, max_attempts, run_at, payload, k)"
    " JOIN input i ON i.n = r.n JOIN m ON m.id = i.id ORDER BY r.k),"
    " found AS (SELECT i.n, COALESCE(m.id, (SELECT e.id FROM messages e WHERE e.tenant_id = i.tenant_id"
    " AND e.instance = i.instance AND e.external_id = i.external_id)) AS id, m.id IS NOT NULL AS accepted"
    " FROM input i LEFT JOIN m ON m.id = i.id),"
    " t AS (INSERT INTO traces (tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome,"
    " status_code, error)"
    " SELECT r.tenant, f.id, r.job_id, r.stage, r.plugin, r.attempt, r.at, r.duration_ms,"
    " CASE WHEN r.stage = 'deduplicated' THEN CASE WHEN f.accepted THEN 'new' ELSE 'duplicate' END"
    " ELSE r.outcome END, r.status_code, r.error"
    " FROM unnest($20::bigint[], $21::text[], $22::text[], $23::text[], $24::text[], $25::int[], $26::text[],"
    " $27::float8[], $28::text[], $29::int[], $30::text[])"
    " WITH ORDINALITY AS r(n, tenant, job_id, stage, plugin, attempt, at, duration_ms, outcome, status_code,"
    " error, k)"
    " JOIN found f ON f.n = r.n WHERE f.id IS NOT NULL ORDER BY r.k)"
    " SELECT n, id, accepted FROM found"
)

_JOB_FIELDS = ("id", "kind", "lane", "max_attempts", "run_at")
_TRACE_FIELDS = (
    "tenant",
    "job_id",
    "stage",
    "plugin",
    "attempt",
    "at",
    "duration_ms",
    "outcome",
    "status_code",
    "error",
)


class PendingIngest:
    """One message waiting for its batch: its row, jobs and trace records, and its caller's future."""

    __slots__ = ("future", "jobs", "key", "row", "traces")

    def __init__(
        self,
        row: tuple[Any, ...],
        jobs: Sequence[NewJob],
        traces: Sequence[TraceRecord],
        future: asyncio.Future[tuple[str | None, bool]],
    ) -> None:
        self.row = row
        self.jobs = jobs
        self.traces = traces
        self.future = future
        # (tenant, instance, external_id): two copies of one webhook never share a batch.
        self.key = (row[1], row[2], row[5]) if row[5] is not None else None


def batch_arguments(batch: Sequence[PendingIngest]) -> list[list[Any]]:
    """:data:`INGEST_BATCH_PG`'s 30 column arrays for ``batch`` (positions are 1-based, in order)."""
    messages: list[list[Any]] = [[] for _ in range(12)]
    jobs: list[list[Any]] = [[] for _ in range(len(_JOB_FIELDS) + 2)]
    traces: list[list[Any]] = [[] for _ in range(len(_TRACE_FIELDS) + 1)]
    for n, item in enumerate(batch, 1):
        for column, value in zip(messages, item.row, strict=True):
            column.append(value)
        for job in item.jobs:
            jobs[0].append(n)
            for column, field in zip(jobs[1:6], _JOB_FIELDS, strict=True):
                column.append(getattr(job, field))
            jobs[-1].append(json_encode(job.payload).decode())
        for trace in item.traces:
            traces[0].append(n)
            for column, field in zip(traces[1:], _TRACE_FIELDS, strict=True):
                column.append(getattr(trace, field))
    return [*messages, *jobs, *traces]


class IngestBatcher:
    """Group commit for new messages on a pool: ``submit`` answers (stored id or None, accepted).

    A batch leaves at the end of the event loop pass in which its first message was queued,
    unless ``max_inflight`` batches are running: then messages queue until one ends, and leave
    together (up to ``max_batch`` per statement). If a batch's statement fails, each of its
    messages is retried in a statement of its own, so one bad message fails only itself; unless
    ``unavailable(error)`` says the database itself is unreachable: then the batch fails at once.
    """

    # More than one batch in flight so that a batch waiting on a row lock (a copy of one of its
    # webhooks being stored by another replica) does not hold up every other webhook; more than a
    # few only adds contention (c=64, alternating runs: 1 -> 4.7k, 3 -> 4.6k, 8 -> 4.2k ack/s).
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        unavailable: Callable[[BaseException], bool] = lambda exc: False,
        max_batch: int = 256,
        max_inflight: int = 3,
    ) -> None:
        self._pool = pool
        self._unavailable = unavailable
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pending: list[PendingIngest] = []
        self._running: set[asyncio.Task[None]] = set()
        self._scheduled = False
        #: Statements sent so far (each stores a batch); tests and profiles read it.
        self.statements = 0

    def submit(
        self, row: tuple[Any, ...], jobs: Sequence[NewJob], traces: Sequence[TraceRecord]
    ) -> asyncio.Future[tuple[str | None, bool]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str | None, bool]] = loop.create_future()
        self._pending.append(PendingIngest(row, jobs, traces, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and len(self._running) < self._max_inflight:
            batch, copies_left = self._take()
            if batch:
                task = asyncio.get_running_loop().create_task(self._run(batch), name="omni-pg-ingest")
                self._running.add(task)
                task.add_done_callback(self._done)
            if not batch or copies_left:
                # A copy of a webhook in this batch waits for a batch to end, so that it usually
                # finds its twin committed (first come, first stored) instead of racing it.
                break

    def _take(self) -> tuple[list[PendingIngest], bool]:
        """The next batch (pending messages in order), and whether a second copy of one of its
        webhooks was left for a later one."""
        batch: list[PendingIngest] = []
        left: list[PendingIngest] = []
        keys: set[tuple[Any, ...]] = set()
        copies_left = False
        for item in self._pending:
            if item.future.done():  # its caller gave up (cancelled) before it left: drop it
                continue
            if item.key is not None and item.key in keys:
                copies_left = True
                left.append(item)
                continue
            if len(batch) >= self._max_batch:
                left.append(item)
                continue
            if item.key is not None:
                keys.add(item.key)
            batch.append(item)
        self._pending = left
        return batch, copies_left

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[PendingIngest]) -> None:
        self.statements += 1
        try:
            rows = await self._pool.fetch(INGEST_BATCH_PG, *batch_arguments(batch))
        except asyncio.CancelledError:
            for item in batch:
                _fail(item.future, RuntimeError("the store closed while the message was being stored"))
            raise
        except Exception as exc:
            if len(batch) == 1 or self._unavailable(exc):
                # The database is down or out of connections: retrying each message alone would
                # only multiply the wait. Every message of the batch fails with the error.
                for item in batch:
                    _fail(item.future, exc)
                return
            # One message the statement refused fails the whole batch: retry each alone.
            await asyncio.gather(*(self._run([item]) for item in batch))
            return
        for n, stored_id, accepted in rows:
            future = batch[n - 1].future
            if not future.done():
                future.set_result((stored_id, bool(accepted)))

    async def drain(self) -> None:
        """Wait until every message submitted so far has been stored (or has failed)."""
        while True:
            self._flush()
            if not self._running:
                return
            await asyncio.gather(*list(self._running), return_exceptions=True)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
