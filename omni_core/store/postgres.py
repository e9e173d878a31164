"""PostgreSQL store (asyncpg, a connection pool) for one or many hub replicas on one database.

What makes it safe to share:

* migrations run under an advisory lock, so replicas starting together do not race;
* claiming locks candidate jobs with ``FOR UPDATE SKIP LOCKED`` and takes only lane heads, so
  two replicas never run two jobs of one chat, nor out of order;
* deduplication is the unique index on (tenant, instance, external_id), which serializes
  concurrent inserts of the same webhook across replicas;
* ``LISTEN omni_jobs`` wakes every replica within milliseconds of an insert (trigger), and
  ``LISTEN omni_cache`` drops cached tenants/instances another replica changed; a short TTL
  covers a lost listener connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import structlog

from omni_core.entities import Instance, Tenant, TenantWebhook
from omni_core.model import STATUS_RANK, Message, MessageChange, MessageStatus, apply_change, iso
from omni_core.store.base import (
    CLAIM_WINDOW,
    FINISHING_KINDS,
    STARTING_KINDS,
    Finished,
    HistoryPage,
    HistoryQuery,
    IdempotencyKey,
    InsertOutcome,
    Job,
    Lease,
    NewJob,
    Store,
    StoredKey,
    TraceRecord,
    pick_within_share,
    tenants_at_cap,
)
from omni_core.store.postgres_ingest import IngestBatcher
from omni_core.store.rows import (
    INSTANCE_COLUMNS,
    JOB_COLUMNS,
    JOB_COLUMNS_J,
    TENANT_COLUMNS,
    TRACE_COLUMNS,
    WEBHOOK_COLUMNS,
    ingest_trace_rows,
    instance_from_row,
    instance_row,
    job_from_row,
    json_encode,
    leased_job,
    message_from_row,
    message_row,
    replay_of,
    tenant_from_row,
    trace_conditions,
    trace_from_row,
    trace_row,
    webhook_from_row,
    webhook_row,
    where,
)
from omni_core.store.sqlite import advances, migrations

log = structlog.get_logger("omni.store")

#: Arbitrary constant key for the migration advisory lock ("omni" in ASCII).
MIGRATION_LOCK = 0x6F6D6E69
CACHE_TTL_S = 30.0

INSERT_MESSAGE_PG = (
    "INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
    " timestamp, created_at, updated_at, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
INSERT_TRACE_PG = (
    "INSERT INTO traces (tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome,"
    " status_code, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
INSERT_JOB_PG = (
    "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at, payload,"
    " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, $8, $9, $9)"
)


#: A delivery's completion in one statement (one round trip, atomic without an explicit
#: transaction): close the job if this worker still holds its lease, add the attempt's trace rows,
#: set the message's status and platform id, and queue its status-event jobs. $1 job id, $2 lease
#: owner, $3 now, $4 message id (NULL: a webhook delivery, which changes no message), $5 external
#: id, $6 status, $7 tenant, $8-$18 trace rows as column arrays, $19-$24 the jobs' columns (id,
#: kind, lane, max_attempts, run_at, payload). When the platform's echo of the send is already
#: stored (a row of the same instance with that external id), it writes nothing and says so: the
#: transaction path folds the echo in.
FINISH_DELIVER_PG = (
    "WITH echo AS (SELECT 1 FROM messages m JOIN messages o ON o.id = $4 WHERE m.tenant_id = o.tenant_id"
    " AND m.instance = o.instance AND m.external_id = $5 AND m.id != o.id),"
    " closed AS (UPDATE jobs SET status = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3"
    " WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND NOT EXISTS (SELECT 1 FROM echo) RETURNING 1),"
    " t AS (INSERT INTO traces (tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome,"
    " status_code, error) SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[],"
    " $13::int[], $14::text[], $15::float8[], $16::text[], $17::int[], $18::text[])"
    " WHERE EXISTS (SELECT 1 FROM closed)),"
    " m AS (UPDATE messages SET status = $6, external_id = COALESCE($5, external_id), error = NULL,"
    " updated_at = $3 WHERE id = $4 AND EXISTS (SELECT 1 FROM closed)),"
    " j AS (INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at,"
    " payload, created_at, updated_at)"
    " SELECT r.id, $7, r.kind, r.lane, $4, 'queued', 0, r.max_attempts, r.run_at, r.payload, $3, $3"
    " FROM unnest($19::text[], $20::text[], $21::text[], $22::int[], $23::float8[], $24::text[])"
    " WITH ORDINALITY AS r(id, kind, lane, max_attempts, run_at, payload, k)"
    " WHERE EXISTS (SELECT 1 FROM closed) ORDER BY r.k)"
    " SELECT EXISTS (SELECT 1 FROM echo), EXISTS (SELECT 1 FROM closed)"
)


#: A route job's completion in one statement (one round trip, atomic without an explicit
#: transaction): close the job if this worker still holds its lease, set the inbound message's
#: status, store the replies and their jobs, and add the attempt's trace rows. $1 job id, $2 lease
#: owner, $3 now, $4 the inbound message id (may be NULL), $5 its new status; $6-$17 the reply
#: message rows as column arrays; $18-$25 their jobs (the reply's position, id, kind, lane,
#: max_attempts, run_at, payload, and whether it may be handed off); $26/$27 the hand-off lease
#: (owner NULL: none); $28-$38 trace rows. The one job marked for hand-off is stored already
#: leased when its lane has nothing queued or running (its reply then `processing`), in the same
#: INSERT as the other jobs so that it keeps its place (seq) ahead of the later parts. Returns
#: whether the job was closed and the handed-off job's seq (NULL: nothing handed off).
FINISH_ROUTE_PG = (
    "WITH closed AS (UPDATE jobs SET status = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3"
    " WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING 1),"
    " src AS (UPDATE messages SET status = $5, error = NULL, updated_at = $3"
    " WHERE id = $4 AND EXISTS (SELECT 1 FROM closed)),"
    " rin AS (SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
    " $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::bytea[]) WITH ORDINALITY"
    " AS i(id, tenant_id, instance, source, direction, external_id, chat_id, status, timestamp, created_at,"
    " updated_at, body, rn)),"
    " jin AS (SELECT r.*, r.hand AND $26::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs a"
    " WHERE a.lane = r.lane AND a.status IN ('queued', 'running')) AS leased"
    " FROM unnest($18::bigint[], $19::text[], $20::text[], $21::text[], $22::int[], $23::float8[], $24::text[],"
    " $25::bool[]) WITH ORDINALITY AS r(rn, id, kind, lane, max_attempts, run_at, payload, hand, k)),"
    " rm AS (INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
    " timestamp, created_at, updated_at, body)"
    " SELECT i.id, i.tenant_id, i.instance, i.source, i.direction, i.external_id, i.chat_id,"
    " CASE WHEN EXISTS (SELECT 1 FROM jin WHERE jin.rn = i.rn AND jin.leased) THEN 'processing' ELSE i.status END,"
    " i.timestamp, i.created_at, i.updated_at, i.body FROM rin i WHERE EXISTS (SELECT 1 FROM closed) ORDER BY i.rn),"
    " j AS (INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at,"
    " payload, created_at, updated_at, lease_owner, lease_until)"
    " SELECT r.id, i.tenant_id, r.kind, r.lane, i.id, CASE WHEN r.leased THEN 'running' ELSE 'queued' END,"
    " CASE WHEN r.leased THEN 1 ELSE 0 END, r.max_attempts, r.run_at, r.payload, $3, $3,"
    " CASE WHEN r.leased THEN $26 END, CASE WHEN r.leased THEN $27::float8 END"
    " FROM jin r JOIN rin i ON i.rn = r.rn WHERE EXISTS (SELECT 1 FROM closed) ORDER BY r.k"
    " RETURNING seq, status),"
    " t AS (INSERT INTO traces (tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome,"
    " status_code, error) SELECT * FROM unnest($28::text[], $29::text[], $30::text[], $31::text[], $32::text[],"
    " $33::int[], $34::text[], $35::float8[], $36::text[], $37::int[], $38::text[])"
    " WHERE EXISTS (SELECT 1 FROM closed))"
    " SELECT EXISTS (SELECT 1 FROM closed), (SELECT seq FROM j WHERE status = 'running')"
)


#: Store a key unless the tenant holds it unexpired ($6: the expiry cut-off); returns a row only
#: when this statement stored it. A concurrent transaction's uncommitted insert of the same key
#: makes this one wait on the primary key until that transaction ends, then conflict (or insert,
#: if it rolled back); an expired row is replaced in place.
CLAIM_KEY_PG = (
    "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, response, created_at) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (tenant_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
    " response = EXCLUDED.response, created_at = EXCLUDED.created_at"
    " WHERE idempotency_keys.created_at < $6 RETURNING 1"
)


INSERT_LEASED_JOB_PG = (
    "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at, payload,"
    " created_at, updated_at, lease_owner, lease_until)"
    " SELECT $1, $2, $3, $4, $5, 'running', 1, $6, $7, $8, $9, $9, $10, $11"
    " WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE lane = $4 AND status IN ('queued', 'running'))"
    " RETURNING seq"
)


async def _insert_leased_if_head(conn: Any, job: NewJob, message: Message, now: str, lease: Lease) -> Job | None:
    """Store ``job`` already leased to ``lease.owner`` when its lane has nothing queued or running
    (it would be the lane's head anyway), moving its message to ``processing`` as a claim would;
    None (nothing written) when the lane is busy. A job another replica enqueues into the same
    lane at this very moment may then run beside it: the two were concurrent anyway."""
    seq = await conn.fetchval(
        INSERT_LEASED_JOB_PG, *_job_args(job, message.tenant, message.id, now), lease.owner, lease.until
    )
    if seq is None:
        return None
    await conn.execute("UPDATE messages SET status = 'processing' WHERE id = $1", message.id)
    message.status = "processing"
    return leased_job(job, int(seq), message.tenant, message.id, now, lease, message)


#: Positions in a ``_job_args`` row of the job columns the FINISH_* statements take as arrays.
_JOB_ARRAY_COLUMNS = (0, 2, 3, 5, 6, 7)


def _column_arrays(rows: Sequence[tuple[Any, ...]], columns: Sequence[int]) -> list[list[Any]]:
    """Rows as one list per column (what unnest() takes), for the columns at ``columns``."""
    return [[row[c] for row in rows] for c in columns]


def _job_args(job: NewJob, tenant: str, message_id: str | None, now: str) -> tuple[Any, ...]:
    return (
        job.id,
        tenant,
        job.kind,
        job.lane,
        message_id,
        job.max_attempts,
        job.run_at,
        json_encode(job.payload).decode(),
        now,
    )


#: Errors that mean the server is unreachable, shutting down or out of connections/resources.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now, canceled
    asyncpg.exceptions.InterfaceError,  # the connection was closed under the query
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own (it rolls back an open transaction).

    asyncpg's default sends ``RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all()``
    on every release: one more round trip per store call (~9% of the event loop's time end to end
    at 64 conversations). The store changes no session setting, opens no cursor, listens and takes its
    advisory lock on connections of their own, so pooled sessions have nothing to reset.
    """


def _raised_by_driver(exc: BaseException) -> bool:
    """Whether ``exc`` came out of asyncpg's own code (its traceback passes through it)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


def _claim_candidates_sql() -> str:
    # Expired leases first, then each kind's lane heads in seq order, each its own index walk
    # (`kind = 'x'`: a planner without fresh statistics sorted every queued job for `kind = ANY`).
    expired = (
        f"(SELECT {JOB_COLUMNS_J} FROM jobs j WHERE j.status = 'running' AND j.lease_until < $1"
        " AND NOT (j.tenant_id = ANY($2::text[])) ORDER BY j.seq LIMIT $3)"
    )
    heads = [
        f"(SELECT {JOB_COLUMNS_J} FROM jobs j WHERE j.status = 'queued' AND j.kind = '{kind}'"
        " AND j.run_at <= $1 AND NOT (j.tenant_id = ANY($2::text[]))"
        " AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.lane = j.lane AND p.seq < j.seq"
        " AND p.status IN ('queued', 'running')) ORDER BY j.seq LIMIT $4)"
        for kind in (*FINISHING_KINDS, *STARTING_KINDS)
    ]
    return " UNION ALL ".join([expired, *heads])


#: A claim's candidates: expired leases (up to $3) and up to $4 lane heads of every kind.
CLAIM_CANDIDATES_PG = _claim_candidates_sql()

#: Lease the picked jobs ($4: seqs) that are still claimable, and move their messages to
#: processing; each leased job comes back with its message's stored columns (NULL for a webhook job).
CLAIM_LEASE_PG = (
    "WITH leased AS ("
    " UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1,"
    " updated_at = $3 WHERE seq IN (SELECT seq FROM jobs WHERE seq = ANY($4::bigint[])"
    " AND (status = 'queued' OR (status = 'running' AND lease_until < $5)) FOR UPDATE SKIP LOCKED)"
    f" RETURNING {JOB_COLUMNS}),"
    " touched AS ("
    " UPDATE messages m SET status = 'processing', updated_at = $3 FROM leased l"
    " WHERE m.id = l.message_id AND l.kind <> 'webhook' RETURNING m.id, m.body, m.status, m.external_id)"
    f" SELECT {', '.join('l.' + c.strip() for c in JOB_COLUMNS.split(','))},"
    " t.body, t.status AS message_status, t.external_id"
    " FROM leased l LEFT JOIN touched t ON t.id = l.message_id AND l.kind <> 'webhook'"
)


def _claim_order(rows: Sequence[Any], limit: int) -> list[Any]:
    """The candidates a claim considers, in the order it takes them: expired leases, then work
    that completes a message (replies, webhook deliveries), then new routing; within each group
    oldest first, at most ``CLAIM_WINDOW`` candidates per free slot."""
    chosen = sorted((r for r in rows if r[6] == "running"), key=lambda r: r[1])  # UNION ALL keeps no order
    for kinds in FINISHING_KINDS, STARTING_KINDS:
        if len(chosen) >= limit:
            break
        window = (limit - len(chosen)) * CLAIM_WINDOW
        group = sorted((r for r in rows if r[6] == "queued" and r[3] in kinds), key=lambda r: r[1])
        chosen += group[:window]
    return chosen


class PostgresStore(Store):
    def unavailable(self, exc: BaseException) -> bool:
        # Socket errors and timeouts (connecting, waiting for a pooled connection) count only when
        # the driver raised them: the same types from a plugin's HTTP call are not the database's.
        return isinstance(exc, _UNAVAILABLE) or (isinstance(exc, OSError) and _raised_by_driver(exc))

    def __init__(self, dsn: str, *, pool_size: int = 20) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._ingest: IngestBatcher | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._job_callbacks: list[Callable[[], None]] = []
        self._tenant_cache: dict[str, tuple[float, Tenant]] = {}
        self._instance_cache: dict[tuple[str, str], tuple[float, Instance]] = {}
        self._channel_cache: dict[str, tuple[float, list[Instance]]] = {}
        self._webhook_cache: dict[str, tuple[float, list[TenantWebhook]]] = {}
        self._key_cache: dict[str, str] = {}
        self._cache_generation = 0
        self.applied_migrations: list[str] = []
        self._closing = False

    # --- life -----------------------------------------------------------------------------------
    async def open(self) -> None:
        self._closing = False
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=2, max_size=self.pool_size, command_timeout=60, reset=_keep_session
        )
        self._ingest = IngestBatcher(self._pool, unavailable=self.unavailable)
        try:
            self.applied_migrations = await self.migrate()
            await self._listen()
        except BaseException:
            await self.close()
            raise

    async def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock (replicas may start together)."""
        self._require_pool()
        applied: list[str] = []
        # A connection of its own, closed after: the session lock cannot outlive it in the pool
        # (pooled connections are not reset on release, see _keep_session).
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, name, sql in migrations("postgres"):
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                        )
                    applied.append(name)
                    log.info("migration_applied", migration=name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        finally:
            await conn.close()
        return applied

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener("omni_jobs", self._on_jobs)
        await self._listener.add_listener("omni_cache", self._on_cache)
        self._listener_task = asyncio.create_task(self._watch_listener(), name="omni-pg-listener")

    async def _watch_listener(self) -> None:
        """Reconnect the LISTEN connection if it drops; caches are dropped meanwhile (missed notices)."""
        while not self._closing:
            await asyncio.sleep(1.0)
            if self._listener is not None and not self._listener.is_closed():
                continue
            self._invalidate()
            try:
                await self._listen_once()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("listener_reconnect_failed", error=repr(exc))

    async def _listen_once(self) -> None:
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener("omni_jobs", self._on_jobs)
        await self._listener.add_listener("omni_cache", self._on_cache)
        for callback in self._job_callbacks:
            callback()

    def _on_jobs(self, *_: Any) -> None:
        for callback in self._job_callbacks:
            callback()

    def _on_cache(self, *_: Any) -> None:
        self._invalidate()

    def subscribe_jobs(self, callback: Callable[[], None]) -> None:
        self._job_callbacks.append(callback)

    async def close(self) -> None:
        self._closing = True
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener_task
            self._listener_task = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._ingest is not None:
            # Messages already queued are stored before the pool closes (their callers wait for them).
            await self._ingest.drain()
            self._ingest = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is closed")
        return self._pool

    def _require_ingest(self) -> IngestBatcher:
        if self._ingest is None:
            raise RuntimeError("store is closed")
        return self._ingest

    async def ping(self) -> None:
        await self._require_pool().fetchval("SELECT 1")

    async def schema_version(self) -> int:
        return int(await self._require_pool().fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    # --- caches ---------------------------------------------------------------------------------
    def _invalidate(self) -> None:
        self._cache_generation += 1
        self._tenant_cache.clear()
        self._instance_cache.clear()
        self._channel_cache.clear()
        self._webhook_cache.clear()
        self._key_cache.clear()

    @staticmethod
    def _fresh(entry: tuple[float, Any] | None) -> Any:
        if entry is None or time.monotonic() - entry[0] > CACHE_TTL_S:
            return None
        return entry[1]

    # --- tenants --------------------------------------------------------------------------------
    async def create_tenant(self, tenant: Tenant, api_key_hash: str) -> bool:
        status = await self._require_pool().execute(
            "INSERT INTO tenants (id, name, config, api_key_hash, webhook_secret, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            tenant.id,
            tenant.name,
            json_encode(tenant.config).decode(),
            api_key_hash,
            tenant.webhook_secret,
            tenant.created_at,
            tenant.updated_at,
        )
        self._invalidate()
        return bool(status.endswith(" 1"))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        cached: Tenant | None = self._fresh(self._tenant_cache.get(tenant_id))
        if cached is None:
            generation = self._cache_generation
            row = await self._require_pool().fetchrow(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant_id)
            if row is None:
                return None
            cached = tenant_from_row(row)
            if generation == self._cache_generation:
                self._tenant_cache[tenant_id] = (time.monotonic(), cached)
        return msgspec.structs.replace(cached)

    async def tenant_by_key_hash(self, api_key_hash: str) -> Tenant | None:
        tenant_id = self._key_cache.get(api_key_hash)
        if tenant_id is None:
            generation = self._cache_generation
            tenant_id = await self._require_pool().fetchval(
                "SELECT id FROM tenants WHERE api_key_hash = $1", api_key_hash
            )
            if tenant_id is None:
                return None
            # A read that raced with a key rotation (here or, via omni_cache, on another replica)
            # must not cache the old key again: this cache has no TTL.
            if generation == self._cache_generation:
                self._key_cache[api_key_hash] = tenant_id
        return await self.get_tenant(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._require_pool().fetch(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id")
        return [tenant_from_row(r) for r in rows]

    async def update_tenant(self, tenant: Tenant) -> None:
        self._invalidate()
        await self._require_pool().execute(
            "UPDATE tenants SET name = $1, config = $2, updated_at = $3 WHERE id = $4",
            tenant.name,
            json_encode(tenant.config).decode(),
            tenant.updated_at,
            tenant.id,
        )
        self._invalidate()

    async def set_tenant_api_key(self, tenant_id: str, api_key_hash: str, now: str) -> bool:
        # Other replicas drop their key caches on the omni_cache notice of tenants_notify.
        self._invalidate()
        status = await self._require_pool().execute(
            "UPDATE tenants SET api_key_hash = $1, updated_at = $2 WHERE id = $3", api_key_hash, now, tenant_id
        )
        self._invalidate()
        return bool(status.endswith(" 1"))

    async def rotate_tenant_webhook_secret(
        self, tenant_id: str, secret: str, previous_valid_until: float | None, now: str
    ) -> Tenant | None:
        self._invalidate()
        # SET expressions see the row as it was, so the previous secret is the one replaced here.
        row = await self._require_pool().fetchrow(
            "UPDATE tenants SET webhook_secret_previous = CASE WHEN $1::double precision IS NULL THEN NULL"
            " ELSE webhook_secret END, webhook_secret_previous_until = $1, webhook_secret = $2, updated_at = $3"
            f" WHERE id = $4 RETURNING {TENANT_COLUMNS}",
            previous_valid_until,
            secret,
            now,
            tenant_id,
        )
        self._invalidate()
        return tenant_from_row(row) if row is not None else None

    async def delete_tenant(self, tenant_id: str) -> bool:
        async with self._require_pool().acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM jobs WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM messages WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM traces WHERE tenant_id = $1", tenant_id)
            status = await conn.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
        self._invalidate()
        return bool(status.endswith(" 1"))

    # --- instances ------------------------------------------------------------------------------
    async def create_instance(self, instance: Instance) -> bool:
        self._invalidate()
        status = await self._require_pool().execute(
            f"INSERT INTO instances ({INSTANCE_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING",
            *_text_row(instance_row(instance)),
        )
        self._invalidate()
        return bool(status.endswith(" 1"))

    async def get_instance(self, instance_id: str) -> Instance | None:
        row = await self._require_pool().fetchrow(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1", instance_id
        )
        return instance_from_row(row) if row else None

    async def get_instance_by_name(self, channel: str, name: str) -> Instance | None:
        cached: Instance | None = self._fresh(self._instance_cache.get((channel, name)))
        if cached is None:
            generation = self._cache_generation
            row = await self._require_pool().fetchrow(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE channel = $1 AND name = $2", channel, name
            )
            if row is None:
                return None
            cached = instance_from_row(row)
            if generation == self._cache_generation:
                self._instance_cache[(channel, name)] = (time.monotonic(), cached)
        return msgspec.structs.replace(cached)

    async def find_instance(self, tenant: str | None, ref: str) -> Instance | None:
        if tenant is None:
            row = await self._require_pool().fetchrow(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1",
                ref,
            )
        else:
            row = await self._require_pool().fetchrow(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE (id = $1 OR name = $1) AND tenant_id = $2"
                " ORDER BY id = $1 DESC LIMIT 1",
                ref,
                tenant,
            )
        return instance_from_row(row) if row else None

    async def list_instances(self, tenant: str | None) -> list[Instance]:
        pool = self._require_pool()
        if tenant is None:
            rows = await pool.fetch(f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY tenant_id, name")
        else:
            rows = await pool.fetch(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = $1 ORDER BY name", tenant
            )
        return [instance_from_row(r) for r in rows]

    async def channel_instances(self, channel: str) -> list[Instance]:
        cached: list[Instance] | None = self._fresh(self._channel_cache.get(channel))
        if cached is None:
            generation = self._cache_generation
            rows = await self._require_pool().fetch(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE channel = $1 ORDER BY id", channel
            )
            cached = [instance_from_row(r) for r in rows]
            if generation == self._cache_generation:
                self._channel_cache[channel] = (time.monotonic(), cached)
        return [msgspec.structs.replace(i) for i in cached]

    async def update_instance(self, instance: Instance) -> None:
        row = _text_row(instance_row(instance))
        self._invalidate()
        await self._require_pool().execute(
            "UPDATE instances SET config = $1, state = $2, state_reason = $3, qrcode_base64 = $4, qrcode_code = $5,"
            " pairing_code = $6, profile = $7, updated_at = $8 WHERE id = $9",
            *row[4:11],
            row[12],
            row[0],
        )
        self._invalidate()

    async def delete_instance(self, instance_id: str) -> bool:
        status = await self._require_pool().execute("DELETE FROM instances WHERE id = $1", instance_id)
        self._invalidate()
        return bool(status.endswith(" 1"))

    # --- messages -------------------------------------------------------------------------------
    async def insert_message(
        self,
        message: Message,
        job: NewJob | None,
        now: str,
        extra_jobs: Sequence[NewJob] = (),
        traces: Sequence[TraceRecord] = (),
        lease: Lease | None = None,
    ) -> InsertOutcome:
        row = message_row(message, now)
        if lease is None:
            jobs = ([job] if job is not None else []) + list(extra_jobs)
            stored_id, accepted = await self._require_ingest().submit(row, jobs, traces)
            if stored_id is not None:
                return InsertOutcome(accepted=accepted, id=stored_id)
            # A duplicate that committed while the statement ran: the general path finds it.
        async with self._require_pool().acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(INSERT_MESSAGE_PG + " ON CONFLICT DO NOTHING RETURNING id", *row)
            if inserted is None:
                existing = await conn.fetchval(
                    "SELECT id FROM messages WHERE tenant_id = $1 AND instance = $2 AND external_id = $3",
                    message.tenant,
                    message.instance,
                    message.external_id,
                )
                if existing is None:
                    raise RuntimeError(f"message {message.id} could not be stored")
                outcome = InsertOutcome(accepted=False, id=existing)
            else:
                leased = None
                if job is not None and lease is not None:
                    leased = await _insert_leased_if_head(conn, job, message, now, lease)
                if job is not None and leased is None:
                    await conn.execute(INSERT_JOB_PG, *_job_args(job, message.tenant, message.id, now))
                for new_job in extra_jobs:
                    await conn.execute(INSERT_JOB_PG, *_job_args(new_job, message.tenant, message.id, now))
                outcome = InsertOutcome(accepted=True, id=message.id, leased=leased)
            if traces:
                await conn.executemany(INSERT_TRACE_PG, ingest_trace_rows(traces, outcome.id, outcome.accepted))
        return outcome

    async def get_message(self, message_id: str) -> Message | None:
        row = await self._require_pool().fetchrow(
            "SELECT body, status, external_id FROM messages WHERE id = $1", message_id
        )
        return message_from_row(row[0], row[1], row[2]) if row else None

    async def recent_messages(self, tenant: str, instance: str, chat_id: str, limit: int) -> list[Message]:
        rows = await self._require_pool().fetch(
            "SELECT body, status, external_id FROM messages WHERE tenant_id = $1 AND instance = $2 AND chat_id = $3"
            " ORDER BY id DESC LIMIT $4",
            tenant,
            instance,
            chat_id,
            limit,
        )
        return [message_from_row(r[0], r[1], r[2]) for r in reversed(rows)]

    async def history(self, query: HistoryQuery) -> HistoryPage:
        clauses = ["tenant_id = $1"]
        params: list[Any] = [query.tenant]
        for column, op, value in (
            ("instance", "=", query.instance),
            ("chat_id", "=", query.chat_id),
            ("direction", "=", query.direction),
            ("timestamp", ">=", query.since),
            ("timestamp", "<", query.until),
            ("id", "<", query.before_id),
        ):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} {op} ${len(params)}")
        params.append(query.limit + 1)
        rows = await self._require_pool().fetch(
            "SELECT body, status, external_id, id FROM messages WHERE "
            + " AND ".join(clauses)
            + f" ORDER BY id DESC LIMIT ${len(params)}",
            *params,
        )
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return HistoryPage(
            messages=[message_from_row(r[0], r[1], r[2]) for r in rows],
            next_before_id=rows[-1][3] if more and rows else None,
        )

    async def insert_outbound(
        self, items: Sequence[tuple[Message, Sequence[NewJob]]], now: str, key: IdempotencyKey | None = None
    ) -> StoredKey | None:
        async with self._require_pool().acquire() as conn:
            if key is None or not items:
                async with conn.transaction():
                    await _insert_outbound(conn, items, now)
                return None
            tenant = items[0][0].tenant
            response = json_encode(key.response).decode()
            # Read committed whatever the server's default: the read below is a statement of its
            # own, so it sees the row of the transaction the claim waited for (and the claim has
            # locked that row, so nothing deletes it in between).
            async with conn.transaction(isolation="read_committed"):
                claimed = await conn.fetchval(
                    CLAIM_KEY_PG, tenant, key.key, key.fingerprint, response, now, key.expired_before
                )
                if claimed is not None:
                    await _insert_outbound(conn, items, now)
                    return None
                found = await conn.fetchrow(
                    "SELECT fingerprint, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
                    tenant,
                    key.key,
                )
            if found is None:  # not expected: the claim conflicted with this very row
                raise RuntimeError(f"idempotency key of tenant {tenant} could not be read")
            return StoredKey(fingerprint=found[0], response=msgspec.json.decode(found[1]))

    async def apply_status(
        self,
        tenant: str,
        instance: str,
        external_id: str,
        status: MessageStatus,
        now: str,
        extra_jobs: Callable[[Message], Sequence[NewJob]] | None = None,
    ) -> str | None:
        async with self._require_pool().acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, status, body, external_id FROM messages"
                " WHERE tenant_id = $1 AND instance = $2 AND external_id = $3 FOR UPDATE",
                tenant,
                instance,
                external_id,
            )
            if row is None:
                return None
            message_id, current = row[0], row[1]
            if advances(current, status):
                await conn.execute(
                    "UPDATE messages SET status = $1, updated_at = $2 WHERE id = $3", status, now, message_id
                )
                if extra_jobs is not None:
                    for new_job in extra_jobs(message_from_row(row[2], status, row[3])):
                        await conn.execute(INSERT_JOB_PG, *_job_args(new_job, tenant, message_id, now))
            return str(message_id)

    async def record_change(self, tenant: str, instance: str, change: MessageChange, now: str) -> str | None:
        async with self._require_pool().acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, body, status, external_id FROM messages"
                " WHERE tenant_id = $1 AND instance = $2 AND external_id = $3 FOR UPDATE",
                tenant,
                instance,
                change.external_id,
            )
            if row is None:
                return None
            message = message_from_row(row[1], row[2], row[3])
            apply_change(message, change)
            await conn.execute(
                "UPDATE messages SET body = $1, updated_at = $2 WHERE id = $3", json_encode(message), now, row[0]
            )
            return str(row[0])

    # --- jobs -----------------------------------------------------------------------------------
    async def claim_jobs(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        busy: Mapping[str, int] | None = None,
        tenant_cap: int | None = None,
    ) -> list[Job]:
        excluded = tenants_at_cap(busy, tenant_cap)
        pool = self._require_pool()
        # Two statements, no transaction: the candidates (every kind's lane heads in one round
        # trip), then one UPDATE that leases those still claimable and returns them with their
        # messages. A candidate another replica is leasing right now is skipped (SKIP LOCKED: no
        # claim ever waits for another, so none can deadlock), and one it leased in between fails
        # the condition, re-checked on the row's newest version: a job is never leased twice.
        # Before: BEGIN, one SELECT ... FOR UPDATE SKIP LOCKED per kind, two UPDATEs and COMMIT,
        # eight round trips a claim, most of them finding nothing.
        rows = await pool.fetch(CLAIM_CANDIDATES_PG, now, excluded, limit, limit * CLAIM_WINDOW)
        picked = pick_within_share([job_from_row(r) for r in _claim_order(rows, limit)], limit, busy, tenant_cap)
        if not picked:
            return []
        leased = await pool.fetch(
            CLAIM_LEASE_PG,
            owner,
            now + lease_seconds,
            iso(datetime.fromtimestamp(now, UTC)),
            [j.seq for j in picked],
            now,
        )
        by_seq = {r[1]: r for r in leased}
        jobs = []
        for candidate in picked:
            row = by_seq.get(candidate.seq)
            if row is None:
                continue  # leased by someone else since it was read
            job = job_from_row(row)
            if row["body"] is not None:  # loaded in the lease's own round trip
                job.message = message_from_row(row["body"], row["message_status"], row["external_id"])
            jobs.append(job)
        return jobs

    async def extend_leases(self, owner: str, job_ids: Sequence[str], until: float) -> int:
        if not job_ids:
            return 0
        status = await self._require_pool().execute(
            "UPDATE jobs SET lease_until = $1 WHERE lease_owner = $2 AND status = 'running' AND id = ANY($3::text[])",
            until,
            owner,
            list(job_ids),
        )
        return int(status.split()[-1])

    async def finish_route(
        self,
        job: Job,
        message_status: MessageStatus,
        replies: Sequence[tuple[Message, Sequence[NewJob]]],
        now: str,
        traces: Sequence[TraceRecord] = (),
        hand_off: Lease | None = None,
    ) -> Finished:
        job_rows: list[tuple[Any, ...]] = []
        handed: tuple[Message, NewJob] | None = None
        lanes: set[str] = set()
        for position, (message, jobs) in enumerate(replies, 1):
            for new_job in jobs:
                # Only the first reply's send may be handed off, and only as its lane's first job
                # here: later parts queue behind it.
                hand = (
                    hand_off is not None
                    and handed is None
                    and position == 1
                    and new_job.kind == "deliver"
                    and new_job.lane not in lanes
                )
                if hand:
                    handed = (message, new_job)
                lanes.add(new_job.lane)
                args = _job_args(new_job, message.tenant, message.id, now)
                job_rows.append((position, *(args[c] for c in _JOB_ARRAY_COLUMNS), hand))
        closed, seq = await self._require_pool().fetchrow(
            FINISH_ROUTE_PG,
            job.id,
            job.lease_owner,
            now,
            job.message_id,
            message_status,
            *_column_arrays([message_row(m, now) for m, _ in replies], range(12)),
            *_column_arrays(job_rows, range(8)),
            hand_off.owner if hand_off is not None else None,
            hand_off.until if hand_off is not None else None,
            *_column_arrays([trace_row(r) for r in traces], range(11)),
        )
        if not closed:
            return Finished(ok=False)
        next_job = None
        if seq is not None and handed is not None and hand_off is not None:
            message, new_job = handed
            message.status = "processing"
            next_job = leased_job(new_job, int(seq), message.tenant, message.id, now, hand_off, message)
        return Finished(ok=True, next_job=next_job)

    async def finish_deliver(
        self,
        job: Job,
        external_id: str | None,
        status: MessageStatus,
        now: str,
        extra_jobs: Sequence[NewJob] = (),
        traces: Sequence[TraceRecord] = (),
    ) -> bool:
        changes_message = job.message_id is not None and job.kind != "webhook"
        jobs = list(extra_jobs) if changes_message else []
        trace_rows = [trace_row(r) for r in traces]
        echo, closed = await self._require_pool().fetchrow(
            FINISH_DELIVER_PG,
            job.id,
            job.lease_owner,
            now,
            job.message_id if changes_message else None,
            external_id,
            status,
            job.tenant,
            *_column_arrays(trace_rows, range(11)),
            *_column_arrays([_job_args(j, job.tenant, job.message_id, now) for j in jobs], _JOB_ARRAY_COLUMNS),
        )
        if not echo:
            return bool(closed)
        return await self._finish_deliver_folding_echo(job, external_id, status, now, jobs, trace_rows)

    async def _finish_deliver_folding_echo(
        self,
        job: Job,
        external_id: str | None,
        status: MessageStatus,
        now: str,
        extra_jobs: Sequence[NewJob],
        trace_rows: Sequence[tuple[Any, ...]],
    ) -> bool:
        """finish_deliver when the platform's echo of the send is stored: a transaction that merges it.

        Only reached for a delivery that changes its message (FINISH_DELIVER_PG found the echo
        by the message id and the platform id), so both are set here.
        """
        async with self._require_pool().acquire() as conn, conn.transaction():
            if not await _close_job(conn, job, "done", None, now):
                return False
            if trace_rows:
                await conn.executemany(INSERT_TRACE_PG, trace_rows)
            new_status = status
            # The platform echoed our send back as a webhook before we got here; that row is this
            # same message: fold it in (read again: it may have gone since the statement looked).
            echo = await conn.fetchrow(
                "SELECT m.id, m.status FROM messages m JOIN messages o ON o.id = $1"
                " WHERE m.tenant_id = o.tenant_id AND m.instance = o.instance AND m.external_id = $2"
                " AND m.id != o.id",
                job.message_id,
                external_id,
            )
            if echo is not None:
                await conn.execute("DELETE FROM messages WHERE id = $1", echo[0])
                if STATUS_RANK.get(echo[1], 0) > STATUS_RANK.get(status, 0):
                    new_status = echo[1]
            await conn.execute(
                "UPDATE messages SET status = $1, external_id = COALESCE($2, external_id), error = NULL,"
                " updated_at = $3 WHERE id = $4",
                new_status,
                external_id,
                now,
                job.message_id,
            )
            for new_job in extra_jobs:
                await conn.execute(INSERT_JOB_PG, *_job_args(new_job, job.tenant, job.message_id, now))
        return True

    async def retry_later(self, job: Job, error: str, run_at: float, now: str) -> bool:
        status = await self._require_pool().execute(
            "UPDATE jobs SET status = 'queued', run_at = $1, lease_owner = NULL, lease_until = NULL,"
            " last_error = $2, updated_at = $3 WHERE id = $4 AND lease_owner = $5 AND status = 'running'",
            run_at,
            error,
            now,
            job.id,
            job.lease_owner,
        )
        return bool(status.endswith(" 1"))

    async def bury(
        self, job: Job, error: str, message_status: MessageStatus, now: str, extra_jobs: Sequence[NewJob] = ()
    ) -> bool:
        async with self._require_pool().acquire() as conn, conn.transaction():
            if not await _close_job(conn, job, "dead", error, now):
                return False
            for new_job in extra_jobs:
                await conn.execute(INSERT_JOB_PG, *_job_args(new_job, job.tenant, job.message_id, now))
            if job.message_id is not None and job.kind != "webhook":
                await conn.execute(
                    "UPDATE messages SET status = $1, error = $2, updated_at = $3 WHERE id = $4",
                    message_status,
                    error,
                    now,
                    job.message_id,
                )
        return True

    async def requeue_dead(self, job_id: str, now_epoch: float, now: str) -> Job | None:
        async with self._require_pool().acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if row is None or row[6] != "dead":
                return None
            # Back of its lane (new seq): it cannot jump ahead of messages that arrived meanwhile.
            await conn.execute("DELETE FROM jobs WHERE id = $1", job_id)
            await conn.execute(
                "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at,"
                " last_error, payload, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, $8, $9, $10, $11)",
                row[0],
                row[2],
                row[3],
                row[4],
                row[5],
                row[8],
                now_epoch,
                row[12],
                row[13],
                row[14],
                now,
            )
            if row[5] is not None and row[3] != "webhook":  # a delivery reports on a message; it owns none
                await conn.execute(
                    "UPDATE messages SET status = 'queued', error = NULL, updated_at = $1 WHERE id = $2", now, row[5]
                )
            fresh = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return job_from_row(fresh) if fresh else None

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._require_pool().fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return job_from_row(row) if row else None

    async def jobs_for_message(self, message_id: str) -> list[Job]:
        rows = await self._require_pool().fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE message_id = $1 ORDER BY seq", message_id
        )
        return [job_from_row(r) for r in rows]

    async def queue_stats(self, now: float) -> dict[str, Any]:
        rows = await self._require_pool().fetch(
            "SELECT status, COUNT(*), MIN(created_at) FROM jobs WHERE status IN ('queued', 'running', 'dead')"
            " GROUP BY status"
        )
        stats: dict[str, Any] = {"queued": 0, "running": 0, "dead": 0, "oldest_created_at": None}
        oldest: list[str] = []
        for status, count, first in rows:
            stats[status] = count
            if status in ("queued", "running") and first:
                oldest.append(first)
        stats["oldest_created_at"] = min(oldest) if oldest else None
        # How long the longest-waiting runnable job has waited (jobs in backoff are not waiting).
        due = await self._require_pool().fetchval(
            "SELECT MIN(run_at) FROM jobs WHERE status = 'queued' AND run_at <= $1", now
        )
        stats["oldest_due_at"] = float(due) if due is not None else None
        return stats

    async def next_due(self) -> float | None:
        value = await self._require_pool().fetchval("SELECT MIN(run_at) FROM jobs WHERE status = 'queued'")
        return float(value) if value is not None else None

    async def recover_leases(self, owner_prefix_alive: str | None) -> int:
        # Other replicas may be alive: a lease is only taken over once it has expired (claim_jobs).
        return 0

    async def enqueue_jobs(self, tenant: str, message_id: str | None, jobs: Sequence[NewJob], now: str) -> None:
        if not jobs:
            return
        async with self._require_pool().acquire() as conn, conn.transaction():
            for new_job in jobs:
                await conn.execute(INSERT_JOB_PG, *_job_args(new_job, tenant, message_id, now))

    async def defer(self, job: Job, run_at: float, now: str) -> bool:
        status = await self._require_pool().execute(
            "UPDATE jobs SET status = 'queued', run_at = $1, lease_owner = NULL, lease_until = NULL,"
            " attempts = GREATEST(attempts - 1, 0), updated_at = $2"
            " WHERE id = $3 AND lease_owner = $4 AND status = 'running'",
            run_at,
            now,
            job.id,
            job.lease_owner,
        )
        return bool(status.endswith(" 1"))

    async def list_jobs(
        self,
        tenant: str,
        kind: str,
        statuses: Sequence[str] | None,
        limit: int,
        before_seq: int | None = None,
        webhook_id: str | None = None,
    ) -> list[Job]:
        rows = await self._require_pool().fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND kind = $2"
            " AND ($3::text[] IS NULL OR status = ANY($3::text[])) AND ($4::bigint IS NULL OR seq < $4)"
            " AND ($6::text IS NULL OR payload::jsonb ->> 'webhook_id' = $6)"
            " ORDER BY seq DESC LIMIT $5",
            tenant,
            kind,
            list(statuses) if statuses else None,
            before_seq,
            limit,
            webhook_id,
        )
        return [job_from_row(r) for r in rows]

    async def replay_job(self, job_id: str, new_id: str, now_epoch: float, now: str) -> Job | None:
        async with self._require_pool().acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
            if row is None:
                return None
            old = job_from_row(row)
            replay = replay_of(old, new_id, now_epoch)
            await conn.execute(INSERT_JOB_PG, *_job_args(replay, old.tenant, old.message_id, now))
            fresh = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", new_id)
        return job_from_row(fresh) if fresh else None

    # --- tenant webhooks ------------------------------------------------------------------------
    async def create_webhook(self, webhook: TenantWebhook) -> None:
        row = webhook_row(webhook)
        marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await self._require_pool().execute(f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ({marks})", *row)
        self._invalidate()

    async def get_webhook(self, webhook_id: str) -> TenantWebhook | None:
        row = await self._require_pool().fetchrow(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1", webhook_id)
        return webhook_from_row(row) if row else None

    async def list_webhooks(self, tenant: str) -> list[TenantWebhook]:
        cached: list[TenantWebhook] | None = self._fresh(self._webhook_cache.get(tenant))
        if cached is None:
            generation = self._cache_generation
            rows = await self._require_pool().fetch(
                f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY id", tenant
            )
            cached = [webhook_from_row(r) for r in rows]
            if generation == self._cache_generation:
                self._webhook_cache[tenant] = (time.monotonic(), cached)
        return [msgspec.structs.replace(w) for w in cached]

    async def update_webhook(self, webhook: TenantWebhook) -> None:
        row = webhook_row(webhook)
        self._invalidate()
        await self._require_pool().execute(
            "UPDATE webhooks SET url = $1, events = $2, secret = $3, enabled = $4, description = $5,"
            " secret_previous = $6, previous_valid_until = $7, failing_since = $8, disabled_reason = $9,"
            " updated_at = $10 WHERE id = $11",
            *row[2:11],
            row[12],
            row[0],
        )
        self._invalidate()

    async def delete_webhook(self, webhook_id: str) -> bool:
        status = await self._require_pool().execute("DELETE FROM webhooks WHERE id = $1", webhook_id)
        self._invalidate()
        return bool(status.endswith(" 1"))

    async def record_webhook_result(self, webhook_id: str, ok: bool, now: float) -> float | None:
        pool = self._require_pool()
        if ok:
            await pool.execute(
                "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL", webhook_id
            )
            return None
        value = await pool.fetchval(
            "UPDATE webhooks SET failing_since = COALESCE(failing_since, $1) WHERE id = $2 RETURNING failing_since",
            now,
            webhook_id,
        )
        return float(value) if value is not None else None

    # --- traces ---------------------------------------------------------------------------------
    async def add_traces(self, records: Sequence[TraceRecord]) -> None:
        if records:
            await self._require_pool().executemany(INSERT_TRACE_PG, [trace_row(r) for r in records])

    async def query_traces(
        self,
        tenant: str | None,
        message_id: str | None,
        outcome: str | None,
        since: str | None,
        until: str | None,
        limit: int,
    ) -> list[TraceRecord]:
        body, params = where(trace_conditions(tenant, message_id, outcome, since, until), lambda n: f"${n}")
        params.append(limit)
        rows = await self._require_pool().fetch(
            f"SELECT {TRACE_COLUMNS} FROM traces WHERE {body} ORDER BY id DESC LIMIT ${len(params)}", *params
        )
        return [trace_from_row(r) for r in rows]

    async def purge(
        self,
        traces_before: str,
        jobs_before: str,
        messages_before: Mapping[str, str],
        keys_before: str | None = None,
    ) -> dict[str, int]:
        async with self._require_pool().acquire() as conn, conn.transaction():
            keys = "DELETE 0"
            if keys_before is not None:
                keys = await conn.execute("DELETE FROM idempotency_keys WHERE created_at < $1", keys_before)
            traces = await conn.execute("DELETE FROM traces WHERE at < $1", traces_before)
            jobs = await conn.execute(
                "DELETE FROM jobs WHERE status IN ('done', 'dead') AND updated_at < $1", jobs_before
            )
            messages = 0
            for tenant, cutoff in messages_before.items():
                status = await conn.execute(
                    "DELETE FROM messages WHERE tenant_id = $1 AND created_at < $2 AND NOT EXISTS"
                    " (SELECT 1 FROM jobs j WHERE j.message_id = messages.id AND j.status IN ('queued', 'running'))",
                    tenant,
                    cutoff,
                )
                messages += int(status.split()[-1])
        return {
            "traces": int(traces.split()[-1]),
            "jobs": int(jobs.split()[-1]),
            "messages": messages,
            "idempotency_keys": int(keys.split()[-1]),
        }

    async def traces_for_message(self, message_id: str) -> list[TraceRecord]:
        rows = await self._require_pool().fetch(
            f"SELECT {TRACE_COLUMNS} FROM traces WHERE message_id = $1 ORDER BY id",
            message_id,
        )
        return [trace_from_row(r) for r in rows]

    async def traces_for_jobs(self, job_ids: Sequence[str]) -> dict[str, list[TraceRecord]]:
        if not job_ids:
            return {}
        rows = await self._require_pool().fetch(
            f"SELECT {TRACE_COLUMNS} FROM traces WHERE job_id = ANY($1::text[]) ORDER BY id",
            list(job_ids),
        )
        out: dict[str, list[TraceRecord]] = {}
        for r in rows:
            out.setdefault(r[2], []).append(trace_from_row(r))
        return out


async def _insert_outbound(conn: Any, items: Sequence[tuple[Message, Sequence[NewJob]]], now: str) -> None:
    """The messages and their jobs, on ``conn`` inside the caller's transaction."""
    for message, jobs in items:
        await conn.execute(INSERT_MESSAGE_PG, *message_row(message, now))
        for new_job in jobs:
            await conn.execute(INSERT_JOB_PG, *_job_args(new_job, message.tenant, message.id, now))


async def _close_job(conn: asyncpg.Connection, job: Job, status: str, error: str | None, now: str) -> bool:
    result = await conn.execute(
        "UPDATE jobs SET status = $1, last_error = COALESCE($2, last_error), lease_owner = NULL, lease_until = NULL,"
        " updated_at = $3 WHERE id = $4 AND lease_owner = $5 AND status = 'running'",
        status,
        error,
        now,
        job.id,
        job.lease_owner,
    )
    return bool(result.endswith(" 1"))


def _text_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """JSON columns are TEXT in PostgreSQL: bytes from the shared row builders become str."""
    return tuple(v.decode() if isinstance(v, bytes) else v for v in row)
