"""Storage backends the scenarios run against. SQLite today; PostgreSQL slots in as another class.

A backend knows how to point a hub at a fresh database, how to count what the hub stored, and how
to build (and cache) the large history database quickly. A PostgreSQL backend would return
``AUTOMAGIK_OMNI_DATABASE_URL`` (a fresh database or schema per hub) from :meth:`hub_env` and
load the history data with ``COPY``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import msgspec

import omni_core
from bench import payloads

BUILDER_VERSION = "1"  # bump when the generated history data changes shape


class Backend(Protocol):
    name: str

    def hub_env(self, data_dir: Path) -> dict[str, str]: ...

    def stored_messages(self, data_dir: Path) -> int: ...

    def history_env(self, cache_dir: Path, data_dir: Path, tenants: int, per_tenant: int) -> dict[str, str]:
        """Environment for a hub whose database already holds ``tenants * per_tenant`` messages."""
        ...


def history_tenant_ids(tenants: int) -> list[str]:
    return [f"h{i:04d}" for i in range(tenants)]


class SqliteBackend:
    name = "sqlite"

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
    """Tenants, one instance each, and their messages: inbound and outbound turns over 50 chats per tenant.

    Inbound bodies are what the WhatsApp plugin's normalizer makes of the benchmark webhook, so their
    size and fields match real rows; outbound ones are shaped like the pipeline's agent replies.
    """
    from omni_core.auth import hash_key
    from omni_core.ids import new_id
    from omni_core.model import Chat, Content, Message, Sender, iso

    encode = msgspec.json.Encoder().encode
    inbound_template = _inbound_template()
    now = datetime.now(UTC)
    stamp = iso(now)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=OFF")  # a throw-away build: no journal, no fsync
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    ids = history_tenant_ids(tenants)
    conn.executemany(
        "INSERT INTO tenants (id, name, config, api_key_hash, webhook_secret, created_at, updated_at)"
        " VALUES (?, ?, '{}', ?, ?, ?, ?)",
        [
            (t, f"Tenant {t}", hash_key(secrets.token_hex(16)), "whsec_" + secrets.token_hex(16), stamp, stamp)
            for t in ids
        ],
    )
    conn.executemany(
        "INSERT INTO instances (id, tenant_id, name, channel, config, state, profile, created_at, updated_at)"
        " VALUES (?, ?, ?, 'whatsapp', '{}', 'open', '{}', ?, ?)",
        [(new_id("ins"), t, f"{t}-wa", stamp, stamp) for t in ids],
    )
    # Secondary indexes are rebuilt once at the end (the hub's own DDL), far faster than per row.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.commit()

    def rows() -> Iterator[tuple[object, ...]]:
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

    conn.executemany(
        "INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
        " timestamp, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    conn.commit()
    for _, sql in indexes:
        conn.execute(sql)
    conn.commit()
    conn.execute("PRAGMA journal_mode=WAL")  # what the hub uses; set here so its first open changes nothing
    conn.close()


def _inbound_template() -> omni_core.Message:
    from omni_whatsapp_evolution.normalize import normalize_event

    raw = payloads.upsert("bench-wa", payloads.phone_jid(1), "3A0000", "x")
    event = normalize_event("bench", msgspec.json.decode(raw))[0]
    assert isinstance(event, omni_core.Message)
    event.status = "forwarded"
    return event


BACKENDS: dict[str, type[SqliteBackend]] = {"sqlite": SqliteBackend}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
