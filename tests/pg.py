"""Throw-away PostgreSQL databases for tests (one per hub or store under test).

The server is the machine's PostgreSQL (`.ci/run` starts it). Tests that need it skip with a
clear reason when it is unreachable on a laptop, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

ADMIN_URL = os.environ.get("OMNI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_available: bool | None = None


def _with_database(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/" + name))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def require_postgres() -> None:
    """Skip (laptop) or fail (CI) unless the test PostgreSQL accepts connections."""
    global _available
    if _available is None:
        parts = urlparse(ADMIN_URL)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=3).close()
            _available = True
        except OSError:
            _available = False
    if not _available:
        reason = f"PostgreSQL not reachable at {ADMIN_URL}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)


async def acreate_database() -> str:
    """A fresh empty database; returns its URL."""
    require_postgres()
    name = f"omni_test_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    return _with_database(ADMIN_URL, name)


async def adrop_database(url: str) -> None:
    name = urlparse(url).path.strip("/")
    if name.startswith("omni_test_"):
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database() -> str:
    return asyncio.run(acreate_database())


def drop_database(url: str) -> None:
    asyncio.run(adrop_database(url))
