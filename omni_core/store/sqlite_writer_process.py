"""The SQLite writer process: the writer's connection and every write's SQL, outside the hub's GIL.

Under webhook load the writer thread and the event loop took turns on one GIL: each statement
hands the GIL back while SQLite works and then waits to take it again from the busy event loop
(py-spy: the loop held the GIL ~44% of the time, the writer thread ~50% of a core for ~31
webhooks per 8.6 ms batch). In a process of its own the writer runs on its own core. The hub's
writer thread pickles queued writes (module-level functions by reference, arguments by value)
and sends them down a pipe without waiting; the child runs everything waiting in the pipe as one
transaction and answers; a receiver thread in the hub resolves the futures.

The child is forked from multiprocessing's fork server (started once per hub process with this
store's modules preloaded), so a store opens in milliseconds and no thread of the hub is ever
forked. It lives while the pipe is open: when the hub closes the store it finishes what was sent,
answers and exits; when the hub dies it sees end of file and exits. If the child dies, the
writes in flight fail (they may or may not have committed; webhook senders retry, and
deduplication absorbs the retry) and a new child takes the next ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import pickle
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from omni_core.store.sqlite_writer import Outcome, run_ops

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
    """The writer process could not start, or exited while writes were in flight."""


#: Ends the child's loop once everything sent before it is answered.
_BYE = b"bye"
#: A transaction in the child takes at most this many writes.
MAX_TRANSACTION = 512


def spawn(connect: Callable[[], sqlite3.Connection]) -> tuple[Connection, Any]:
    """Start a writer process that opens its connection with ``connect``; (pipe, process) once it is ready."""
    ctx = _fork_context()
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(theirs, connect), name="omni-sqlite-writer", daemon=True)
    try:
        proc.start()
    except Exception as exc:
        ours.close()
        raise WriterProcessError(
            f"could not start the SQLite writer process ({type(exc).__name__}: {exc});"
            " OMNI_SQLITE_WRITER=thread runs the writes in the hub process instead"
        ) from exc
    finally:
        theirs.close()
    try:
        ok, value = pickle.loads(ours.recv_bytes())
    except (EOFError, OSError) as exc:
        ours.close()
        proc.join(5)
        raise WriterProcessError(f"the SQLite writer process exited at start (exit code {proc.exitcode})") from exc
    if not ok:
        ours.close()
        proc.join(5)
        raise value
    return ours, proc


class ChildLink:
    """The hub's side of the writer process: a sender (the writer thread) and a receiver thread.

    The sender never waits for a transaction: it pickles whatever is queued and sends it as a
    frame at once, so the next frames are already in the pipe when the child's COMMIT returns
    and the child never idles between transactions (waiting for answers cost ~1.7 ms of each
    ~7 ms cycle at 64 concurrent webhooks). The child merges every frame waiting in the pipe into
    its next transaction, which keeps group commit. Answers come back in order, one message per
    transaction; the receiver resolves the frames' futures with one wake-up of the event loop.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], post: Callable[..., None]) -> None:
        self._connect = connect
        self._post = post
        #: Held while sending a frame and while replacing a dead child.
        self._lock = threading.Lock()
        self._inflight: collections.deque[list[asyncio.Future[Any]]] = collections.deque()
        self._closing = False
        self._conn: Connection | None
        self._proc: Any
        self._conn, self._proc = spawn(connect)
        self._receiver = threading.Thread(target=self._receive, name="omni-sqlite-writer-answers", daemon=True)
        self._receiver.start()

    # --- sender (the writer thread) --------------------------------------------------------------
    def pump(self, items: queue.SimpleQueue[Any], stop: object, max_batch: int) -> None:
        """Send queued writes until ``stop`` comes, then wait until every frame is answered."""
        while True:
            batch = [items.get()]
            while len(batch) < max_batch:
                try:
                    batch.append(items.get_nowait())
                except queue.Empty:
                    break
            stopping = False
            group: list[Any] = []
            for item in batch:
                if item is stop:
                    stopping = True
                    break
                if item.alone:
                    self._send(True, group)
                    self._send(False, [item])
                    group = []
                else:
                    group.append(item)
            self._send(True, group)
            if stopping:
                break
        with self._lock:
            self._closing = True
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send_bytes(_BYE)
        self._receiver.join()

    def _send(self, in_transaction: bool, group: list[Any]) -> None:
        if not group:
            return
        ops = [(item.fn, item.args) for item in group]
        futures = [item.future for item in group]
        try:
            frame = pickle.dumps((in_transaction, ops), _PROTOCOL)
        except Exception:
            # Find the write(s) that cannot travel; they fail, the others are still sent.
            kept = []
            for item, op in zip(group, ops, strict=True):
                try:
                    pickle.dumps(op, _PROTOCOL)
                except Exception as exc:
                    error = TypeError(f"write {_name(op[0])} cannot be sent to the writer: {exc}")
                    self._post(_fail_futures, [item.future], error)
                else:
                    kept.append(item)
            if kept:
                self._send(in_transaction, kept)
            return
        with self._lock:
            if self._conn is None:
                self._post(_fail_futures, futures, WriterProcessError("the SQLite writer process is not running"))
                return
            self._inflight.append(futures)
            try:
                self._conn.send_bytes(frame)
            except OSError as exc:
                # The child died: these writes never reached it. The receiver sees the end of
                # the pipe, fails what was in flight and starts a new child.
                self._inflight.pop()
                self._post(_fail_futures, futures, WriterProcessError(f"the SQLite writer process is gone: {exc}"))

    # --- receiver ------------------------------------------------------------------------------------
    def _receive(self) -> None:
        while True:
            conn = self._conn
            if conn is None:
                if self._closing:
                    return
                time.sleep(1.0)
                self._restart()
                continue
            try:
                answer = conn.recv_bytes()
            except (EOFError, OSError):
                if not self._child_died():
                    return
                continue
            if answer == _BYE:
                return
            results: list[tuple[bool, Any]] = pickle.loads(answer)
            settled = [(self._inflight.popleft(), ok, value) for ok, value in results]
            self._post(_settle_frames, settled)

    def _child_died(self) -> bool:
        """Fail what was in flight and start a new child; False when the link is closing."""
        with self._lock:
            code = self._reap()
            error = WriterProcessError(
                f"the SQLite writer process exited (exit code {code}) with writes in flight;"
                " they may or may not have committed"
            )
            while self._inflight:
                self._post(_fail_futures, self._inflight.popleft(), error)
            if self._closing:
                return False
            self._start_locked()
            return True

    def _restart(self) -> None:
        with self._lock:
            if self._conn is None and not self._closing:
                self._start_locked()

    def _start_locked(self) -> None:
        try:
            self._conn, self._proc = spawn(self._connect)
        except Exception:
            self._conn = self._proc = None  # writes fail until a later attempt succeeds

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
        proc.close()
        return code

    def close(self) -> None:
        """Close the pipe and wait for the child (after :meth:`pump` has returned, or instead of it)."""
        with self._lock:
            self._closing = True
            self._reap()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)


