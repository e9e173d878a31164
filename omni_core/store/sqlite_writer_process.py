"""The SQLite writer process: the writer's connection and every write's SQL, outside the hub's GIL.

Under webhook load the writer thread and the event loop took turns on one GIL: each statement
hands the GIL back while SQLite works and then waits to take it again from the busy event loop
(py-spy: the loop held the GIL ~44% of the time, the writer thread ~50% of a core for ~31
webhooks per 8.6 ms batch). In a process of its own the writer runs on its own core. On the
hub's side (:class:`ProcessWriter`, on the event loop) the writes queued in one pass of the loop
are pickled (module-level functions by reference, arguments by value) and sent as one frame
without waiting; the child runs every frame waiting in its socket as one transaction and
answers; the answer resolves the futures as it arrives.

The child is forked from multiprocessing's fork server (started once per hub process with this
store's modules preloaded), so a store opens in milliseconds and no thread of the hub is ever
forked. It lives while its socket is open: when the hub closes the store it finishes what was
sent, answers and exits; when the hub dies it sees end of file and exits. If the child dies, the
writes in flight fail (they may or may not have committed; webhook senders retry, and
deduplication absorbs the retry) and a new child takes the next ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import os
import pickle
import signal
import socket
import sqlite3
import struct
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from omni_core.store.sqlite_writer import Outcome, WriteOp, fail_all, run_ops, settle_all

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
#: How long closing the store waits for the child to finish what it was sent.
GOODBYE_TIMEOUT_S = 30.0


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


class ProcessWriter:
    """The hub's side of the writer process, on the event loop: same interface as GroupCommitWriter.

    ``write`` queues a write and, once per pass of the event loop, everything queued is pickled
    and written to the child's socket as one frame; the child runs every frame waiting in its pipe
    as one transaction (group commit) and answers once per transaction. Answers arrive as data on
    the loop and resolve their futures directly. No thread of the hub is involved: a first
    version's sender and receiver threads each waited for the GIL at every hand-over (~0.9 ms from
    a write's queueing to its frame leaving, ~0.4 ms from an answer to its futures, of ~11 ms per
    webhook at 64 concurrent ones).
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_frame: int = MAX_TRANSACTION,
        goodbye_timeout_s: float = GOODBYE_TIMEOUT_S,
    ) -> None:
        self._connect = connect
        self._max_frame = max_frame
        self._goodbye_timeout_s = goodbye_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _AnswerProtocol | None = None
        self._proc: Any = None
        #: Writes not yet sent: (fn, args, future, alone).
        self._pending: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any], bool]] = []
        self._flush_scheduled = False
        #: The futures of each frame sent and not yet answered, in order.
        self._inflight: collections.deque[list[asyncio.Future[Any]]] = collections.deque()
        self._recovering: asyncio.Task[None] | None = None
        self._closed = True

    async def open(self) -> None:
        """Start the child and open its connection there; connection errors raise here."""
        self._loop = asyncio.get_running_loop()
        await self._start()
        self._closed = False

    async def _start(self) -> None:
        assert self._loop is not None
        conn, proc = await asyncio.to_thread(spawn, self._connect)
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        try:
            _, protocol = await self._loop.create_connection(lambda: _AnswerProtocol(self), sock=sock)
        except BaseException:
            sock.close()
            await asyncio.to_thread(_reap, proc)
            raise
        self._protocol, self._proc = protocol, proc

    def write(self, fn: WriteOp, *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(db, *args)`` for the next transaction; the future resolves after its COMMIT."""
        return self._put(fn, args, alone=False)

    def call(self, fn: WriteOp, *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(db, *args)`` on the writer's connection by itself, outside any transaction."""
        return self._put(fn, args, alone=True)

    def _put(self, fn: WriteOp, args: tuple[Any, ...], *, alone: bool) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise RuntimeError("store is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((fn, args, future, alone))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send everything queued during this pass of the loop (a frame per run of writes)."""
        self._flush_scheduled = False
        protocol = self._protocol
        if protocol is None or not self._pending:
            return  # restarting: the new child gets them
        pending, self._pending = self._pending, []
        group: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any], bool]] = []
        for item in pending:
            if item[3]:
                self._send(protocol, True, group)
                self._send(protocol, False, [item])
                group = []
            else:
                group.append(item)
                if len(group) >= self._max_frame:
                    self._send(protocol, True, group)
                    group = []
        self._send(protocol, True, group)

    def _send(self, protocol: _AnswerProtocol, in_transaction: bool, group: list[Any]) -> None:
        if not group:
            return
        ops = [(fn, args) for fn, args, _, _ in group]
        try:
            frame = pickle.dumps((in_transaction, ops), _PROTOCOL)
        except Exception:
            # Find the write(s) that cannot travel; they fail, the others are still sent.
            kept = []
            for item in group:
                try:
                    pickle.dumps((item[0], item[1]), _PROTOCOL)
                except Exception as exc:
                    fail_all([item[2]], TypeError(f"write {_name(item[0])} cannot be sent to the writer: {exc}"))
                else:
                    kept.append(item)
            self._send(protocol, in_transaction, kept)
            return
        self._inflight.append([future for _, _, future, _ in group])
        protocol.send(frame)

    # --- answers (called by the protocol) --------------------------------------------------------
    def _answered(self, results: list[tuple[bool, Any]]) -> None:
        _settle_frames([(self._inflight.popleft(), ok, value) for ok, value in results])

    def _lost(self) -> None:
        """The child's end closed without a goodbye: fail what was in flight, start a new child."""
        self._protocol = None
        proc, self._proc = self._proc, None
        if self._loop is not None:
            self._recovering = self._loop.create_task(self._recover(proc))

    async def _recover(self, proc: Any) -> None:
        code = await asyncio.to_thread(_reap, proc)
        error = WriterProcessError(
            f"the SQLite writer process exited (exit code {code}) with writes in flight;"
            " they may or may not have committed"
        )
        while self._inflight:
            fail_all(self._inflight.popleft(), error)
        while not self._closed:
            try:
                await self._start()
            except Exception as exc:
                # Writes queued meanwhile fail rather than wait for an unknown time.
                pending, self._pending = self._pending, []
                fail_all([f for _, _, f, _ in pending], WriterProcessError(f"no SQLite writer process: {exc}"))
                await asyncio.sleep(1.0)
                continue
            if self._pending and not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
            return

    async def close(self) -> None:
        """Finish every write queued so far, then let the child close its connection and exit."""
        if self._closed:
            return
        self._closed = True
        if self._recovering is not None:
            with contextlib.suppress(BaseException):
                await self._recovering
        self._flush()
        protocol = self._protocol
        answered = protocol is not None and await protocol.goodbye(self._goodbye_timeout_s)
        proc, self._proc, self._protocol = self._proc, None, None
        await asyncio.to_thread(_reap, proc, 5.0 if answered else 0.0)
        # Anything still unanswered (the child died while closing) fails instead of hanging.
        error = WriterProcessError("the SQLite writer process exited while the store closed")
        while self._inflight:
            fail_all(self._inflight.popleft(), error)
        pending, self._pending = self._pending, []
        fail_all([f for _, _, f, _ in pending], error)


