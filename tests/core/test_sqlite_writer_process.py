"""The SQLite writer process: batches run in a child, failures come back per write, a dead child is replaced."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omni_core.store.sqlite_writer import WriterConnection
from omni_core.store.sqlite_writer_process import ProcessWriter, WriterProcessError
from tests.writer_ops import committed_rows, sleep_for, wait_for_file, writer_pid

# Writes and the connect function must be module-level: they travel to the child by reference.


def connect(path: str, log_path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=WriterConnection)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, a INTEGER NOT NULL UNIQUE, b TEXT)")
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the connection
    db.set_trace_callback(lambda statement: log.write(statement.split()[0] + "\n"))
    return db


def connect_fails(path: str) -> sqlite3.Connection:
    raise sqlite3.OperationalError(f"unable to open database file {path}")


def insert(db: sqlite3.Connection, a: int, b: str = "x") -> int:
    return db.execute("INSERT INTO t (a, b) VALUES (?, ?)", (a, b)).rowcount


def unpicklable_result(db: sqlite3.Connection) -> Any:
    return lambda: None


def rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [a for (a,) in db.execute("SELECT a FROM t ORDER BY id")]


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[tuple[ProcessWriter, Path, Path]]:
    db, log = tmp_path / "w.db", tmp_path / "statements.log"
    w = ProcessWriter(functools.partial(connect, str(db), str(log)))
    await w.open()
    yield w, db, log
    await w.close()


async def test_writes_run_in_another_process_and_share_one_commit(writer: tuple[ProcessWriter, Path, Path]) -> None:
    w, db, log = writer
    assert await w.write(writer_pid) != os.getpid()
    gate = db.parent / "gate"
    blocked = w.write(wait_for_file, str(gate))
    await asyncio.sleep(0.1)  # the child is now inside the first transaction
    rest = [w.write(insert, i) for i in range(50)]
    log.write_text("")
    gate.touch()
    assert await blocked is True
    assert await asyncio.gather(*rest) == [1] * 50
    statements = log.read_text().split()
    # After the blocked transaction's COMMIT: one more transaction for all fifty writes.
    assert statements.count("BEGIN") == 1
    assert statements.count("COMMIT") == 2
    assert rows(db) == list(range(50))


async def test_a_failing_write_fails_alone_with_its_own_error(writer: tuple[ProcessWriter, Path, Path]) -> None:
    w, db, _ = writer
    gate = db.parent / "gate"
    blocked = w.write(wait_for_file, str(gate))
    await asyncio.sleep(0.1)
    futures = [w.write(insert, 1), w.write(insert, 1), w.write(insert, 2)]  # the second is a duplicate
    gate.touch()
    await blocked
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert "UNIQUE" in str(results[1])
    assert rows(db) == [1, 2]


async def test_a_write_that_cannot_travel_fails_and_the_batch_still_commits(
    writer: tuple[ProcessWriter, Path, Path],
) -> None:
    w, db, _ = writer
    gate = db.parent / "gate"
    blocked = w.write(wait_for_file, str(gate))
    await asyncio.sleep(0.1)
    futures = [w.write(insert, 1), w.write(lambda d: insert(d, 2)), w.write(insert, 3), w.write(unpicklable_result)]
    gate.touch()
    await blocked
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], TypeError) and "cannot be sent to the writer" in str(results[1])
    assert isinstance(results[3], WriterProcessError) and "could not be sent back" in str(results[3])
    assert rows(db) == [1, 3]


async def test_a_dead_child_fails_its_batch_and_the_next_write_gets_a_new_one(
    writer: tuple[ProcessWriter, Path, Path],
) -> None:
    w, db, _ = writer
    first = await w.write(writer_pid)
    gate = db.parent / "gate"
    blocked = w.write(wait_for_file, str(gate))
    await asyncio.sleep(0.1)
    os.kill(first, signal.SIGKILL)  # mid-transaction
    with pytest.raises(WriterProcessError, match=r"exited \(exit code -9\) with writes in flight"):
        await blocked
    second = await w.write(writer_pid)
    assert second not in (first, os.getpid())
    assert await w.write(insert, 7) == 1
    assert rows(db) == [7]


async def test_close_lets_the_child_finish_and_exit(tmp_path: Path) -> None:
    db, log = tmp_path / "w.db", tmp_path / "statements.log"
    w = ProcessWriter(functools.partial(connect, str(db), str(log)))
    await w.open()
    pid = await w.write(writer_pid)
    futures = [w.write(insert, i) for i in range(20)]
    await w.close()
    assert await asyncio.gather(*futures) == [1] * 20
    assert rows(db) == list(range(20))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: the pid no longer exists
    with pytest.raises(RuntimeError, match="closed"):
        w.write(insert, 99)


async def test_a_connect_failure_raises_at_open(tmp_path: Path) -> None:
    w = ProcessWriter(functools.partial(connect_fails, str(tmp_path / "nope.db")))
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await w.open()


async def test_a_call_runs_alone_between_the_writes_around_it(writer: tuple[ProcessWriter, Path, Path]) -> None:
    w, db, log = writer
    gate = db.parent / "gate"
    blocked = w.write(wait_for_file, str(gate))
    await asyncio.sleep(0.1)
    before = [w.write(insert, i) for i in range(3)]
    alone = w.call(committed_rows)
    after = [w.write(insert, i) for i in range(3, 6)]
    log.write_text("")
    gate.touch()
    await blocked
    assert await asyncio.gather(*before) == [1, 1, 1]
    # Outside any transaction, after the writes queued before it committed, before the ones after it.
    assert await alone == (False, 3)
    assert await asyncio.gather(*after) == [1, 1, 1]
    assert log.read_text().split().count("COMMIT") == 3  # the gate's, the three before, the three after


def test_the_writer_process_works_on_uvloop(tmp_path: Path) -> None:
    """The hub serves on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[int]:
        w = ProcessWriter(functools.partial(connect, str(tmp_path / "w.db"), str(tmp_path / "log")))
        await w.open()
        try:
            return list(await asyncio.gather(*(w.write(insert, i) for i in range(10))))
        finally:
            await w.close()

    assert uvloop.run(scenario()) == [1] * 10
    assert rows(tmp_path / "w.db") == list(range(10))


async def test_closing_gives_a_hung_writer_a_bounded_time(tmp_path: Path) -> None:
    w = ProcessWriter(functools.partial(connect, str(tmp_path / "w.db"), str(tmp_path / "log")), goodbye_timeout_s=0.5)
    await w.open()
    pid = await w.write(writer_pid)
    hung = w.write(sleep_for, 60.0)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await w.close()
    assert time.monotonic() - started < 3  # 0.5 s for the goodbye, then killed
    with pytest.raises(WriterProcessError):
        await hung
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
