"""Copies the SQLite WAL back into the database file on a thread of its own.

By default SQLite checkpoints inside the COMMIT that grows the WAL past 1,000 pages, so the
writer (and every webhook waiting for its batch) pays for copying those pages back. Checkpointing
less often made the writer's batches ~10% shorter but stalled it for tens of ms per checkpoint
(ingest p99 41-73 ms instead of ~30 ms at 64 connections). Here a second connection runs a
``PASSIVE`` checkpoint every ``interval`` seconds on its own thread (the other core), which never
blocks the writer. Under continuous writes such a checkpoint never catches up with the very last
commit, so the WAL cannot start over; the writer keeps SQLite's own checkpoint as a backstop at
``BACKSTOP_PAGES``, where little is left to copy and the WAL restarts from the beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("omni.store")

#: The writer's own ``wal_autocheckpoint`` with a checkpointer running (~80 MB of 4 KB pages).
BACKSTOP_PAGES = 20_000
INTERVAL_SECONDS = 0.1


class Checkpointer:
    """``start()`` once the database exists; ``await stop()`` before the writer closes."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float = INTERVAL_SECONDS) -> None:
        self._connect = connect
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Checkpoints run so far and the last one's (busy, WAL frames, frames copied back).
        self.runs = 0
        self.last: tuple[int, int, int] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="omni-sqlite-checkpoint", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            await asyncio.to_thread(thread.join)

    def _run(self) -> None:
        try:
            db = self._connect()
        except Exception as exc:  # the writer's own checkpoints still keep the WAL bounded
            log.warning("sqlite_checkpointer_unavailable", error=repr(exc))
            return
        failed: str | None = None
        try:
            while not self._stop.wait(self._interval):
                try:
                    row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.last = (int(row[0]), int(row[1]), int(row[2]))
                    self.runs += 1
                    failed = None
                except sqlite3.Error as exc:
                    if repr(exc) != failed:  # once per distinct error, not every interval
                        failed = repr(exc)
                        log.warning("sqlite_checkpoint_failed", error=failed)
        finally:
            with contextlib.suppress(Exception):
                db.close()
