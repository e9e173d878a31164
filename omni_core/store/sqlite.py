"""Embedded default store: SQLite through aiosqlite, WAL mode.

Writes go through one writer task that runs every write queued meanwhile in a single
transaction (group commit): under load many webhooks share one commit, so acknowledging
each only after its commit stays cheap. Reads use a separate connection, which WAL lets
run beside the writer. One hub process owns a database file (an exclusive lock file
enforces it), which is what lets it release every stale lease at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec
import structlog

from omni_core.entities import Instance, Tenant
from omni_core.model import STATUS_RANK, Message, MessageStatus
from omni_core.store.base import (
    HistoryPage,
    HistoryQuery,
    InsertOutcome,
    Job,
    NewJob,
    Store,
    TraceRecord,
)

T = TypeVar("T")
WriteOp = Callable[[aiosqlite.Connection], Awaitable[Any]]
log = structlog.get_logger("omni.store")

_json = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
MAX_BATCH = 512

JOB_COLUMNS = (
    "id, seq, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at, "
    "lease_owner, lease_until, last_error, payload, created_at, updated_at"
)


class StoreLockedError(RuntimeError):
    """Another hub process already uses this database file."""


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        seq=row[1],
        tenant=row[2],
        kind=row[3],
        lane=row[4],
        message_id=row[5],
        status=row[6],
        attempts=row[7],
        max_attempts=row[8],
        run_at=row[9],
        lease_owner=row[10],
        lease_until=row[11],
        last_error=row[12],
        payload=_dict_decoder.decode(row[13]),
        created_at=row[14],
        updated_at=row[15],
    )


def _message(body: bytes, status: str, external_id: str | None) -> Message:
    msg = _message_decoder.decode(body)
    msg.status = status  # type: ignore[assignment]
    msg.external_id = external_id
    return msg


def _tenant(row: Sequence[Any]) -> Tenant:
    return Tenant(
        id=row[0],
        name=row[1],
        config=_dict_decoder.decode(row[2]),
        webhook_secret=row[3],
        created_at=row[4],
        updated_at=row[5],
    )


TENANT_COLUMNS = "id, name, config, webhook_secret, created_at, updated_at"
INSTANCE_COLUMNS = (
    "id, tenant_id, name, channel, config, state, state_reason, qrcode_base64, qrcode_code, pairing_code, "
    "profile, created_at, updated_at"
)


def _instance(row: Sequence[Any]) -> Instance:
    return Instance(
        id=row[0],
        tenant=row[1],
        name=row[2],
        channel=row[3],
        config=_dict_decoder.decode(row[4]),
        state=row[5],
        state_reason=row[6],
        qrcode_base64=row[7],
        qrcode_code=row[8],
        pairing_code=row[9],
        profile=_dict_decoder.decode(row[10]),
        created_at=row[11],
        updated_at=row[12],
    )


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled SQLite migration, in order."""
    found = []
    folder = resources.files("omni_core.store").joinpath("migrations", "sqlite")
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class SqliteStore(Store):
    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._closing = False

    # --- life -----------------------------------------------------------------------------------
    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
            self._take_file_lock()
        self._writer = await self._connect()
        await self.migrate()
        self._reader = await self._connect()
        self._closing = False
        self._writer_task = asyncio.create_task(self._write_loop(), name="omni-sqlite-writer")

    def _take_file_lock(self) -> None:
        lock_path = str(Path(self.path).expanduser()) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"database {self.path} is in use by another hub process") from None
        self._lock_fd = fd

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={self.synchronous}")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        await conn.execute("PRAGMA cache_size=-65536")
        return conn

    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""
        assert self._writer is not None
        conn = self._writer
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
        )
        async with conn.execute("SELECT version FROM schema_migrations") as cur:
            done = {row[0] for row in await cur.fetchall()}
        applied = []
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(sql):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            applied.append(name)
            log.info("migration_applied", migration=name)
        return applied

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
            self._writer_task = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        await self._fetchone("SELECT 1")

    async def schema_version(self) -> int:
        row = await self._fetchone("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(row[0]) if row else 0

    # --- plumbing -------------------------------------------------------------------------------
    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._reader is None:
            raise RuntimeError("store is closed")
        async with self._reader.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise RuntimeError("store is closed")
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _write(self, op: WriteOp) -> Any:
        """Run ``op`` inside the writer's next transaction and return its result after COMMIT."""
        if self._closing or self._writer is None:
            raise RuntimeError("store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                await self._run_batch(batch)
            if self._closing:
                return

    async def _run_batch(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> None:
        conn = self._writer
        assert conn is not None
        try:
            results = await self._transaction(conn, [op for op, _ in batch])
        except Exception as exc:
            # One op failed and the whole batch rolled back. Re-run each op alone so only the
            # faulty one reports its error and the others still commit.
            if len(batch) > 1:
                for item in batch:
                    await self._run_batch([item])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, fut), value in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(value)

    @staticmethod
    async def _transaction(conn: aiosqlite.Connection, ops: list[WriteOp]) -> list[Any]:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            results = [await op(conn) for op in ops]
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
        return results

    # --- tenants --------------------------------------------------------------------------------
    async def create_tenant(self, tenant: Tenant, api_key_hash: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "INSERT INTO tenants (id, name, config, api_key_hash, webhook_secret, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    tenant.id,
                    tenant.name,
                    _json.encode(tenant.config),
                    api_key_hash,
                    tenant.webhook_secret,
                    tenant.created_at,
                    tenant.updated_at,
                ),
            )
            return cur.rowcount == 1

        return bool(await self._write(op))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._fetchone(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,))
        return _tenant(row) if row else None

    async def tenant_by_key_hash(self, api_key_hash: str) -> Tenant | None:
        row = await self._fetchone(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE api_key_hash = ?", (api_key_hash,))
        return _tenant(row) if row else None

    async def list_tenants(self) -> list[Tenant]:
        return [_tenant(r) for r in await self._fetchall(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id")]

    async def update_tenant(self, tenant: Tenant) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE tenants SET name = ?, config = ?, updated_at = ? WHERE id = ?",
                (tenant.name, _json.encode(tenant.config), tenant.updated_at, tenant.id),
            )

        await self._write(op)

    async def delete_tenant(self, tenant_id: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            await conn.execute("DELETE FROM jobs WHERE tenant_id = ?", (tenant_id,))
            await conn.execute("DELETE FROM messages WHERE tenant_id = ?", (tenant_id,))
            await conn.execute("DELETE FROM traces WHERE tenant_id = ?", (tenant_id,))
            cur = await conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
            return cur.rowcount == 1

        return bool(await self._write(op))

    # --- instances ------------------------------------------------------------------------------
    async def create_instance(self, instance: Instance) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                _instance_row(instance),
            )
            return cur.rowcount == 1

        return bool(await self._write(op))

    async def get_instance(self, instance_id: str) -> Instance | None:
        row = await self._fetchone(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?", (instance_id,))
        return _instance(row) if row else None

    async def get_instance_by_name(self, channel: str, name: str) -> Instance | None:
        row = await self._fetchone(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE channel = ? AND name = ?", (channel, name)
        )
        return _instance(row) if row else None

    async def find_instance(self, tenant: str | None, ref: str) -> Instance | None:
        sql = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE (id = ? OR name = ?)"
        params: list[Any] = [ref, ref]
        if tenant is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant)
        rows = await self._fetchall(sql + " ORDER BY id = ? DESC LIMIT 1", [*params, ref])
        return _instance(rows[0]) if rows else None

    async def list_instances(self, tenant: str | None) -> list[Instance]:
        if tenant is None:
            rows = await self._fetchall(f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY tenant_id, name")
        else:
            rows = await self._fetchall(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE tenant_id = ? ORDER BY name", (tenant,)
            )
        return [_instance(r) for r in rows]

    async def update_instance(self, instance: Instance) -> None:
        async def op(conn: aiosqlite.Connection) -> None:
            row = _instance_row(instance)
            await conn.execute(
                "UPDATE instances SET config = ?, state = ?, state_reason = ?, qrcode_base64 = ?, qrcode_code = ?,"
                " pairing_code = ?, profile = ?, updated_at = ? WHERE id = ?",
                (*row[4:11], row[12], row[0]),
            )

        await self._write(op)

    async def delete_instance(self, instance_id: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
            return cur.rowcount == 1

        return bool(await self._write(op))

    # --- messages -------------------------------------------------------------------------------
    async def insert_message(self, message: Message, job: NewJob | None, now: str) -> InsertOutcome:
        body = _json.encode(message)

        async def op(conn: aiosqlite.Connection) -> InsertOutcome:
            cur = await conn.execute(
                "INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
                " timestamp, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    message.id,
                    message.tenant,
                    message.instance,
                    message.source,
                    message.direction,
                    message.external_id,
                    message.chat.id,
                    message.status,
                    message.timestamp,
                    now,
                    now,
                    body,
                ),
            )
            if cur.rowcount == 0:
                async with conn.execute(
                    "SELECT id FROM messages WHERE tenant_id = ? AND instance = ? AND external_id = ?",
                    (message.tenant, message.instance, message.external_id),
                ) as found:
                    row = await found.fetchone()
                if row is None:  # a message id collision: never expected with ULIDs
                    raise RuntimeError(f"message {message.id} could not be stored")
                return InsertOutcome(accepted=False, id=row[0])
            if job is not None:
                await _insert_job(conn, job, message.tenant, message.id, now)
            return InsertOutcome(accepted=True, id=message.id)

        result: InsertOutcome = await self._write(op)
        return result

    async def get_message(self, message_id: str) -> Message | None:
        row = await self._fetchone("SELECT body, status, external_id FROM messages WHERE id = ?", (message_id,))
        return _message(*row) if row else None

    async def recent_messages(self, tenant: str, instance: str, chat_id: str, limit: int) -> list[Message]:
        rows = await self._fetchall(
            "SELECT body, status, external_id FROM messages WHERE tenant_id = ? AND instance = ? AND chat_id = ?"
            " ORDER BY id DESC LIMIT ?",
            (tenant, instance, chat_id, limit),
        )
        return [_message(*r) for r in reversed(rows)]

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
            messages=[_message(r[0], r[1], r[2]) for r in rows],
            next_before_id=rows[-1][3] if more and rows else None,
        )

    async def apply_status(
        self, tenant: str, instance: str, external_id: str, status: MessageStatus, now: str
    ) -> str | None:
        async def op(conn: aiosqlite.Connection) -> str | None:
            async with conn.execute(
                "SELECT id, status FROM messages WHERE tenant_id = ? AND instance = ? AND external_id = ?",
                (tenant, instance, external_id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            message_id, current = row
            if STATUS_RANK.get(status, 0) > STATUS_RANK.get(current, 0) or (status == "failed" and current == "sent"):
                await conn.execute(
                    "UPDATE messages SET status = ?, updated_at = ? WHERE id = ?", (status, now, message_id)
                )
            return str(message_id)

        result: str | None = await self._write(op)
        return result

    # --- jobs -----------------------------------------------------------------------------------
    async def claim_jobs(self, owner: str, limit: int, now: float, lease_seconds: float) -> list[Job]:
        async def op(conn: aiosqlite.Connection) -> list[Job]:
            # The head of a lane is its lowest unfinished seq; only heads are runnable, which is
            # what keeps one chat strictly in order while other chats run in parallel.
            async with conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE seq IN ("
                "  SELECT MIN(seq) FROM jobs WHERE status IN ('queued', 'running') GROUP BY lane"
                ") AND ((status = 'queued' AND run_at <= ?) OR (status = 'running' AND lease_until < ?))"
                " ORDER BY run_at, seq LIMIT ?",
                (now, now, limit),
            ) as cur:
                rows = await cur.fetchall()
            jobs = []
            stamp = _iso_epoch(now)
            for row in rows:
                job = _job(row)
                await conn.execute(
                    "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1,"
                    " updated_at = ? WHERE seq = ?",
                    (owner, now + lease_seconds, stamp, job.seq),
                )
                job.status = "running"
                job.lease_owner = owner
                job.lease_until = now + lease_seconds
                job.attempts += 1
                jobs.append(job)
            message_ids = [j.message_id for j in jobs if j.message_id is not None]
            if message_ids:
                marks = ",".join("?" * len(message_ids))
                await conn.execute(
                    f"UPDATE messages SET status = 'processing', updated_at = ? WHERE id IN ({marks})",
                    (stamp, *message_ids),
                )
            return jobs

        result: list[Job] = await self._write(op)
        return result

    async def extend_leases(self, owner: str, job_ids: Sequence[str], until: float) -> int:
        if not job_ids:
            return 0
        ids = list(job_ids)

        async def op(conn: aiosqlite.Connection) -> int:
            marks = ",".join("?" * len(ids))
            cur = await conn.execute(
                f"UPDATE jobs SET lease_until = ? WHERE lease_owner = ? AND status = 'running' AND id IN ({marks})",
                (until, owner, *ids),
            )
            return int(cur.rowcount)

        result: int = await self._write(op)
        return result

    async def finish_route(
        self, job: Job, message_status: MessageStatus, replies: Sequence[tuple[Message, NewJob]], now: str
    ) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            if not await _close_job(conn, job, "done", None, now):
                return False
            if job.message_id is not None:
                await conn.execute(
                    "UPDATE messages SET status = ?, error = NULL, updated_at = ? WHERE id = ?",
                    (message_status, now, job.message_id),
                )
            for message, new_job in replies:
                await conn.execute(
                    "INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
                    " timestamp, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message.id,
                        message.tenant,
                        message.instance,
                        message.source,
                        message.direction,
                        message.external_id,
                        message.chat.id,
                        message.status,
                        message.timestamp,
                        now,
                        now,
                        _json.encode(message),
                    ),
                )
                await _insert_job(conn, new_job, message.tenant, message.id, now)
            return True

        return bool(await self._write(op))

    async def finish_deliver(self, job: Job, external_id: str | None, status: MessageStatus, now: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            if not await _close_job(conn, job, "done", None, now):
                return False
            if job.message_id is None:
                return True
            if external_id is not None:
                # The platform may have echoed our send back as a webhook (Evolution's
                # send.message) before we got here; that row is this same message: fold it in.
                async with conn.execute(
                    "SELECT m.id, m.status FROM messages m JOIN messages o ON o.id = ?"
                    " WHERE m.tenant_id = o.tenant_id AND m.instance = o.instance AND m.external_id = ?"
                    " AND m.id != o.id",
                    (job.message_id, external_id),
                ) as cur:
                    echo = await cur.fetchone()
                new_status = status
                if echo is not None:
                    await conn.execute("DELETE FROM messages WHERE id = ?", (echo[0],))
                    if STATUS_RANK.get(echo[1], 0) > STATUS_RANK.get(status, 0):
                        new_status = echo[1]
                await conn.execute(
                    "UPDATE messages SET status = ?, external_id = ?, error = NULL, updated_at = ? WHERE id = ?",
                    (new_status, external_id, now, job.message_id),
                )
            else:
                await conn.execute(
                    "UPDATE messages SET status = ?, error = NULL, updated_at = ? WHERE id = ?",
                    (status, now, job.message_id),
                )
            return True

        return bool(await self._write(op))

    async def retry_later(self, job: Job, error: str, run_at: float, now: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            cur = await conn.execute(
                "UPDATE jobs SET status = 'queued', run_at = ?, lease_owner = NULL, lease_until = NULL,"
                " last_error = ?, updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (run_at, error, now, job.id, job.lease_owner),
            )
            return cur.rowcount == 1

        return bool(await self._write(op))

    async def bury(self, job: Job, error: str, message_status: MessageStatus, now: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            if not await _close_job(conn, job, "dead", error, now):
                return False
            if job.message_id is not None:
                await conn.execute(
                    "UPDATE messages SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                    (message_status, error, now, job.message_id),
                )
            return True

        return bool(await self._write(op))

    async def requeue_dead(self, job_id: str, now_epoch: float, now: str) -> Job | None:
        async def op(conn: aiosqlite.Connection) -> Job | None:
            # A retried job goes to the back of its lane (new seq) so it cannot jump ahead of
            # messages that arrived while it was dead.
            async with conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cur:
                row = await cur.fetchone()
            if row is None or row[6] != "dead":
                return None
            await conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            await conn.execute(
                "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at,"
                " last_error, payload, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?)",
                (row[0], row[2], row[3], row[4], row[5], row[8], now_epoch, row[12], row[13], row[14], now),
            )
            if row[5] is not None:
                await conn.execute(
                    "UPDATE messages SET status = 'queued', error = NULL, updated_at = ? WHERE id = ?", (now, row[5])
                )
            async with conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cur:
                fresh = await cur.fetchone()
            assert fresh is not None
            return _job(fresh)

        result: Job | None = await self._write(op)
        return result

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def jobs_for_message(self, message_id: str) -> list[Job]:
        rows = await self._fetchall(f"SELECT {JOB_COLUMNS} FROM jobs WHERE message_id = ? ORDER BY seq", (message_id,))
        return [_job(r) for r in rows]

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
        return stats

    async def next_due(self) -> float | None:
        row = await self._fetchone("SELECT MIN(run_at) FROM jobs WHERE status = 'queued'")
        return float(row[0]) if row and row[0] is not None else None

    async def recover_leases(self, owner_prefix_alive: str | None) -> int:
        # The file lock guarantees no other process uses this database, so every lease not
        # held by this process belongs to a worker that died with its process.
        async def op(conn: aiosqlite.Connection) -> int:
            cur = await conn.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL"
                " WHERE status = 'running' AND (? IS NULL OR lease_owner NOT LIKE ? || '%')",
                (owner_prefix_alive, owner_prefix_alive),
            )
            return int(cur.rowcount)

        result: int = await self._write(op)
        return result

    # --- traces ---------------------------------------------------------------------------------
    async def add_traces(self, records: Sequence[TraceRecord]) -> None:
        if not records:
            return
        rows = [
            (
                r.tenant,
                r.message_id,
                r.job_id,
                r.stage,
                r.plugin,
                r.attempt,
                r.at,
                r.duration_ms,
                r.outcome,
                r.status_code,
                r.error,
            )
            for r in records
        ]

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT INTO traces (tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome,"
                " status_code, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._write(op)

    async def traces_for_message(self, message_id: str) -> list[TraceRecord]:
        rows = await self._fetchall(
            "SELECT tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome, status_code, error"
            " FROM traces WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
        return [
            TraceRecord(
                tenant=r[0],
                message_id=r[1],
                job_id=r[2],
                stage=r[3],
                plugin=r[4],
                attempt=r[5],
                at=r[6],
                duration_ms=r[7],
                outcome=r[8],
                status_code=r[9],
                error=r[10],
            )
            for r in rows
        ]


async def _insert_job(conn: aiosqlite.Connection, job: NewJob, tenant: str, message_id: str, now: str) -> None:
    await conn.execute(
        "INSERT INTO jobs (id, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at, payload,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)",
        (
            job.id,
            tenant,
            job.kind,
            job.lane,
            message_id,
            job.max_attempts,
            job.run_at,
            _json.encode(job.payload),
            now,
            now,
        ),
    )


async def _close_job(conn: aiosqlite.Connection, job: Job, status: str, error: str | None, now: str) -> bool:
    cur = await conn.execute(
        "UPDATE jobs SET status = ?, last_error = COALESCE(?, last_error), lease_owner = NULL, lease_until = NULL,"
        " updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
        (status, error, now, job.id, job.lease_owner),
    )
    return cur.rowcount == 1


def _instance_row(i: Instance) -> tuple[Any, ...]:
    return (
        i.id,
        i.tenant,
        i.name,
        i.channel,
        _json.encode(i.config),
        i.state,
        i.state_reason,
        i.qrcode_base64,
        i.qrcode_code,
        i.pairing_code,
        _json.encode(i.profile),
        i.created_at,
        i.updated_at,
    )


def _iso_epoch(epoch: float) -> str:
    from datetime import UTC, datetime

    from omni_core.model import iso

    return iso(datetime.fromtimestamp(epoch, UTC))


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (no semicolons inside our DDL literals)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
