"""The writer process's checkpointer: the WAL reaches the database and starts over under steady writes."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni_core.store.sqlite import connect_writer
from omni_core.store.sqlite_checkpointer import Checkpointer, wal_database
from omni_core.store.sqlite_writer_process import ProcessWriter

PAGE = 4096


def writer_connection(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # as in the writer process: the checkpointer copies
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, body BLOB)")
    return db


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "c.db"


def test_wal_database_names_wal_files_only(tmp_path: Path) -> None:
    wal = sqlite3.connect(tmp_path / "wal.db")
    wal.execute("PRAGMA journal_mode=WAL")
    rollback = sqlite3.connect(tmp_path / "rollback.db")
    memory = sqlite3.connect(":memory:")
    try:
        assert wal_database(wal) == str(tmp_path / "wal.db")
        assert wal_database(rollback) is None
        assert wal_database(memory) is None
    finally:
        for db in (wal, rollback, memory):
            db.close()


def insert_batch(db: sqlite3.Connection, batch: int, rows: int = 5) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO t (k, body) VALUES (?, ?)", [(f"{batch}-{i}", os.urandom(1500)) for i in range(rows)])
    db.execute("COMMIT")


def test_a_long_wal_is_copied_and_started_over_while_the_writer_waits(db_path: Path) -> None:
    db = writer_connection(db_path)
    checkpointer = Checkpointer(str(db_path), interval_s=60, restart_frames=100, catch_up_frames=10)
    try:
        for batch in range(60):  # ~300 pages, more than restart_frames
            insert_batch(db, batch)
        checkpointer.checkpoint()  # one pass, run here: copy, catch up, restart under the gate
        assert checkpointer.restarts == 1
        assert checkpointer.frames == checkpointer.copied >= 100
        insert_batch(db, 1000)  # the writer's next commit starts the WAL over
        checkpointer.checkpoint()
        assert checkpointer.frames < 20, checkpointer.frames
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 305
    finally:
        checkpointer.close()
        db.close()


def test_steady_writes_keep_the_wal_bounded(db_path: Path) -> None:
    db = writer_connection(db_path)
    checkpointer = Checkpointer(str(db_path), interval_s=0.005, restart_frames=200, catch_up_frames=20)
    sizes: list[int] = []
    try:
        for batch in range(1200):  # ~12 MB, as the writer process runs them: inside the gate
            with checkpointer.gate:
                insert_batch(db, batch)
            checkpointer.committed()
            sizes.append(os.path.getsize(f"{db_path}-wal"))
            if batch % 20 == 19:
                time.sleep(0.01)  # let the checkpointer thread run on a busy machine
    finally:
        checkpointer.close()
    try:
        # SQLite only appends to the WAL while its pages are not all copied; the checkpointer
        # copies them (and starts the WAL over past 200 pages), so it stays far below 12 MB.
        assert max(sizes) < 1000 * (PAGE + 24), max(sizes)
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 6000
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_a_pass_copies_every_committed_page_into_the_database(db_path: Path, tmp_path: Path) -> None:
    db = writer_connection(db_path)
    checkpointer = Checkpointer(str(db_path), interval_s=0.001)
    try:
        with checkpointer.gate:
            db.executemany("INSERT INTO t (k, body) VALUES (?, ?)", [(str(i), b"x" * 100) for i in range(50)])
        checkpointer.committed()
        deadline = time.monotonic() + 10
        while not (checkpointer.frames and checkpointer.frames == checkpointer.copied):
            assert time.monotonic() < deadline, (checkpointer.frames, checkpointer.copied)
            time.sleep(0.01)
        # The database file alone, without its WAL, already holds every row.
        alone = tmp_path / "alone.db"
        shutil.copyfile(db_path, alone)
        with sqlite3.connect(alone) as fresh:
            assert fresh.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 50
    finally:
        checkpointer.close()
        db.close()


def test_a_failed_pass_is_reported_and_retried(db_path: Path) -> None:
    db = writer_connection(db_path)
    errors: list[str] = []
    reported = threading.Event()

    def on_error(message: str) -> None:
        errors.append(message)
        reported.set()

    checkpointer = Checkpointer(str(db_path), interval_s=0.001, on_error=on_error)
    try:
        original = checkpointer.checkpoint
        calls = []

        def failing_once() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error")
            original()

        checkpointer.checkpoint = failing_once  # type: ignore[method-assign]
        db.execute("INSERT INTO t (k) VALUES ('a')")
        checkpointer.committed()
        assert reported.wait(5)
        deadline = time.monotonic() + 5
        while len(calls) < 2:  # retried after its pause, without another commit
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        checkpointer.close()
        db.close()
    assert "disk I/O error" in errors[0]


def connection_settings(db: sqlite3.Connection) -> tuple[int, int, str]:
    """(wal_autocheckpoint, synchronous, journal_mode) of the writer's connection, read in the child."""
    return (
        int(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]),
        int(db.execute("PRAGMA synchronous").fetchone()[0]),
        str(db.execute("PRAGMA journal_mode").fetchone()[0]),
    )


def insert_rows(db: sqlite3.Connection, start: int, count: int) -> None:
    db.executemany("INSERT INTO t (k, body) VALUES (?, ?)", [(str(i), b"y" * 800) for i in range(start, start + count)])


def create_table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, body BLOB)")


async def test_the_writer_process_checkpoints_beside_a_fully_synced_writer(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    writer = ProcessWriter(functools.partial(connect_writer, str(path), "FULL"))
    await writer.open()
    try:
        # Commits still sync (FULL); only the automatic checkpoint is off, the thread copies instead.
        assert await writer.call(connection_settings) == (0, 2, "wal")
        await writer.call(create_table)
        for start in range(0, 3000, 100):
            await writer.write(insert_rows, start, 100)
        # The rows are in the WAL until copied: the database file grows only by checkpoints.
        deadline = time.monotonic() + 10
        while path.stat().st_size < 3000 * 800:
            assert time.monotonic() < deadline, "the checkpointer copied nothing into the database"
            await asyncio.sleep(0.05)
    finally:
        await writer.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 3000
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
