"""Storage backends the scenarios run against: SQLite (the targets' reference) and PostgreSQL.

A backend knows how to point a hub at a fresh database (:meth:`Backend.hub_env`, keyed by the hub's
data dir: two hubs on one data dir share one database, as the backlog scenario's filler and drainer
do), how to count what the hub stored, and how to build (and cache) the large history database
quickly. SQLite keeps the history database as a file in the cache dir; PostgreSQL keeps it as a
template database on the server, loaded with ``COPY`` and cloned per run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse, urlunparse

import msgspec

import omni_core
from bench import payloads

BUILDER_VERSION = "1"  # bump when the generated history data changes shape
T = TypeVar("T")


class BackendUnavailable(RuntimeError):
    """The backend cannot be used on this machine; the message is one line, shown as is."""


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Raise :class:`BackendUnavailable` when the backend cannot run (before anything starts)."""
        ...

    def describe(self) -> str:
        """One line for the report: engine, version and the settings that matter for the figures."""
        ...

    def hub_env(self, data_dir: Path) -> dict[str, str]:
        """Environment pointing a hub at the database of ``data_dir`` (made empty on first use)."""
        ...

    def stored_messages(self, data_dir: Path) -> int: ...

    def history_env(self, cache_dir: Path, data_dir: Path, tenants: int, per_tenant: int) -> dict[str, str]:
        """Environment for a hub whose database already holds ``tenants * per_tenant`` messages."""
        ...

    def discard(self, data_dir: Path) -> None:
        """Free the database of ``data_dir`` now (its hubs have stopped)."""
        ...

    def cleanup(self) -> None:
        """Remove every database this run made (cached history data stays); also after a failure."""
        ...


def history_tenant_ids(tenants: int) -> list[str]:
    return [f"h{i:04d}" for i in range(tenants)]


