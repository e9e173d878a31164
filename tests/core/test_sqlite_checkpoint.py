"""The SQLite checkpointer thread: copies the WAL back while the writer keeps writing, WAL stays bounded."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from omni_core.store.sqlite_checkpoint import Checkpointer


def _writer(path: Path, backstop: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA wal_autocheckpoint={backstop}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    return db


async def test_checkpoints_copy_the_wal_back_while_writes_continue(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = _writer(path, backstop=0)  # no checkpoint by the writer at all: only the thread's
    checkpointer = Checkpointer(lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False), 0.01)
    checkpointer.start()
    try:
        for i in range(200):
            db.execute("INSERT INTO t (body) VALUES (?)", ("x" * 2000,))
            if i % 20 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert checkpointer.runs > 0
        assert checkpointer.last is not None
        busy, frames, copied = checkpointer.last
        assert busy == 0 and frames > 0 and copied == frames  # idle now: everything copied back
    finally:
        await checkpointer.stop()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone()[0] == 200


async def test_continuous_writes_keep_the_wal_near_the_backstop(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    backstop = 200  # pages
    db = _writer(path, backstop=backstop)
    checkpointer = Checkpointer(lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False), 0.005)
    checkpointer.start()
    try:
        for _ in range(3000):  # ~3000 pages written with no pause long enough to catch up
            db.execute("INSERT INTO t (body) VALUES (?)", ("y" * 3000,))
        wal = os.path.getsize(f"{path}-wal")  # noqa: ASYNC240 - a test, nothing else on the loop
        # The WAL restarted instead of growing with every write (4 KB pages, some slack).
        assert wal < 4 * backstop * 4096
    finally:
        await checkpointer.stop()


async def test_a_checkpointer_without_a_database_only_logs(tmp_path: Path) -> None:
    def fail() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    checkpointer = Checkpointer(fail, 0.01)
    checkpointer.start()
    await checkpointer.stop()
    assert checkpointer.runs == 0
