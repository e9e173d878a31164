"""The writer process's checkpointer: the WAL is copied into the database beside the writes.

SQLite's automatic checkpoint runs inside a COMMIT every 1,000 WAL pages: the writer stops while
it copies those pages into the database file and syncs both files (a checkpoint took ~7 ms, and
came every ~5 transactions under webhook load). In the writer process the writer's connection has
no automatic checkpoint; this thread copies the WAL on a connection of its own instead, while the
writer keeps committing, and in larger passes (every :data:`INTERVAL_S`): a page written again and
again meanwhile (index tails, interior pages, a tenant's newest leaf) is copied and synced once per
pass instead of once per 1,000 pages. Ingest at concurrency 64: ~7.9k -> ~9.4k acknowledged/s.

Durability is SQLite's own: the writer still syncs the WAL at each COMMIT (``synchronous=FULL``);
this connection's checkpoints (``synchronous=NORMAL``) sync the WAL before copying and the
database before recording the pages as copied, and only then may a writer start the WAL over.

A writer that commits without pause never finds the WAL fully copied, so SQLite never starts it
over and it would grow without end. Once it holds :data:`RESTART_FRAMES` pages, the checkpointer
catches up until little is left and then holds :attr:`Checkpointer.gate` (the writer takes it
around each transaction) for a short ``RESTART`` checkpoint; the writer's next commit starts the
WAL over. The WAL file keeps its largest size for reuse (at most about RESTART_FRAMES pages).
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Callable

#: Start the WAL over once it holds this many pages (128 MB at SQLite's 4 KB pages).
RESTART_FRAMES = 32768
#: Commits gather this long between two checkpoints.
INTERVAL_S = 0.2
#: Before pausing the writer, catch up until at most this many pages are left to copy.
CATCH_UP_FRAMES = 500
#: How long a restart waits for readers still using old WAL pages (the writer waits meanwhile);
#: if they are not done by then, the next pass tries again.
RESTART_BUSY_MS = 10


def wal_database(db: sqlite3.Connection) -> str | None:
    """The file of ``db``'s main database if it is in WAL mode, else None (``:memory:``, rollback journal)."""
    mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    path = next((str(row[2]) for row in db.execute("PRAGMA database_list") if row[1] == "main"), "")
    return path if mode == "wal" and path else None


class Checkpointer:
    """A thread checkpointing the WAL of ``database`` while the writer writes (module docstring)."""

    def __init__(
        self,
        database: str,
        *,
        interval_s: float = INTERVAL_S,
        restart_frames: int = RESTART_FRAMES,
        catch_up_frames: int = CATCH_UP_FRAMES,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.catch_up_frames = catch_up_frames
        #: The writer holds this around each transaction; a restart holds it to pause the writer.
        self.gate = threading.Lock()
        #: Frames in the WAL and frames copied, after the last pass; WAL restarts so far.
        self.frames = self.copied = self.restarts = 0
        self._on_error = on_error or _to_stderr
        self._db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        try:
            # NORMAL: a checkpoint syncs the WAL before copying it and the database after.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={RESTART_BUSY_MS}")
        except BaseException:
            self._db.close()
            raise
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="omni-sqlite-checkpointer", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """The writer committed: there are pages to copy."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping:
                return
            time.sleep(self.interval_s)
            self._wake.clear()
            try:
                self.checkpoint()
            except Exception as exc:  # a full disk, say: the WAL grows meanwhile; try again later
                self._on_error(f"omni sqlite checkpointer: {type(exc).__name__}: {exc}")
                time.sleep(1.0)
                self._wake.set()

    def checkpoint(self) -> None:
        """One pass: copy the WAL; when it is long, catch up and start it over."""
        self._passive()
        if self.frames < self.restart_frames:
            return
        for _ in range(8):  # each pass copies what arrived during the previous one: less and less
            if self.frames - self.copied <= self.catch_up_frames:
                break
            self._passive()
        with self.gate:
            # No transaction runs now: copy the last pages, wait briefly for readers of old
            # pages, and the writer's next commit starts the WAL over.
            busy, self.frames, self.copied = self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        if not busy:
            self.restarts += 1

    def _passive(self) -> None:
        _, self.frames, self.copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        """Stop the thread (after the pass in progress) and close its connection."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._db.close()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
