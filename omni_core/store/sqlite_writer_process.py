"""The SQLite writer process: the writer's connection and every write's SQL, outside the hub's GIL.

Under webhook load the writer thread and the event loop took turns on one GIL: each statement
hands the GIL back while SQLite works and then waits to take it again from the busy event loop
(py-spy: the loop held the GIL ~44% of the time, the writer thread ~50% of a core for ~31
webhooks per 8.6 ms batch). In a process of its own the writer runs on its own core; the hub's
writer thread only pickles a batch (module-level functions by reference, arguments by value),
sends it through a pipe and waits, without the GIL, for the outcomes.

The child is forked from multiprocessing's fork server (started once per hub process with this
store's modules preloaded), so a store opens in milliseconds and never forks the hub's threads.
It lives while the pipe is open: when the hub closes the store, or dies, the child sees end of
file, closes its connection and exits. If the child dies, the batch in flight fails (its
writes may or may not have committed; webhook senders retry, and deduplication absorbs the
retry) and the next batch starts a new child.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import signal
import sqlite3
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from omni_core.store.sqlite_writer import Outcome, WriteOp, run_ops

_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Modules the fork server imports once, so each child starts with them loaded.
PRELOAD = ["omni_core.store.sqlite"]
_context_lock = threading.Lock()
_context: Any = None


def _fork_context() -> Any:
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _context = ctx
        return _context


class WriterProcessError(RuntimeError):
    """The writer process could not start, or exited while a batch was in flight."""


class ChildWriter:
    """The hub's side of a writer process: runs batches there (an :class:`~.sqlite_writer.Executor`)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: Connection | None = None
        self._proc: Any = None
        self._start()

    def _start(self) -> None:
        ctx = _fork_context()
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(theirs, self._connect), name="omni-sqlite-writer", daemon=True)
        proc.start()
        theirs.close()
        try:
            status, value = pickle.loads(ours.recv_bytes())
        except (EOFError, OSError) as exc:
            ours.close()
            proc.join(5)
            raise WriterProcessError(f"the SQLite writer process exited at start (exit code {proc.exitcode})") from exc
        if not status:
            ours.close()
            proc.join(5)
            raise value
        self._conn, self._proc = ours, proc

    def run(self, ops: list[tuple[WriteOp, tuple[Any, ...]]], in_transaction: bool) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(ops)
        sendable: list[int] = list(range(len(ops)))
        try:
            frame = pickle.dumps((in_transaction, ops), _PROTOCOL)
        except Exception:
            # Find the write(s) that cannot travel; they fail, the others still run.
            sendable = []
            for index, op in enumerate(ops):
                try:
                    pickle.dumps(op, _PROTOCOL)
                except Exception as exc:
                    outcomes[index] = (False, TypeError(f"write {_name(op[0])} cannot be sent to the writer: {exc}"))
                else:
                    sendable.append(index)
            if not sendable:
                return [o for o in outcomes if o is not None]
            frame = pickle.dumps((in_transaction, [ops[i] for i in sendable]), _PROTOCOL)
        if self._conn is None:
            self._start()  # the previous child died: this batch gets a new one
        assert self._conn is not None
        try:
            self._conn.send_bytes(frame)
            answer = self._conn.recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._reap()
            raise WriterProcessError(
                f"the SQLite writer process exited during a batch (exit code {code});"
                " its writes may or may not have committed"
            ) from exc
        status, value = pickle.loads(answer)
        if not status:
            raise value
        for index, outcome in zip(sendable, value, strict=True):
            outcomes[index] = outcome
        return [o for o in outcomes if o is not None]

    def _reap(self) -> int | None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        code: int | None = proc.exitcode
        return code

    def close(self) -> None:
        """Close the pipe; the child finishes, closes its connection and exits."""
        proc = self._proc
        self._reap()
        if proc is not None:
            proc.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --- the child --------------------------------------------------------------------------------------


def serve(conn: Connection, connect: Callable[[], sqlite3.Connection]) -> None:
    """The writer process's loop: ``(in_transaction, ops)`` in, ``(True, outcomes)`` out, until EOF."""
    # Ctrl-C reaches the whole process group; the hub decides when the writer stops (EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        db = connect()
    except Exception as exc:
        conn.send_bytes(_dump((False, _portable(exc))))
        return
    conn.send_bytes(_dump((True, None)))
    try:
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                in_transaction, ops = pickle.loads(frame)
            except Exception as exc:
                conn.send_bytes(_dump((False, WriterProcessError(f"the writer could not read a batch: {exc!r}"))))
                continue
            conn.send_bytes(_dump_outcomes(run_ops(db, ops, in_transaction)))
    finally:
        with contextlib.suppress(Exception):
            db.close()


def _dump(value: Any) -> bytes:
    return pickle.dumps(value, _PROTOCOL)


def _dump_outcomes(outcomes: list[Outcome]) -> bytes:
    try:
        return _dump((True, outcomes))
    except Exception:
        return _dump((True, [_travels(outcome) for outcome in outcomes]))


def _travels(outcome: Outcome) -> Outcome:
    """``outcome``, or a failure that says why it could not be sent back."""
    ok, value = outcome
    try:
        pickle.loads(_dump(value))
    except Exception as exc:
        if ok:
            return False, WriterProcessError(f"a write's result could not be sent back: {exc!r}")
        return False, _portable(value)
    return outcome


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`WriterProcessError` naming it."""
    try:
        pickle.loads(_dump(exc))
    except Exception:
        return WriterProcessError(f"{type(exc).__name__}: {exc}")
    return exc
