"""Writes for tests of the SQLite writer process: module-level, so they travel there by reference."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def wait_for_file(db: sqlite3.Connection, path: str, timeout_s: float = 5.0) -> bool:
    """Hold the writer inside its transaction until ``path`` exists (a gate another process can open)."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def writer_pid(db: sqlite3.Connection) -> int:
    """The pid of the process the write ran in."""
    return os.getpid()


class FileGate:
    """Blocks the writer (``store._writer.write(wait_for_file, gate.path)``) until :meth:`open`."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / f"gate-{time.monotonic_ns()}")

    def open(self) -> None:
        Path(self.path).touch()


def committed_rows(db: sqlite3.Connection) -> tuple[bool, int]:
    """Whether the write runs inside a transaction, and how many rows of ``t`` it sees."""
    return db.in_transaction, int(db.execute("SELECT COUNT(*) FROM t").fetchone()[0])


def sleep_for(db: sqlite3.Connection, seconds: float) -> bool:
    """A write that hangs the writer for ``seconds``."""
    time.sleep(seconds)
    return True
