"""The SQLite store's writer: one thread, one connection, every write of the process (group commit).

Each write is a function run on the writer's connection inside a transaction; the thread runs
every write queued meanwhile in one transaction and resolves their futures after its COMMIT, so
under load many webhooks share one commit (and one fsync).

The thread takes its next batch itself as soon as a commit ends. An earlier design had an
asyncio task hand each batch to aiosqlite's thread and wait for the result before handing over
the next: between two commits the writer then idled until the busy event loop got round to that
task (py-spy: idle ~30% of the time under webhook load, with requests waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from omni_core.store import sqlite_binding

sqlite_binding.install()

#: A unit of work run on the writer's connection inside the writer's transaction, called as
#: ``fn(db, *args)``.
WriteOp = Callable[..., Any]

MAX_BATCH = 512
#: Rows per multi-row INSERT, largest first: few distinct statements (each prepared once and
#: cached), at most seven for up to 127 rows; 64 rows of a dozen columns stay far below
#: SQLite's 32,766 variables.
_CHUNKS = (64, 32, 16, 8, 4, 2, 1)


class WriterConnection(sqlite3.Connection):
    """The writer's connection: plain row inserts can wait for the end of the transaction.

    Trace rows (three per webhook, more per job step) took ~18% of the writer's time as one
    statement per row, each handing the GIL back to the busy event loop and waiting to take it
    again. Rows nobody reads inside the transaction are deferred and inserted together, up to
    64 per statement, just before COMMIT (~9% of the writer's time, py-spy and per-batch timers
    under webhook load).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: dict[str, list[tuple[Any, ...]]] = {}

    def defer_rows(self, insert_sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert ``rows`` with ``insert_sql`` (``INSERT ... VALUES (?, ...)``) before this transaction commits."""
        self._deferred.setdefault(insert_sql, []).extend(rows)

    def flush_deferred(self) -> None:
        """Insert the deferred rows now (before COMMIT, and before a write that reads or deletes them)."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, {}
        for sql, rows in deferred.items():
            insert_many(self, sql, rows)

    def discard_deferred(self) -> None:
        self._deferred = {}


class _Item:
    """A queued write: ``fn(db, *args)`` and the future its result goes to; ``alone`` runs without a batch."""

    __slots__ = ("alone", "args", "fn", "future")

    def __init__(self, fn: WriteOp, args: tuple[Any, ...], future: asyncio.Future[Any], alone: bool) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.alone = alone


_STOP = object()


class GroupCommitWriter:
    """Runs writes on a dedicated thread; :meth:`write` batches, :meth:`call` runs a function alone.

    The writer process (:class:`omni_core.store.sqlite_writer_process.ProcessWriter`, the default
    for a database file) has the same interface and runs the same :func:`run_ops` in a child.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, max_batch: int = MAX_BATCH) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Start the thread and open the connection there; connection errors raise here."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[None] = loop.create_future()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="omni-sqlite-writer", daemon=True)
        self._thread.start()
        await ready

    def write(self, fn: WriteOp, *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(db, *args)`` for the next transaction; the future resolves after its COMMIT."""
        return self._put(fn, args, alone=False)

    def call(self, fn: WriteOp, *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(db, *args)`` on the writer's connection by itself, outside any transaction (migrations)."""
        return self._put(fn, args, alone=True)

    def _put(self, fn: WriteOp, args: tuple[Any, ...], *, alone: bool) -> asyncio.Future[Any]:
        if self._loop is None or self._stopped is None or self._stopped.done():
            raise RuntimeError("store is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Item(fn, args, future, alone))
        return future

    async def close(self) -> None:
        """Finish every write queued so far, then close the connection and end the thread."""
        if self._thread is None or self._stopped is None:
            return
        if not self._stopped.done():
            self._queue.put(_STOP)
            await self._stopped
        self._thread = None

    # --- the thread -----------------------------------------------------------------------------
    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            db = self._connect()
        except BaseException as exc:
            self._resolve_stopped()
            self._post(_fail, ready, exc)
            return
        self._post(_succeed, ready, None)
        pending: list[_Item] = []
        try:
            while True:
                item = pending.pop() if pending else self._queue.get()
                if item is _STOP:
                    break
                if item.alone:
                    self._run_batch(db, [item], in_transaction=False)
                    continue
                batch = [item]
                # Everything queued meanwhile joins this transaction, up to an item that must
                # run alone (it waits in ``pending`` for the next round).
                while len(batch) < self._max_batch:
                    try:
                        following = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if following is _STOP or following.alone:
                        pending.append(following)
                        break
                    batch.append(following)
                self._run_batch(db, batch, in_transaction=True)
        finally:
            with contextlib.suppress(Exception):
                db.close()
            self._resolve_stopped()

    def _run_batch(self, db: sqlite3.Connection, batch: list[_Item], *, in_transaction: bool) -> None:
        futures = [i.future for i in batch]
        try:
            outcomes = run_ops(db, [(i.fn, i.args) for i in batch], in_transaction)
        except BaseException as exc:
            self._post(fail_all, futures, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._post(settle_all, futures, outcomes)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(fn, *args)

    def _resolve_stopped(self) -> None:
        if self._stopped is not None:
            self._post(_succeed, self._stopped, None)


_multi_sql: dict[tuple[str, int], str] = {}


def insert_many(db: sqlite3.Connection, insert_sql: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert ``rows`` with ``insert_sql`` (``INSERT ... VALUES (?, ...)``), many per statement;
    returns how many rows went in."""
    inserted = 0
    start = 0
    for size in _CHUNKS:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            start += size
            sql = _multi_sql.get((insert_sql, size))
            if sql is None:
                head, _, group = insert_sql.rpartition(" VALUES ")
                sql = _multi_sql[(insert_sql, size)] = f"{head} VALUES {', '.join([group] * size)}"
            params = chunk[0] if size == 1 else [value for row in chunk for value in row]
            inserted += db.execute(sql, params).rowcount
    return inserted


#: What one write came to: ``(True, result)`` or ``(False, exception)``.
Outcome = tuple[bool, Any]


def run_ops(db: sqlite3.Connection, ops: list[tuple[WriteOp, tuple[Any, ...]]], in_transaction: bool) -> list[Outcome]:
    """Run ``ops`` in one transaction (or one op without one); each op's outcome in order.

    If one op fails the whole transaction rolls back, and each op is re-run in a transaction of
    its own: only the faulty one reports its error, the others still commit.
    """
    if not in_transaction:
        fn, args = ops[0]
        try:
            return [(True, fn(db, *args))]
        except Exception as exc:
            return [(False, exc)]
    try:
        return [(True, result) for result in _transaction(db, ops)]
    except Exception as exc:
        if len(ops) == 1:
            return [(False, exc)]
        return [run_ops(db, [op], True)[0] for op in ops]


def _transaction(db: sqlite3.Connection, ops: list[tuple[WriteOp, tuple[Any, ...]]]) -> list[Any]:
    writer = db if isinstance(db, WriterConnection) else None
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [fn(db, *args) for fn, args in ops]
        if writer is not None:
            writer.flush_deferred()
        db.execute("COMMIT")
    except BaseException:
        if writer is not None:
            writer.discard_deferred()
        with contextlib.suppress(Exception):
            db.execute("ROLLBACK")
        raise
    return results


def insert_rows(db: sqlite3.Connection, insert_sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert rows nothing reads before COMMIT: deferred on the writer, at once elsewhere."""
    if isinstance(db, WriterConnection):
        db.defer_rows(insert_sql, rows)
    else:
        db.executemany(insert_sql, rows)


def flush_rows(db: sqlite3.Connection) -> None:
    """Insert deferred rows now: call before a write that reads or deletes rows of their tables."""
    if isinstance(db, WriterConnection):
        db.flush_deferred()


def _succeed(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def settle_all(futures: list[asyncio.Future[Any]], outcomes: list[Outcome]) -> None:
    """Resolve each future with its outcome (a future already done, say cancelled, is skipped)."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def fail_all(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    """Fail every future not yet done with ``exc``."""
    for future in futures:
        if not future.done():
            future.set_exception(exc)
