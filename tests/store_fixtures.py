"""A fresh store on either backend, with the two tenants the store tests write under."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from omni_core.entities import Tenant
from omni_core.store.base import Store
from omni_core.store.postgres import PostgresStore
from omni_core.store.sqlite import SqliteStore
from tests.pg import acreate_database, adrop_database

SEEDED_AT = "2026-01-01T00:00:00.000Z"


async def seed_tenants(s: Store) -> None:
    """Tenants ``t1`` and ``t2`` (webhook secrets ``s1``/``s2``, API key hashes ``h1``/``h2``)."""
    for n in (1, 2):
        tenant = Tenant(id=f"t{n}", name=f"T{n}", webhook_secret=f"s{n}", created_at=SEEDED_AT, updated_at=SEEDED_AT)
        await s.create_tenant(tenant, f"h{n}")


@asynccontextmanager
async def seeded_store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An open, seeded store on ``backend`` (a throw-away PostgreSQL database, dropped after).

    ``sqlite`` writes through the writer process (the default), ``sqlite-thread`` through the
    writer thread (``OMNI_SQLITE_WRITER=thread``): the same write functions, results travelling
    back without pickle."""
    if backend in ("sqlite", "sqlite-thread"):
        writer = "thread" if backend == "sqlite-thread" else "process"
        s: Store = SqliteStore(str(tmp_path / "hub.db"), writer=writer)
        await s.open()
        try:
            await seed_tenants(s)
            yield s
        finally:
            await s.close()
        return
    url = await acreate_database()
    s = PostgresStore(url, pool_size=5)
    try:
        await s.open()
        try:
            await seed_tenants(s)
            yield s
        finally:
            await s.close()
    finally:
        await adrop_database(url)