#: multiprocessing.connection's framing: a signed 32-bit big-endian length (-1: a 64-bit one follows).
_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")


class _AnswerProtocol(asyncio.Protocol):
    """The hub's end of the child's socket: frames out, answers in (multiprocessing's framing)."""

    def __init__(self, writer: ProcessWriter) -> None:
        self._writer = writer
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._bye: asyncio.Future[None] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write() and close().
        self._transport = cast(asyncio.Transport, transport)

    def send(self, frame: bytes) -> None:
        assert self._transport is not None
        size = len(frame)
        head = _HEADER.pack(size) if size < 0x7FFFFFFF else _HEADER.pack(-1) + _LONG_HEADER.pack(size)
        self._transport.write(head + frame)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 4:
            (size,) = _HEADER.unpack_from(buffer, offset)
            start = offset + 4
            if size == -1:
                if len(buffer) - start < 8:
                    break
                (size,) = _LONG_HEADER.unpack_from(buffer, start)
                start += 8
            if len(buffer) - start < size:
                break
            message = bytes(buffer[start : start + size])
            offset = start + size
            if message == _BYE:
                if self._bye is not None and not self._bye.done():
                    self._bye.set_result(None)
                continue
            self._writer._answered(pickle.loads(message))
        del buffer[:offset]

    async def goodbye(self, timeout_s: float) -> bool:
        """Ask the child to finish what it was sent and exit; wait up to ``timeout_s`` for its
        answer to that. False when it did not answer (hung or gone): the caller kills it."""
        assert self._transport is not None
        self._bye = asyncio.get_running_loop().create_future()
        self.send(_BYE)
        answered = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._bye, timeout_s)
            answered = True
        self._closed = True
        self._transport.close()
        return answered

    def connection_lost(self, exc: Exception | None) -> None:
        if self._bye is not None and not self._bye.done():
            self._bye.set_exception(WriterProcessError("the SQLite writer process exited before saying goodbye"))
        if not self._closed:
            self._closed = True
            self._writer._lost()


def _reap(proc: Any, grace_s: float = 5.0) -> int | None:
    """Wait for a writer process to exit (killing it after ``grace_s``); its exit code."""
    if proc is None:
        return None
    proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    code: int | None = proc.exitcode
    proc.close()
    return code


def _settle_frames(settled: list[tuple[list[asyncio.Future[Any]], bool, Any]]) -> None:
    for futures, ok, value in settled:
        if ok:
            settle_all(futures, value)
        else:
            fail_all(futures, value)


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
