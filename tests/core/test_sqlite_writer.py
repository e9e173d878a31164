"""The SQLite writer thread: group commit, failures isolated per write, deferred multi-row inserts."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_core.store.sqlite_writer import GroupCommitWriter, WriterConnection, flush_rows, insert_many, insert_rows

INSERT = "INSERT INTO t (a, b) VALUES (?, ?)"


def connector(path: Path, statements: list[str]) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=WriterConnection)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, a INTEGER NOT NULL UNIQUE, b TEXT)")
        db.set_trace_callback(statements.append)
        return db

    return connect


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[tuple[GroupCommitWriter, list[str], Path]]:
    statements: list[str] = []
    w = GroupCommitWriter(connector(tmp_path / "w.db", statements))
    await w.open()
    yield w, statements, tmp_path / "w.db"
    await w.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT a, b FROM t ORDER BY id").fetchall()


def insert(a: int, b: str = "x") -> Callable[[sqlite3.Connection], int]:
    def op(db: sqlite3.Connection) -> int:
        return db.execute("INSERT INTO t (a, b) VALUES (?, ?)", (a, b)).rowcount

    return op


async def test_writes_queued_meanwhile_share_one_commit(writer: tuple[GroupCommitWriter, list[str], Path]) -> None:
    w, statements, path = writer
    gate = threading.Event()
    blocked = w.write(lambda db: gate.wait(5))
    await asyncio.sleep(0.05)  # the writer is now inside the first transaction
    rest = [w.write(insert(i)) for i in range(50)]
    statements.clear()
    gate.set()
    assert await blocked is True
    assert await asyncio.gather(*rest) == [1] * 50
    # After the blocked transaction's COMMIT: one more transaction for all fifty writes.
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 2
    assert [a for a, _ in rows(path)] == list(range(50))


async def test_a_failing_write_fails_alone(writer: tuple[GroupCommitWriter, list[str], Path]) -> None:
    w, _, path = writer
    gate = threading.Event()
    blocked = w.write(lambda db: gate.wait(5))
    await asyncio.sleep(0.05)
    futures = [w.write(insert(1)), w.write(insert(1)), w.write(insert(2))]  # the second is a duplicate
    gate.set()
    await blocked
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert [a for a, _ in rows(path)] == [1, 2]


async def test_deferred_rows_commit_in_order_and_roll_back_with_their_write(
    writer: tuple[GroupCommitWriter, list[str], Path],
) -> None:
    w, statements, path = writer

    def deferring(start: int, fail: bool = False) -> Callable[[sqlite3.Connection], None]:
        def op(db: sqlite3.Connection) -> None:
            insert_rows(db, INSERT, [(start + i, f"r{start + i}") for i in range(3)])
            if fail:
                raise ValueError("this write fails after deferring its rows")

        return op

    gate = threading.Event()
    blocked = w.write(lambda db: gate.wait(5))
    await asyncio.sleep(0.05)
    futures = [w.write(deferring(0)), w.write(deferring(10, fail=True)), w.write(deferring(20))]
    gate.set()
    await blocked
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ValueError)
    assert rows(path) == [(0, "r0"), (1, "r1"), (2, "r2"), (20, "r20"), (21, "r21"), (22, "r22")]
    # Deferred rows went in as one multi-row statement per write, not one statement per row.
    assert not any(s.startswith("INSERT INTO t (a, b) VALUES (0, 'r0');") for s in statements)


async def test_flush_rows_makes_deferred_rows_visible_to_a_later_delete(
    writer: tuple[GroupCommitWriter, list[str], Path],
) -> None:
    w, _, path = writer
    gate = threading.Event()
    blocked = w.write(lambda db: gate.wait(5))
    await asyncio.sleep(0.05)

    def delete_all(db: sqlite3.Connection) -> int:
        flush_rows(db)
        return db.execute("DELETE FROM t").rowcount

    added = w.write(lambda db: insert_rows(db, INSERT, [(1, "a"), (2, "b")]))
    deleted = w.write(delete_all)
    gate.set()
    await blocked
    await added
    assert await deleted == 2
    assert rows(path) == []


@settings(max_examples=25, deadline=None)
@given(count=st.integers(min_value=0, max_value=200))
def test_any_number_of_deferred_rows_is_inserted_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, count: int
) -> None:
    path = tmp_path_factory.mktemp("rows") / "r.db"

    async def run() -> None:
        w = GroupCommitWriter(connector(path, []))
        await w.open()
        try:
            await w.write(lambda db: insert_rows(db, INSERT, [(i, str(i)) for i in range(count)]))
        finally:
            await w.close()

    asyncio.run(run())
    assert rows(path) == [(i, str(i)) for i in range(count)]


async def test_call_runs_alone_outside_a_transaction(writer: tuple[GroupCommitWriter, list[str], Path]) -> None:
    w, _, _ = writer
    assert await w.call(lambda db: db.in_transaction) is False
    assert await w.write(lambda db: db.in_transaction) is True


async def test_close_finishes_queued_writes_then_refuses_new_ones(tmp_path: Path) -> None:
    w = GroupCommitWriter(connector(tmp_path / "c.db", []))
    await w.open()
    futures = [w.write(insert(i)) for i in range(20)]
    await w.close()
    assert all(f.done() and f.result() == 1 for f in futures)
    assert len(rows(tmp_path / "c.db")) == 20
    with pytest.raises(RuntimeError, match="closed"):
        w.write(insert(99))


async def test_open_raises_when_the_connection_cannot_be_opened(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "missing-dir" / "x.db", factory=WriterConnection)

    w = GroupCommitWriter(connect)
    with pytest.raises(sqlite3.OperationalError):
        await w.open()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(insert(1))


def test_insert_many_counts_the_rows_that_went_in(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER NOT NULL UNIQUE, b TEXT)")
    db.execute("INSERT INTO t (a, b) VALUES (5, 'old')")
    assert insert_many(db, INSERT, [(i, "n") for i in range(100, 190)]) == 90  # chunks of 64, 16, 8, 2
    assert [r[0] for r in db.execute("SELECT a FROM t ORDER BY id")] == [5, *range(100, 190)]
