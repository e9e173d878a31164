"""Pick the store from the configuration: PostgreSQL when a database URL is set, else SQLite."""

from __future__ import annotations

from omni_core.config import Settings
from omni_core.store.base import Store


def make_store(settings: Settings) -> Store:
    if settings.database_url:
        from omni_core.store.postgres import PostgresStore

        return PostgresStore(settings.database_url, pool_size=settings.db_pool_size)
    from omni_core.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path, synchronous=settings.sqlite_synchronous, writer=settings.sqlite_writer)
