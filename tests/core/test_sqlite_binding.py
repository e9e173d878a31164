"""The identity adapters for None and bytes: installed by the store, and invisible in what SQLite stores."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_core.store import sqlite as store_sqlite  # noqa: F401  (importing the store installs them)
from omni_core.store import sqlite_binding


def test_the_store_installs_identity_adapters_for_none_and_bytes() -> None:
    for kind in sqlite_binding.FAST_TYPES:
        adapter = sqlite3.adapters[(kind, sqlite3.PrepareProtocol)]
        value = kind() if kind is bytes else None
        assert adapter(value) is value


@given(st.one_of(st.none(), st.binary(max_size=4096)), st.one_of(st.none(), st.binary(max_size=64)))
def test_values_bind_as_before(first: bytes | None, second: bytes | None) -> None:
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE t (a, b)")
        db.execute("INSERT INTO t VALUES (?, ?)", (first, second))
        row = db.execute("SELECT a, typeof(a), b, typeof(b) FROM t").fetchone()
    finally:
        db.close()
    assert row == (
        first,
        "null" if first is None else "blob",
        second,
        "null" if second is None else "blob",
    )


def test_an_adapter_the_application_registered_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def as_text(value: bytes) -> str:
        return value.decode()

    # The module's registry itself (register_adapter writes to it); monkeypatch restores it.
    registry: dict[Any, Any] = sqlite3.adapters
    monkeypatch.setitem(registry, (bytes, sqlite3.PrepareProtocol), as_text)
    monkeypatch.delitem(registry, (type(None), sqlite3.PrepareProtocol))
    sqlite_binding.install()
    assert sqlite3.adapters[(bytes, sqlite3.PrepareProtocol)] is as_text
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)](None) is None
