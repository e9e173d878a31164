"""Embedded default store: SQLite through aiosqlite, WAL mode.

Writes go through one writer thread that runs every write queued meanwhile in a single
transaction (group commit, :mod:`omni_core.store.sqlite_writer`): under load many webhooks
share one commit, so acknowledging each only after its commit stays cheap. Each write is one
plain function run inside that transaction (one thread hop per batch, not one per statement);
reads run the same way on a second connection (aiosqlite's thread), which WAL lets run beside
the writer. One hub process
owns a database file (an exclusive lock file enforces it), which is what lets it release
every stale lease at start-up.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
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
    InsertOutcome,
    Job,
    Lease,
    NewJob,
    Store,
    TraceRecord,
    pick_within_share,
    tenants_at_cap,
)
from omni_core.store.rows import (
    INSERT_MESSAGE,
    INSERT_TRACE,
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
    tenant_from_row,
    trace_conditions,
    trace_from_row,
    trace_row,
    webhook_from_row,
    webhook_row,
    where,
)
from omni_core.store.sqlite_writer import GroupCommitWriter, WriteOp, WriterConnection, flush_rows, insert_rows

T = TypeVar("T")
log = structlog.get_logger("omni.store")


class StoreLockedError(RuntimeError):
    """Another hub process already uses this database file."""


def migrations(dialect: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration of ``dialect``, in order."""
    found = []
    folder = resources.files("omni_core.store").joinpath("migrations", dialect)
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def run_on_connection_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> Any:
    """Run ``fn(sqlite3_connection)`` on aiosqlite's worker thread; await the result.

    aiosqlite's public API costs one thread hop per statement; a batch of webhooks needs a
    dozen statements each. ``Connection._execute`` (stable across aiosqlite 0.17-0.22, the
    range pinned in pyproject) runs a whole function in one hop instead.
    """
    return conn._execute(lambda: fn(conn._conn))  # type: ignore[no-untyped-call]


