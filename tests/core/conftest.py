"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omni_core.store.base import Store
from tests.store_fixtures import seeded_store


@pytest.fixture(params=["sqlite", "sqlite-thread", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store on each backend (SQLite with either writer), with tenants t1 and t2
    (tests.store_fixtures)."""
    async with seeded_store(request.param, tmp_path) as s:
        yield s