def _settle_frames(settled: list[tuple[list[asyncio.Future[Any]], bool, Any]]) -> None:
    for futures, ok, value in settled:
        if not ok:
            _fail_futures(futures, value)
            continue
        for future, (done, result) in zip(futures, value, strict=True):
            if future.done():
                continue
            if done:
                future.set_result(result)
            else:
                future.set_exception(result)


def _fail_futures(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# --- the child --------------------------------------------------------------------------------------


def serve(conn: Connection, connect: Callable[[], sqlite3.Connection]) -> None:
    """The writer process's loop, until the hub says bye or its end of the pipe closes.

    Each round takes every frame waiting in the pipe (at least one), runs consecutive
    transactional frames as one transaction (up to :data:`MAX_TRANSACTION` writes) and
    ``call`` frames alone, and sends one answer: per frame ``(True, outcomes)`` or ``(False, error)``.
    """
    # Ctrl-C reaches the whole process group; the hub decides when the writer stops.
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
                frames = [conn.recv_bytes()]
                waiting = MAX_TRANSACTION
                while waiting > 0 and conn.poll():
                    frames.append(conn.recv_bytes())
                    waiting -= 1
            except (EOFError, OSError):
                return
            bye = frames[-1] == _BYE
            if bye:
                frames.pop()
            if frames:
                conn.send_bytes(_dump_results(_run_frames(db, frames)))
            if bye:
                conn.send_bytes(_BYE)
                return
    finally:
        with contextlib.suppress(Exception):
            db.close()


def _run_frames(db: sqlite3.Connection, frames: list[bytes]) -> list[tuple[bool, Any]]:
    decoded: list[tuple[bool, Any]] = []
    for frame in frames:
        try:
            decoded.append((True, pickle.loads(frame)))
        except Exception as exc:
            decoded.append((False, WriterProcessError(f"the writer could not read a batch: {exc!r}")))
    results: list[tuple[bool, Any]] = []
    run: list[tuple[int, list[Any]]] = []  # consecutive transactional frames: (index in results, ops)

    def flush() -> None:
        ops = [op for _, frame_ops in run for op in frame_ops]
        outcomes = run_ops(db, ops, True) if ops else []
        start = 0
        for index, frame_ops in run:
            results[index] = (True, outcomes[start : start + len(frame_ops)])
            start += len(frame_ops)
        run.clear()

    for ok, value in decoded:
        if not ok:
            results.append((False, value))
            continue
        in_transaction, ops = value
        if in_transaction:
            if sum(len(o) for _, o in run) + len(ops) > MAX_TRANSACTION:
                flush()
            results.append((True, None))
            run.append((len(results) - 1, ops))
        else:
            flush()
            results.append((True, run_ops(db, ops, False)))
    flush()
    return results


def _dump(value: Any) -> bytes:
    return pickle.dumps(value, _PROTOCOL)


def _dump_results(results: list[tuple[bool, Any]]) -> bytes:
    try:
        return _dump(results)
    except Exception:
        return _dump([(ok, [_travels(o) for o in value] if ok else _portable(value)) for ok, value in results])


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