class SqliteStore(Store):
    #: One writer connection runs every write in order (group commit), so a lane check inside a
    #: write sees all earlier inserts: direct dispatch keeps each chat in order.
    serialized_writes = True

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: GroupCommitWriter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._closing = False
        # Tenants and instances are read on every webhook and change rarely. This process is
        # the database's only writer (file lock), so invalidating on our own writes keeps
        # these caches exact.
        self._tenant_cache: dict[str, Tenant] = {}
        self._key_cache: dict[str, str] = {}
        self._instance_cache: dict[tuple[str, str], Instance] = {}
        self._channel_cache: dict[str, list[Instance]] = {}
        self._webhook_cache: dict[str, list[TenantWebhook]] = {}
        #: Bumped on every invalidation; a read that raced with one does not fill the cache.
        self._cache_generation = 0
        self.applied_migrations: list[str] = []

    # --- life -----------------------------------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
            self._lock_fd = take_file_lock(self.path)
        self._closing = False
        try:
            self._writer = GroupCommitWriter(self._connect)
            await self._writer.open()
            self.applied_migrations = await self.migrate()
            self._reader = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
            await run_on_connection_thread(self._reader, self._configure)
        except BaseException:
            await self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection (opened on the writer's thread)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, factory=WriterConnection)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA cache_size=-65536")

    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""
        assert self._writer is not None

        def apply(db: sqlite3.Connection) -> list[str]:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
            )
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            applied = []
            for version, name, sql in migrations():
                if version in done:
                    continue
                db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _split_sql(sql):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                applied.append(name)
            return applied

        applied: list[str] = await self._writer.call(apply)
        for name in applied:
            log.info("migration_applied", migration=name)
        return applied

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            await self._writer.close()
        if self._reader is not None:
            await self._reader.close()
        self._reader = self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        row = await self._read(
            lambda db: db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        )
        return int(row[0]) if row else 0

    # --- plumbing -------------------------------------------------------------------------------
    def _invalidate(self) -> None:
        """Forget cached tenants and instances (called around every write that changes them)."""
        self._cache_generation += 1
        self._tenant_cache.clear()
        self._key_cache.clear()
        self._instance_cache.clear()
        self._channel_cache.clear()
        self._webhook_cache.clear()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise RuntimeError("store is closed")
        result: T = await run_on_connection_thread(self._reader, fn)
        return result

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._read(lambda db: db.execute(sql, params).fetchone())

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._read(lambda db: db.execute(sql, params).fetchall())

    async def _write(self, op: WriteOp) -> Any:
        """Run ``op`` inside the writer's next transaction and return its result after COMMIT."""
        if self._closing or self._writer is None:
            raise RuntimeError("store is closed")
        return await self._writer.write(op)

    # --- tenants --------------------------------------------------------------------------------
    async def create_tenant(self, tenant: Tenant, api_key_hash: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "INSERT INTO tenants (id, name, config, api_key_hash, webhook_secret, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    tenant.id,
                    tenant.name,
                    json_encode(tenant.config),
                    api_key_hash,
                    tenant.webhook_secret,
                    tenant.created_at,
                    tenant.updated_at,
                ),
            )
            return cur.rowcount == 1

        return bool(await self._write(op))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        cached = self._tenant_cache.get(tenant_id)
        if cached is None:
            generation = self._cache_generation
            row = await self._fetchone(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,))
            if row is None:
                return None
            cached = tenant_from_row(row)
            if generation == self._cache_generation:
                self._tenant_cache[tenant_id] = cached
        return msgspec.structs.replace(cached)

    async def tenant_by_key_hash(self, api_key_hash: str) -> Tenant | None:
        tenant_id = self._key_cache.get(api_key_hash)
        if tenant_id is None:
            row = await self._fetchone("SELECT id FROM tenants WHERE api_key_hash = ?", (api_key_hash,))
            if row is None:
                return None
            tenant_id = self._key_cache[api_key_hash] = row[0]
        return await self.get_tenant(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        return [tenant_from_row(r) for r in await self._fetchall(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id")]

    async def update_tenant(self, tenant: Tenant) -> None:
        self._invalidate()

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE tenants SET name = ?, config = ?, updated_at = ? WHERE id = ?",
                (tenant.name, json_encode(tenant.config), tenant.updated_at, tenant.id),
            )

        await self._write(op)
        self._invalidate()

    async def delete_tenant(self, tenant_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM jobs WHERE tenant_id = ?", (tenant_id,))
            db.execute("DELETE FROM messages WHERE tenant_id = ?", (tenant_id,))
            flush_rows(db)  # traces deferred by earlier writes of this batch go too
            db.execute("DELETE FROM traces WHERE tenant_id = ?", (tenant_id,))
            return db.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,)).rowcount == 1

        deleted = bool(await self._write(op))
        self._invalidate()
        return deleted

    # --- instances ------------------------------------------------------------------------------
    async def create_instance(self, instance: Instance) -> bool:
        row = instance_row(instance)
        self._invalidate()

        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                row,
            )
            return cur.rowcount == 1

        created = bool(await self._write(op))
        self._invalidate()
        return created

    async def get_instance(self, instance_id: str) -> Instance | None:
        row = await self._fetchone(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?", (instance_id,))
        return instance_from_row(row) if row else None

    async def get_instance_by_name(self, channel: str, name: str) -> Instance | None:
        cached = self._instance_cache.get((channel, name))
        if cached is None:
            generation = self._cache_generation
            row = await self._fetchone(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE channel = ? AND name = ?", (channel, name)
            )
            if row is None:
                return None
            cached = instance_from_row(row)
            if generation == self._cache_generation:
                self._instance_cache[(channel, name)] = cached
        return msgspec.structs.replace(cached)

    async def find_instance(self, tenant: str | None, ref: str) -> Instance | None:
        sql = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE (id = ? OR name = ?)"
        params: list[Any] = [ref, ref]
        if tenant is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant)
        rows = await self._fetchall(sql + " ORDER BY id = ? DESC LIMIT 1", [*params, ref])
        return instance_from_row(rows[0]) if rows else None

    async def list_instances(self, tenant: str | None) -> list[Instance]:
        if tenant is None:
            rows = await self._fetchall(f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY tenant_id, name")
        else:
            rows = await self._fetchall(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = ? ORDER BY name", (tenant,)
            )
        return [instance_from_row(r) for r in rows]

    async def channel_instances(self, channel: str) -> list[Instance]:
        cached = self._channel_cache.get(channel)
        if cached is None:
            generation = self._cache_generation
            rows = await self._fetchall(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE channel = ? ORDER BY id", (channel,)
            )
            cached = [instance_from_row(r) for r in rows]
            if generation == self._cache_generation:
                self._channel_cache[channel] = cached
        return [msgspec.structs.replace(i) for i in cached]

    async def update_instance(self, instance: Instance) -> None:
        row = instance_row(instance)
        self._invalidate()

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE instances SET config = ?, state = ?, state_reason = ?, qrcode_base64 = ?, qrcode_code = ?,"
                " pairing_code = ?, profile = ?, updated_at = ? WHERE id = ?",
                (*row[4:11], row[12], row[0]),
            )

        await self._write(op)
        self._invalidate()

    async def delete_instance(self, instance_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM instances WHERE id = ?", (instance_id,)).rowcount == 1

        deleted = bool(await self._write(op))
        self._invalidate()
        return deleted

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

        def op(db: sqlite3.Connection) -> InsertOutcome:
            cur = db.execute(INSERT_MESSAGE + " ON CONFLICT DO NOTHING", row)
            if cur.rowcount == 0:
                found = db.execute(
                    "SELECT id FROM messages WHERE tenant_id = ? AND instance = ? AND external_id = ?",
                    (message.tenant, message.instance, message.external_id),
                ).fetchone()
                if found is None:  # a message id collision: never expected with ULIDs
                    raise RuntimeError(f"message {message.id} could not be stored")
                outcome = InsertOutcome(accepted=False, id=found[0])
            else:
                leased = None
                if job is not None and lease is not None:
                    leased = _insert_leased_if_head(db, job, message, now, lease)
                if job is not None and leased is None:
                    _insert_job(db, job, message.tenant, message.id, now)
                for new_job in extra_jobs:
                    _insert_job(db, new_job, message.tenant, message.id, now)
                outcome = InsertOutcome(accepted=True, id=message.id, leased=leased)
            if traces:
                insert_rows(db, INSERT_TRACE, ingest_trace_rows(traces, outcome.id, outcome.accepted))
            return outcome

        result: InsertOutcome = await self._write(op)
        return result

    async def get_message(self, message_id: str) -> Message | None:
        row = await self._fetchone("SELECT body, status, external_id FROM messages WHERE id = ?", (message_id,))
        return message_from_row(*row) if row else None

    async def recent_messages(self, tenant: str, instance: str, chat_id: str, limit: int) -> list[Message]:
        rows = await self._fetchall(
            "SELECT body, status, external_id FROM messages WHERE tenant_id = ? AND instance = ? AND chat_id = ?"
            " ORDER BY id DESC LIMIT ?",
            (tenant, instance, chat_id, limit),
        )
        return [message_from_row(*r) for r in reversed(rows)]

    async def history(self, query: HistoryQuery) -> HistoryPage:
        clauses = ["tenant_id = ?"]
        params: list[Any] = [query.tenant]
        for column, value in (("instance", query.instance), ("chat_id", query.chat_id), ("direction", query.direction)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.since is not None:
            clauses.append("timestamp >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("timestamp < ?")
            params.append(query.until)
        if query.before_id is not None:
            clauses.append("id < ?")
            params.append(query.before_id)
        rows = await self._fetchall(
            "SELECT body, status, external_id, id FROM messages WHERE "
            + " AND ".join(clauses)
            + " ORDER BY id DESC LIMIT ?",
            [*params, query.limit + 1],
        )
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return HistoryPage(
            messages=[message_from_row(r[0], r[1], r[2]) for r in rows],
            next_before_id=rows[-1][3] if more and rows else None,
        )

    async def insert_outbound(self, items: Sequence[tuple[Message, Sequence[NewJob]]], now: str) -> None:
        rows = [(message_row(m, now), m, jobs) for m, jobs in items]

        def op(db: sqlite3.Connection) -> None:
            for row, message, jobs in rows:
                db.execute(INSERT_MESSAGE, row)
                for new_job in jobs:
                    _insert_job(db, new_job, message.tenant, message.id, now)

        await self._write(op)

    async def apply_status(
        self,
        tenant: str,
        instance: str,
        external_id: str,
        status: MessageStatus,
        now: str,
        extra_jobs: Callable[[Message], Sequence[NewJob]] | None = None,
    ) -> str | None:
        def op(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT id, status, body, external_id FROM messages"
                " WHERE tenant_id = ? AND instance = ? AND external_id = ?",
                (tenant, instance, external_id),
            ).fetchone()
            if row is None:
                return None
            message_id, current = row[0], row[1]
            if advances(current, status):
                db.execute("UPDATE messages SET status = ?, updated_at = ? WHERE id = ?", (status, now, message_id))
                if extra_jobs is not None:
                    for new_job in extra_jobs(message_from_row(row[2], status, row[3])):
                        _insert_job(db, new_job, tenant, message_id, now)
            return str(message_id)

        result: str | None = await self._write(op)
        return result

    async def record_change(self, tenant: str, instance: str, change: MessageChange, now: str) -> str | None:
        def op(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT id, body, status, external_id FROM messages"
                " WHERE tenant_id = ? AND instance = ? AND external_id = ?",
                (tenant, instance, change.external_id),
            ).fetchone()
            if row is None:
                return None
            message = message_from_row(row[1], row[2], row[3])
            apply_change(message, change)
            db.execute("UPDATE messages SET body = ?, updated_at = ? WHERE id = ?", (json_encode(message), now, row[0]))
            return str(row[0])

        result: str | None = await self._write(op)
        return result

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

        def op(db: sqlite3.Connection) -> list[Job]:
            # Only the head of a lane (its lowest unfinished seq) may run: that keeps one chat
            # strictly in order while other chats run in parallel. A job whose lease expired is
            # always a head (only heads run), so it is simply claimable again.
            skip = f" AND j.tenant_id NOT IN ({','.join('?' * len(excluded))})" if excluded else ""
            rows = db.execute(
                f"SELECT {JOB_COLUMNS_J} FROM jobs j WHERE j.status = 'running' AND j.lease_until < ?{skip} LIMIT ?",
                (now, *excluded, limit),
            ).fetchall()
            # Work that completes a message first (replies, webhook deliveries), then new routing.
            for kinds in FINISHING_KINDS, STARTING_KINDS:
                if len(rows) >= limit:
                    break
                window = (limit - len(rows)) * CLAIM_WINDOW
                # One kind per query: the (kind, seq) index then yields jobs in order and the scan
                # stops at the limit; `kind IN (...)` would sort every queued job of the kinds.
                group = []
                for kind in kinds:
                    group += db.execute(
                        f"SELECT {JOB_COLUMNS_J} FROM jobs j INDEXED BY jobs_queued_kind"
                        " WHERE j.status = 'queued' AND j.kind = ? AND j.run_at <= ?"
                        " AND NOT EXISTS (SELECT 1 FROM jobs p WHERE p.lane = j.lane AND p.seq < j.seq"
                        f" AND p.status IN ('queued', 'running')){skip} ORDER BY j.seq LIMIT ?",
                        (kind, now, *excluded, window),
                    ).fetchall()
                group.sort(key=lambda r: r[1])  # seq: oldest first across the kinds
                rows += group[:window]
            jobs = pick_within_share([job_from_row(row) for row in rows], limit, busy, tenant_cap)
            if not jobs:
                return []
            stamp = iso(datetime.fromtimestamp(now, UTC))
            until = now + lease_seconds
            seqs = [j.seq for j in jobs]
            db.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1,"
                f" updated_at = ? WHERE seq IN ({','.join('?' * len(seqs))})",
                (owner, until, stamp, *seqs),
            )
            for job in jobs:
                job.status, job.lease_owner, job.lease_until = "running", owner, until
                job.attempts += 1
            message_ids = [j.message_id for j in jobs if j.message_id is not None and j.kind != "webhook"]
            if message_ids:
                marks = ",".join("?" * len(message_ids))
                db.execute(
                    f"UPDATE messages SET status = 'processing', updated_at = ? WHERE id IN ({marks})",
                    (stamp, *message_ids),
                )
                # Loaded here, in the claim's own hop, so the worker need not read them again.
                loaded = {
                    row[0]: message_from_row(row[1], row[2], row[3])
                    for row in db.execute(
                        f"SELECT id, body, status, external_id FROM messages WHERE id IN ({marks})", message_ids
                    )
                }
                for job in jobs:
                    if job.kind != "webhook" and job.message_id is not None:
                        job.message = loaded.get(job.message_id)
            return jobs

        result: list[Job] = await self._write(op)
        return result

    async def extend_leases(self, owner: str, job_ids: Sequence[str], until: float) -> int:
        if not job_ids:
            return 0
        ids = list(job_ids)

        def op(db: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(ids))
            cur = db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE lease_owner = ? AND status = 'running' AND id IN ({marks})",
                (until, owner, *ids),
            )
            return int(cur.rowcount)

        result: int = await self._write(op)
        return result

    async def finish_route(
        self,
        job: Job,
        message_status: MessageStatus,
        replies: Sequence[tuple[Message, Sequence[NewJob]]],
        now: str,
        traces: Sequence[TraceRecord] = (),
        hand_off: Lease | None = None,
    ) -> Finished:
        trace_rows = [trace_row(r) for r in traces]

        def op(db: sqlite3.Connection) -> Finished:
            if not _close_job(db, job, "done", None, now):
                return Finished(ok=False)
            if job.message_id is not None:
                db.execute(
                    "UPDATE messages SET status = ?, error = NULL, updated_at = ? WHERE id = ?",
                    (message_status, now, job.message_id),
                )
            next_job = None
            for i, (message, jobs) in enumerate(replies):
                db.execute(INSERT_MESSAGE, message_row(message, now))
                for new_job in jobs:
                    # Only the first reply's send may be handed off: later parts queue behind it.
                    if i == 0 and new_job.kind == "deliver" and hand_off is not None and next_job is None:
                        next_job = _insert_leased_if_head(db, new_job, message, now, hand_off)
                        if next_job is not None:
                            continue
                    _insert_job(db, new_job, message.tenant, message.id, now)
            if trace_rows:
                insert_rows(db, INSERT_TRACE, trace_rows)
            return Finished(ok=True, next_job=next_job)

        result: Finished = await self._write(op)
        return result

    async def finish_deliver(
        self,
        job: Job,
        external_id: str | None,
        status: MessageStatus,
        now: str,
        extra_jobs: Sequence[NewJob] = (),
        traces: Sequence[TraceRecord] = (),
    ) -> bool:
        trace_rows = [trace_row(r) for r in traces]

        def op(db: sqlite3.Connection) -> bool:
            if not _close_job(db, job, "done", None, now):
                return False
            if trace_rows:
                insert_rows(db, INSERT_TRACE, trace_rows)
            if job.message_id is None or job.kind == "webhook":
                return True  # a webhook delivery reports on a message; it does not change it
            new_status = status
            if external_id is not None:
                # The platform may have echoed our send back as a webhook (Evolution's
                # send.message) before we got here; that row is this same message: fold it in.
                echo = db.execute(
                    "SELECT m.id, m.status FROM messages m JOIN messages o ON o.id = ?"
                    " WHERE m.tenant_id = o.tenant_id AND m.instance = o.instance AND m.external_id = ?"
                    " AND m.id != o.id",
                    (job.message_id, external_id),
                ).fetchone()
                if echo is not None:
                    db.execute("DELETE FROM messages WHERE id = ?", (echo[0],))
                    if STATUS_RANK.get(echo[1], 0) > STATUS_RANK.get(status, 0):
                        new_status = echo[1]
            db.execute(
                "UPDATE messages SET status = ?, external_id = COALESCE(?, external_id), error = NULL, updated_at = ?"
                " WHERE id = ?",
                (new_status, external_id, now, job.message_id),
            )
            for new_job in extra_jobs:
                _insert_job(db, new_job, job.tenant, job.message_id, now)
            return True

        return bool(await self._write(op))

    async def retry_later(self, job: Job, error: str, run_at: float, now: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', run_at = ?, lease_owner = NULL, lease_until = NULL,"
                " last_error = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (run_at, error, now, job.id, job.lease_owner),
            )
            return cur.rowcount == 1

        return bool(await self._write(op))

    async def bury(
        self, job: Job, error: str, message_status: MessageStatus, now: str, extra_jobs: Sequence[NewJob] = ()
    ) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            if not _close_job(db, job, "dead", error, now):
                return False
            if job.message_id is not None and job.kind != "webhook":
                db.execute(
                    "UPDATE messages SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                    (message_status, error, now, job.message_id),
                )
            for new_job in extra_jobs:
                _insert_job(db, new_job, job.tenant, job.message_id, now)
            return True

        return bool(await self._write(op))

    async def requeue_dead(self, job_id: str, now_epoch: float, now: str) -> Job | None:
        def op(db: sqlite3.Connection) -> Job | None:
            # A retried job goes to the back of its lane (new seq) so it cannot jump ahead of
            # messages that arrived while it was dead.
            row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[6] != "dead":
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute(
                "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at,"
                " last_error, payload, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?)",
                (row[0], row[2], row[3], row[4], row[5], row[8], now_epoch, row[12], row[13], row[14], now),
            )
            if row[5] is not None and row[3] != "webhook":  # a delivery reports on a message; it owns none
                db.execute(
                    "UPDATE messages SET status = 'queued', error = NULL, updated_at = ? WHERE id = ?", (now, row[5])
                )
            fresh = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return job_from_row(fresh)

        result: Job | None = await self._write(op)
        return result

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(row) if row else None

    async def jobs_for_message(self, message_id: str) -> list[Job]:
        rows = await self._fetchall(f"SELECT {JOB_COLUMNS} FROM jobs WHERE message_id = ? ORDER BY seq", (message_id,))
        return [job_from_row(r) for r in rows]

    async def queue_stats(self, now: float) -> dict[str, Any]:
        rows = await self._fetchall(
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
        due = await self._fetchone("SELECT MIN(run_at) FROM jobs WHERE status = 'queued' AND run_at <= ?", (now,))
        stats["oldest_due_at"] = float(due[0]) if due and due[0] is not None else None
        return stats

    async def next_due(self) -> float | None:
        row = await self._fetchone("SELECT MIN(run_at) FROM jobs WHERE status = 'queued'")
        return float(row[0]) if row and row[0] is not None else None

    async def recover_leases(self, owner_prefix_alive: str | None) -> int:
        # The file lock guarantees no other process uses this database, so every lease not
        # held by this process belongs to a worker that died with its process.
        def op(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL"
                " WHERE status = 'running' AND (? IS NULL OR lease_owner NOT LIKE ? || '%')",
                (owner_prefix_alive, owner_prefix_alive),
            )
            return int(cur.rowcount)

        result: int = await self._write(op)
        return result

    async def enqueue_jobs(self, tenant: str, message_id: str | None, jobs: Sequence[NewJob], now: str) -> None:
        if not jobs:
            return

        def op(db: sqlite3.Connection) -> None:
            for new_job in jobs:
                _insert_job(db, new_job, tenant, message_id, now)

        await self._write(op)

    async def defer(self, job: Job, run_at: float, now: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', run_at = ?, lease_owner = NULL, lease_until = NULL,"
                " attempts = MAX(attempts - 1, 0), updated_at = ?"
                " WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (run_at, now, job.id, job.lease_owner),
            )
            return cur.rowcount == 1

        return bool(await self._write(op))

    async def list_jobs(
        self, tenant: str, kind: str, statuses: Sequence[str] | None, limit: int, before_seq: int | None = None
    ) -> list[Job]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = ? AND kind = ?"
        params: list[Any] = [tenant, kind]
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            params.extend(statuses)
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(before_seq)
        rows = await self._fetchall(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit])
        return [job_from_row(r) for r in rows]

    async def replay_job(self, job_id: str, new_id: str, now_epoch: float, now: str) -> Job | None:
        def op(db: sqlite3.Connection) -> Job | None:
            row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            old = job_from_row(row)
            replay = NewJob(
                id=new_id,
                kind=old.kind,
                lane=f"{old.kind}\x1f{new_id}",
                max_attempts=old.max_attempts,
                run_at=now_epoch,
                payload=old.payload,
            )
            _insert_job(db, replay, old.tenant, old.message_id, now)
            fresh = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (new_id,)).fetchone()
            return job_from_row(fresh)

        result: Job | None = await self._write(op)
        return result

    # --- tenant webhooks ------------------------------------------------------------------------
    async def create_webhook(self, webhook: TenantWebhook) -> None:
        row = webhook_row(webhook)

        def op(db: sqlite3.Connection) -> None:
            db.execute(f"INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ({','.join('?' * len(row))})", row)

        await self._write(op)
        self._invalidate()

    async def get_webhook(self, webhook_id: str) -> TenantWebhook | None:
        row = await self._fetchone(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,))
        return webhook_from_row(row) if row else None

    async def list_webhooks(self, tenant: str) -> list[TenantWebhook]:
        cached = self._webhook_cache.get(tenant)
        if cached is None:
            generation = self._cache_generation
            rows = await self._fetchall(
                f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = ? ORDER BY id", (tenant,)
            )
            cached = [webhook_from_row(r) for r in rows]
            if generation == self._cache_generation:
                self._webhook_cache[tenant] = cached
        return [msgspec.structs.replace(w) for w in cached]

    async def update_webhook(self, webhook: TenantWebhook) -> None:
        row = webhook_row(webhook)

        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE webhooks SET url = ?, events = ?, secret = ?, enabled = ?, description = ?,"
                " secret_previous = ?, previous_valid_until = ?, failing_since = ?, disabled_reason = ?,"
                " updated_at = ? WHERE id = ?",
                (*row[2:11], row[12], row[0]),
            )

        self._invalidate()
        await self._write(op)
        self._invalidate()

    async def delete_webhook(self, webhook_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount == 1

        deleted = bool(await self._write(op))
        self._invalidate()
        return deleted

    async def record_webhook_result(self, webhook_id: str, ok: bool, now: float) -> float | None:
        def op(db: sqlite3.Connection) -> float | None:
            if ok:
                db.execute(
                    "UPDATE webhooks SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL",
                    (webhook_id,),
                )
                return None
            db.execute("UPDATE webhooks SET failing_since = COALESCE(failing_since, ?) WHERE id = ?", (now, webhook_id))
            row = db.execute("SELECT failing_since FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        result: float | None = await self._write(op)
        return result

    # --- traces ---------------------------------------------------------------------------------
    async def add_traces(self, records: Sequence[TraceRecord]) -> None:
        if not records:
            return
        rows = [trace_row(r) for r in records]

        def op(db: sqlite3.Connection) -> None:
            insert_rows(db, INSERT_TRACE, rows)

        await self._write(op)

    async def query_traces(
        self,
        tenant: str | None,
        message_id: str | None,
        outcome: str | None,
        since: str | None,
        until: str | None,
        limit: int,
    ) -> list[TraceRecord]:
        body, params = where(trace_conditions(tenant, message_id, outcome, since, until), lambda _: "?")
        rows = await self._fetchall(
            f"SELECT {TRACE_COLUMNS} FROM traces WHERE {body} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [trace_from_row(r) for r in rows]

    async def purge(self, traces_before: str, jobs_before: str, messages_before: Mapping[str, str]) -> dict[str, int]:
        def op(db: sqlite3.Connection) -> dict[str, int]:
            flush_rows(db)
            counts = {
                "traces": db.execute("DELETE FROM traces WHERE at < ?", (traces_before,)).rowcount,
                "jobs": db.execute(
                    "DELETE FROM jobs WHERE status IN ('done', 'dead') AND updated_at < ?", (jobs_before,)
                ).rowcount,
                "messages": 0,
            }
            for tenant, cutoff in messages_before.items():
                # A message with unfinished work is kept until that work is done.
                counts["messages"] += db.execute(
                    "DELETE FROM messages WHERE tenant_id = ? AND created_at < ? AND NOT EXISTS"
                    " (SELECT 1 FROM jobs j WHERE j.message_id = messages.id AND j.status IN ('queued', 'running'))",
                    (tenant, cutoff),
                ).rowcount
            return counts

        result: dict[str, int] = await self._write(op)
        return result

    async def traces_for_message(self, message_id: str) -> list[TraceRecord]:
        rows = await self._fetchall(
            f"SELECT {TRACE_COLUMNS} FROM traces WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
        return [trace_from_row(r) for r in rows]

    async def traces_for_jobs(self, job_ids: Sequence[str]) -> dict[str, list[TraceRecord]]:
        if not job_ids:
            return {}
        ids = list(job_ids)
        rows = await self._fetchall(
            f"SELECT {TRACE_COLUMNS} FROM traces WHERE job_id IN ({','.join('?' * len(ids))}) ORDER BY id",
            ids,
        )
        out: dict[str, list[TraceRecord]] = {}
        for r in rows:
            out.setdefault(r[2], []).append(trace_from_row(r))
        return out


def take_file_lock(path: str) -> int:
    """Hold an exclusive lock beside the database for this process's lifetime."""
    lock_path = str(Path(path).expanduser()) + ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"database {path} is in use by another hub process") from None
    return fd


def _insert_job(
    db: sqlite3.Connection, job: NewJob, tenant: str, message_id: str | None, now: str, lease: Lease | None = None
) -> int:
    """Insert a queued job, or with ``lease`` one already running for that owner; returns its seq."""
    status, attempts, owner, until = ("running", 1, lease.owner, lease.until) if lease else ("queued", 0, None, None)
    cur = db.execute(
        "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at, payload,"
        " lease_owner, lease_until, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.id,
            tenant,
            job.kind,
            job.lane,
            message_id,
            status,
            attempts,
            job.max_attempts,
            job.run_at,
            json_encode(job.payload),
            owner,
            until,
            now,
            now,
        ),
    )
    return int(cur.lastrowid or 0)


def _insert_leased_if_head(db: sqlite3.Connection, job: NewJob, message: Message, now: str, lease: Lease) -> Job | None:
    """Store ``job`` already leased to ``lease.owner`` when its lane has nothing queued or running
    (so it would be the lane's head anyway), moving its message to ``processing`` as a claim
    would; None (nothing written) when the lane is busy."""
    busy = db.execute(
        "SELECT 1 FROM jobs WHERE lane = ? AND status IN ('queued', 'running') LIMIT 1", (job.lane,)
    ).fetchone()
    if busy is not None:
        return None
    seq = _insert_job(db, job, message.tenant, message.id, now, lease)
    db.execute("UPDATE messages SET status = 'processing' WHERE id = ?", (message.id,))
    message.status = "processing"
    return leased_job(job, seq, message.tenant, message, now, lease)


def _close_job(db: sqlite3.Connection, job: Job, status: str, error: str | None, now: str) -> bool:
    cur = db.execute(
        "UPDATE jobs SET status = ?, last_error = COALESCE(?, last_error), lease_owner = NULL, lease_until = NULL,"
        " updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
        (status, error, now, job.id, job.lease_owner),
    )
    return cur.rowcount == 1


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (no semicolons inside our DDL literals)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def advances(current: str, status: str) -> bool:
    """Statuses only move forward; ``failed`` may still follow ``sent`` (a later delivery error)."""
    return STATUS_RANK.get(status, 0) > STATUS_RANK.get(current, 0) or (status == "failed" and current == "sent")