class SqliteBackend:
    name = "sqlite"

    def check(self) -> None:
        pass

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (one file per hub)"

    def discard(self, data_dir: Path) -> None:
        pass  # the file goes with the data dir

    def cleanup(self) -> None:
        pass  # the files go with the work dir

    def hub_env(self, data_dir: Path) -> dict[str, str]:
        return {"AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH": str(data_dir / "omni.db")}

    def stored_messages(self, data_dir: Path) -> int:
        with sqlite3.connect(data_dir / "omni.db") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def history_env(self, cache_dir: Path, data_dir: Path, tenants: int, per_tenant: int) -> dict[str, str]:
        cached = self._history_db(cache_dir, tenants, per_tenant)
        target = data_dir / "omni.db"
        # A copy per run: the hub opens the file read-write (WAL, lease recovery), the cache stays pristine.
        subprocess.run(["cp", "--reflink=auto", str(cached), str(target)], check=True)
        return {"AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH": str(target)}

    # --- building the history database -----------------------------------------------------------
    def _history_db(self, cache_dir: Path, tenants: int, per_tenant: int) -> Path:
        schema = f"{_schema_fingerprint()}v{BUILDER_VERSION}"
        path = cache_dir / f"history-{schema}-{tenants}x{per_tenant}.db"
        if path.exists():
            return path
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob("history-*.db"):
            if not stale.name.startswith(f"history-{schema}-"):  # an older schema's: never used again (1+ GB)
                stale.unlink()
        partial = path.with_suffix(".partial")
        for leftover in cache_dir.glob(partial.name + "*"):
            leftover.unlink()
        started = time.monotonic()
        print(f"  building history database: {tenants} tenants x {per_tenant} messages -> {path}", flush=True)
        # The hub creates its own schema: the rows below then match whatever its migrations say.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOMAGIK_", "OMNI_"))}
        env["AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH"] = str(partial)
        done = subprocess.run(
            [sys.executable, "-m", "omni_core", "migrate"], env=env, cwd=cache_dir, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"omni_core migrate failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
        _fill_history(partial, tenants, per_tenant)
        for leftover in cache_dir.glob(partial.name + "*"):
            if leftover != partial:
                leftover.unlink()
        partial.rename(path)
        print(f"  built in {time.monotonic() - started:.0f}s ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        return path


def _schema_fingerprint() -> str:
    """Changes whenever the hub's schema or message model changes, so a stale cache is never used."""
    root = Path(omni_core.__file__).parent
    digest = hashlib.sha256()
    for path in [*sorted((root / "store" / "migrations").rglob("*.sql")), root / "model.py"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _fill_history(db: Path, tenants: int, per_tenant: int) -> None:
    """Tenants, one instance each, and their messages (see :func:`_history_rows`), straight into SQLite."""
    now = datetime.now(UTC)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=OFF")  # a throw-away build: no journal, no fsync
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    ids = history_tenant_ids(tenants)
    conn.executemany(
        f"INSERT INTO tenants ({', '.join(TENANT_ROW)}) VALUES ({', '.join('?' * len(TENANT_ROW))})",
        _tenant_rows(ids, now),
    )
    conn.executemany(
        f"INSERT INTO instances ({', '.join(INSTANCE_ROW)}) VALUES ({', '.join('?' * len(INSTANCE_ROW))})",
        _instance_rows(ids, now),
    )
    # Secondary indexes are rebuilt once at the end (the hub's own DDL), far faster than per row.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.commit()
    conn.executemany(
        f"INSERT INTO messages ({', '.join(MESSAGE_ROW)}) VALUES ({', '.join('?' * len(MESSAGE_ROW))})",
        _history_rows(ids, per_tenant, now),
    )
    conn.commit()
    for _, sql in indexes:
        conn.execute(sql)
    conn.commit()
    conn.execute("PRAGMA journal_mode=WAL")  # what the hub uses; set here so its first open changes nothing
    conn.close()


# --- the history rows, shared by the SQLite and PostgreSQL builders -------------------------------------
TENANT_ROW = ("id", "name", "config", "api_key_hash", "webhook_secret", "created_at", "updated_at")
INSTANCE_ROW = ("id", "tenant_id", "name", "channel", "config", "state", "profile", "created_at", "updated_at")
MESSAGE_ROW = (
    "id",
    "tenant_id",
    "instance",
    "source",
    "direction",
    "external_id",
    "chat_id",
    "status",
    "timestamp",
    "created_at",
    "updated_at",
    "body",
)


def _tenant_rows(ids: list[str], now: datetime) -> list[tuple[str, ...]]:
    """One row per tenant (:data:`TENANT_ROW`); API keys are random: the history scenario uses the admin key."""
    from omni_core.auth import hash_key
    from omni_core.model import iso

    stamp = iso(now)
    return [
        (t, f"Tenant {t}", "{}", hash_key(secrets.token_hex(16)), "whsec_" + secrets.token_hex(16), stamp, stamp)
        for t in ids
    ]


def _instance_rows(ids: list[str], now: datetime) -> list[tuple[str, ...]]:
    """One open WhatsApp instance ``<tenant>-wa`` per tenant (:data:`INSTANCE_ROW`)."""
    from omni_core.ids import new_id
    from omni_core.model import iso

    stamp = iso(now)
    return [(new_id("ins"), t, f"{t}-wa", "whatsapp", "{}", "open", "{}", stamp, stamp) for t in ids]


def _history_rows(ids: list[str], per_tenant: int, now: datetime) -> Iterator[tuple[object, ...]]:
    """The messages (:data:`MESSAGE_ROW`): inbound and outbound turns over 50 chats per tenant, 30 days.

    Inbound bodies are what the WhatsApp plugin's normalizer makes of the benchmark webhook, so their
    size and fields match real rows; outbound ones are shaped like the pipeline's agent replies. Ids
    are made in time order (turn by turn), as the hub makes them.
    """
    from omni_core.ids import new_id
    from omni_core.model import Chat, Content, Message, Sender, iso

    encode = msgspec.json.Encoder().encode
    inbound_template = _inbound_template()
    start = now - timedelta(days=30)
    step = timedelta(days=30) / per_tenant
    for turn in range(per_tenant):
        when = iso(start + step * turn)
        for n, tenant in enumerate(ids):
            instance = f"{tenant}-wa"
            chat_id = payloads.phone_jid(n * 50 + turn % 50)
            if turn % 2 == 0:
                kid = f"3A{n:04X}{turn:012X}"
                msg = msgspec.structs.replace(
                    inbound_template,
                    id=new_id("msg"),
                    tenant=tenant,
                    instance=instance,
                    chat=Chat(id=chat_id, type="direct"),
                    sender=msgspec.structs.replace(inbound_template.sender, id=chat_id),
                    content=msgspec.structs.replace(
                        inbound_template.content,
                        text=f"{kid} {payloads.FILLER}",
                        metadata=dict(inbound_template.content.metadata),
                    ),
                    timestamp=when,
                    external_id=kid,
                    status="forwarded",
                )
            else:
                kid = f"3EB0{n:04X}{turn:012X}"
                msg = Message(
                    id=new_id("msg"),
                    source="whatsapp",
                    tenant=tenant,
                    instance=instance,
                    direction="outbound",
                    chat=Chat(id=chat_id, type="direct"),
                    sender=Sender(id=instance, is_bot=True, is_self=True),
                    content=Content(type="text", text=f"Obrigado! {payloads.FILLER[:80]}"),
                    timestamp=when,
                    external_id=kid,
                    status="sent",
                )
            yield (
                msg.id,
                tenant,
                instance,
                msg.source,
                msg.direction,
                msg.external_id,
                chat_id,
                msg.status,
                msg.timestamp,
                when,
                when,
                encode(msg),
            )


def _inbound_template() -> omni_core.Message:
    from omni_whatsapp_evolution.normalize import normalize_event

    raw = payloads.upsert("bench-wa", payloads.phone_jid(1), "3A0000", "x")
    event = normalize_event("bench", msgspec.json.decode(raw))[0]
    assert isinstance(event, omni_core.Message)
    event.status = "forwarded"
    return event


class PostgresBackend:
    """A fresh database per hub data dir on a PostgreSQL server (``OMNI_BENCH_POSTGRES_URL``).

    Databases are named ``omni_bench_<pid>_<n>`` and dropped by :meth:`cleanup`; those of an earlier
    run that was killed (its pid gone) are dropped by :meth:`check`. The history data is built once
    into the template database ``omni_bench_history_<schema>_<tenants>x<per_tenant>`` (kept between
    runs, rebuilt when the hub's schema changes) and cloned for each history run.
    """

    name = "postgres"

    def __init__(self, admin_url: str | None = None) -> None:
        #: Connection to a maintenance database (never a benchmark one): CREATE/DROP DATABASE run there.
        self.admin_url = admin_url or os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
        self._databases: dict[Path, str] = {}  # data dir -> database
        self._partials: set[str] = set()  # history templates being built by this run
        self._made = 0
        self._description = "PostgreSQL"

    # --- the Backend protocol ------------------------------------------------------------------------
    def check(self) -> None:
        async def probe() -> None:
            conn = await _connect(self.admin_url)
            try:
                row = await conn.fetchrow(
                    "SELECT current_setting('server_version'), current_setting('fsync'),"
                    " current_setting('synchronous_commit'), current_setting('shared_buffers'),"
                    " (SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user)"
                )
                assert row is not None
                if not row[4]:
                    raise BackendUnavailable(f"the role of {_redact(self.admin_url)} may not create databases")
                self._description = (
                    f"PostgreSQL {row[0]} at {_where(self.admin_url)} (fsync {row[1]}, synchronous_commit {row[2]},"
                    f" shared_buffers {row[3]})"
                )
                stale = [
                    name
                    for name in await _database_names(conn, "omni_bench_%")
                    if (m := _RUN_DATABASE.fullmatch(name)) and not _pid_alive(int(m[1]))
                ]
                for name in stale:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                if stale:
                    print(f"  dropped {len(stale)} database(s) left by killed benchmark runs", flush=True)
            finally:
                await conn.close()

        try:
            _run(probe())
        except BackendUnavailable:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendUnavailable(
                f"cannot connect to PostgreSQL at {_redact(self.admin_url)} ({reason});"
                f" start it or set {POSTGRES_URL_ENV}"
            ) from None

    def describe(self) -> str:
        return self._description

    def hub_env(self, data_dir: Path) -> dict[str, str]:
        return self._env(data_dir, self._database(data_dir))

    def stored_messages(self, data_dir: Path) -> int:
        url = self._url(self._databases[data_dir.resolve()])

        async def count() -> int:
            conn = await _connect(url)
            try:
                return int(await conn.fetchval("SELECT COUNT(*) FROM messages"))
            finally:
                await conn.close()

        return _run(count())

    def history_env(self, cache_dir: Path, data_dir: Path, tenants: int, per_tenant: int) -> dict[str, str]:
        # cache_dir is not used: the cache is the template database on the server.
        template = self._history_template(tenants, per_tenant)
        self.discard(data_dir)
        started = time.monotonic()
        name = self._database(data_dir, template=template)
        print(f"  cloned {template} in {time.monotonic() - started:.1f}s", flush=True)
        return self._env(data_dir, name)

    def discard(self, data_dir: Path) -> None:
        name = self._databases.pop(data_dir.resolve(), None)
        if name is not None:
            self._drop(name)

    def cleanup(self) -> None:
        for name in [*self._databases.values(), *self._partials]:
            try:
                self._drop(name)
            except Exception as exc:
                print(f"  could not drop database {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        self._databases.clear()
        self._partials.clear()

    # --- databases -----------------------------------------------------------------------------------
    def _url(self, database: str) -> str:
        return urlunparse(urlparse(self.admin_url)._replace(path="/" + database))

    def _env(self, data_dir: Path, database: str) -> dict[str, str]:
        return {
            "AUTOMAGIK_OMNI_DATABASE_URL": self._url(database),
            # Only the hub's data dir derives from this (where it would write a generated admin key);
            # with a database URL set, the hub makes no SQLite file.
            "AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH": str(data_dir / "omni.db"),
        }

    def _database(self, data_dir: Path, template: str | None = None) -> str:
        """The database of ``data_dir``, created (empty, or a clone of ``template``) on first use."""
        key = data_dir.resolve()
        if key in self._databases:
            return self._databases[key]
        self._made += 1
        name = f"omni_bench_{os.getpid()}_{self._made}"
        self._databases[key] = name  # before CREATE: an interrupted CREATE is still dropped
        # FILE_COPY: copying the files beats WAL-logging every block of a large template (PostgreSQL 15+).
        clone = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        self._admin(f'CREATE DATABASE "{name}"{clone}')
        return name

    def _drop(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        async def go() -> None:
            conn = await _connect(self.admin_url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        _run(go())

    # --- the history template ------------------------------------------------------------------------
    def _history_template(self, tenants: int, per_tenant: int) -> str:
        schema = f"{_schema_fingerprint()}v{BUILDER_VERSION}"
        name = f"omni_bench_history_{schema}_{tenants}x{per_tenant}"
        partial = f"{name}_p{os.getpid()}"
        if len(partial) > 63:
            raise RuntimeError(f"database name too long for PostgreSQL: {partial}")

        async def survey() -> bool:
            conn = await _connect(self.admin_url)
            try:
                found = False
                for existing in await _database_names(conn, "omni_bench_history_%"):
                    m = _HISTORY_DATABASE.fullmatch(existing)
                    if existing == name:
                        found = True
                    elif m is not None:
                        # An older schema's template (never used again: a GB or more), or a killed build's.
                        older = m["pid"] is None and m["schema"] != schema
                        killed = m["pid"] is not None and not _pid_alive(int(m["pid"]))
                        if older or killed:
                            await conn.execute(f'DROP DATABASE IF EXISTS "{existing}" WITH (FORCE)')
                return found
            finally:
                await conn.close()

        if _run(survey()):
            return name
        started = time.monotonic()
        print(f"  building history template database: {tenants} tenants x {per_tenant} messages -> {name}", flush=True)
        self._partials.add(partial)
        self._drop(partial)
        self._admin(f'CREATE DATABASE "{partial}"')
        # The hub creates its own schema: the rows below then match whatever its migrations say.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOMAGIK_", "OMNI_"))}
        env["AUTOMAGIK_OMNI_DATABASE_URL"] = self._url(partial)
        env["OMNI_LOG_LEVEL"] = "warning"
        done = subprocess.run(
            [sys.executable, "-m", "omni_core", "migrate"], env=env, cwd="/", capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"omni_core migrate failed ({done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
        size = _run(_fill_history_postgres(self._url(partial), tenants, per_tenant))
        try:
            self._admin(f'ALTER DATABASE "{partial}" RENAME TO "{name}"')
        except Exception as exc:
            if "already exists" not in str(exc):
                raise
            self._drop(partial)  # another run built it meanwhile
        self._partials.discard(partial)
        print(f"  built in {time.monotonic() - started:.0f}s ({size / 1e6:.0f} MB)", flush=True)
        return name


POSTGRES_URL_ENV = "OMNI_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_RUN_DATABASE = re.compile(r"omni_bench_(\d+)_(\d+)")
_HISTORY_DATABASE = re.compile(r"omni_bench_history_(?P<schema>[0-9a-f]{16}v\w+?)_(?P<size>\d+x\d+)(?:_p(?P<pid>\d+))?")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _connect(url: str) -> Any:
    import asyncpg  # the hub's own driver, installed with it

    return await asyncpg.connect(url, timeout=5)


async def _database_names(conn: Any, like: str) -> list[str]:
    return [r[0] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", like)]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redact(url: str) -> str:
    parts = urlparse(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunparse(parts)


def _where(url: str) -> str:
    parts = urlparse(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


async def _fill_history_postgres(url: str, tenants: int, per_tenant: int) -> int:
    """Tenants, instances and messages (the same rows as the SQLite builder) with ``COPY``; returns the size."""
    conn = await _connect(url)
    try:
        now = datetime.now(UTC)
        ids = history_tenant_ids(tenants)
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '512MB'")
        await conn.copy_records_to_table("tenants", records=_tenant_rows(ids, now), columns=TENANT_ROW)
        await conn.copy_records_to_table("instances", records=_instance_rows(ids, now), columns=INSTANCE_ROW)
        # Secondary indexes are rebuilt once at the end (the hub's own DDL), far faster than per row;
        # the primary key stays (ids arrive in order, so it only ever appends).
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " AND tablename = 'messages' AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index[0]}"')
        await conn.copy_records_to_table("messages", records=_history_rows(ids, per_tenant, now), columns=MESSAGE_ROW)
        for index in indexes:
            await conn.execute(index[1])
        # Frozen, with hint bits and visibility map set and statistics gathered: the clones' first
        # queries then neither write pages nor plan blind.
        await conn.execute("VACUUM (FREEZE, ANALYZE)")
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


BACKENDS: dict[str, Callable[[], Backend]] = {"sqlite": SqliteBackend, "postgres": PostgresBackend}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
