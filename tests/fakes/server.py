"""Run an ASGI app with uvicorn on 127.0.0.1 in a background thread with its own event loop.

The test thread (sync or async) talks to the server over real HTTP. The server can be stopped
and started again on the *same port*, which is how the fakes simulate "connection refused".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServerThread:
    """One uvicorn server for ``app`` on ``host:port`` (port 0 = pick a free one).

    ``start()`` blocks until the socket accepts connections; ``stop()`` blocks until the
    thread is gone. After a stop, ``start()`` binds the same port again.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "fake-server",
        graceful_shutdown_seconds: float = 0.5,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self.graceful_shutdown_seconds = graceful_shutdown_seconds
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._state_lock = threading.Lock()

    # --- public API ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name} has not been started yet, so it has no port")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The server thread's event loop while running (for ``call_soon_threadsafe``)."""
        return self._loop

    def start(self, timeout: float = 10.0) -> Self:
        with self._state_lock:
            if self.running:
                return self
            sock = self._bind()
            config = uvicorn.Config(
                self.app,
                lifespan="off",
                interface="asgi3",
                proxy_headers=False,
                server_header=False,
                http="httptools",
                ws="none",
                log_config=None,
                log_level=None,
                timeout_keep_alive=5,
                # uvicorn waits this long for in-flight requests on stop, then cancels them.
                timeout_graceful_shutdown=self.graceful_shutdown_seconds,  # type: ignore[arg-type]
                backlog=2048,
            )
            server = uvicorn.Server(config)
            self._server = server
            self._error = None
            thread = threading.Thread(target=self._run, args=(server, sock), name=self.name, daemon=True)
            self._thread = thread
            thread.start()
            deadline = time.monotonic() + timeout
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError(f"{self.name} failed to start: {self._error!r}")
                if time.monotonic() > deadline:
                    server.should_exit = True
                    raise TimeoutError(f"{self.name} did not start within {timeout}s")
                time.sleep(0.002)
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, finish (or, after the grace period, cancel) in-flight requests, join."""
        with self._state_lock:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            server.should_exit = True
            thread.join(self.graceful_shutdown_seconds + 0.5)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"{self.name} did not stop within {timeout}s")
            self._server = None
            self._thread = None
            self._loop = None

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------------
    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]
        return sock

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(server, sock))
        except BaseException as exc:  # surfaced by start()
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await server.serve(sockets=[sock])
        finally:
            # Drop connections still open after the grace period so clients see a reset, not a hang.
            for conn in list(server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()


# =================================================================================================
# Shared machinery for the fake protocol servers: request recording, failure injection, latency,
# "down" mode and waiting helpers. Subclasses implement ``handle`` and ``error_response``.
# =================================================================================================


@dataclass
class RecordedRequest:
    """One request as the fake saw it. ``status`` / ``response`` are filled in once answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  #: lower-cased names
    body: Any  #: parsed JSON, or None when the body was empty or not JSON
    raw: bytes
    time: float  #: ``time.time()`` on arrival
    status: int | None = None  #: None while in flight (or when the server was stopped mid-request)
    response: Any = None
    injected: bool = False  #: answered by ``fail_next`` / soft-down, not by the protocol logic
    duplicate: bool = False  #: (FakeHive) a replayed Idempotency-Key
    elapsed: float | None = None
    generation: int = 0  #: bumped by ``reset()``: answers to older requests are not bookkept

    def json(self) -> Any:
        return self.body


@dataclass
class Response:
    status: int
    body: Any = None  #: JSON-encodable value, ``bytes``/``str`` sent raw, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.body is None:
            payload = b""
        elif isinstance(self.body, bytes):
            payload = self.body
        elif isinstance(self.body, str):
            payload = self.body.encode()
            headers.setdefault("content-type", "text/plain; charset=utf-8")
        else:
            payload = json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()
            headers.setdefault("content-type", "application/json; charset=utf-8")
        headers["content-length"] = str(len(payload))
        return payload, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    path: str | None
    body: Any


Predicate = Callable[[], Any] | Callable[[Any], Any]


class FakeServer:
    """Base class: a real HTTP server (see :class:`ServerThread`) with test controls.

    Every request is recorded, then: soft-down answers 503; ``latency`` is slept (async, so
    concurrent requests overlap); a queued ``fail_next`` failure answers; otherwise ``handle``.
    """

    name = "fake"

    def __init__(self, *, port: int = 0, graceful_shutdown_seconds: float = 0.5) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._soft_down = False
        self._hard_down = False
        self._generation = 0
        #: Seconds every request waits before being answered (asyncio.sleep on the server loop).
        self.latency: float = 0.0
        self._server = ServerThread(
            self._asgi, port=port, name=self.name, graceful_shutdown_seconds=graceful_shutdown_seconds
        )

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- inspection ---------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self._requests
                if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
            ]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def reset(self) -> None:
        """Forget recorded requests and clear every control (latency, failures, soft-down)."""
        with self._lock:
            self._generation += 1
            self._requests.clear()
            self._failures.clear()
            self._soft_down = False
            self.latency = 0.0
        if self._hard_down:
            self.set_down(False)

    # --- controls -----------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        retry_after: float | None = None,
        path: str | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``n`` requests (only those whose path contains ``path``, if given) with ``status``.

        ``retry_after`` adds a ``Retry-After`` header; ``body`` overrides the protocol's error body.
        """
        with self._lock:
            self._failures.extend(_Failure(status, retry_after, path, body) for _ in range(n))

    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    def set_down(self, down: bool = True, *, refuse: bool = True) -> None:
        """Simulate an outage. ``refuse=True``: stop listening (connection refused) and come back
        on the same port with ``set_down(False)``. ``refuse=False``: keep listening, answer 503.

        Call from the test thread, never from inside a request handler / responder.
        """
        if down:
            if refuse:
                self._hard_down = True
                self._server.stop()
            else:
                with self._lock:
                    self._soft_down = True
        else:
            with self._lock:
                self._soft_down = False
            if self._hard_down:
                self._server.start()
                self._hard_down = False

    @property
    def down(self) -> bool:
        return self._hard_down or self._soft_down

    # --- waiting ------------------------------------------------------------------------------
    def _wait_items(self) -> list[Any]:
        """What ``wait_for(n)`` counts; subclasses override (successful sends, processed requests)."""
        return [r for r in self._requests if r.status is not None]

    def _check(self, target: int | Predicate) -> Any:
        if isinstance(target, int):
            items = self._wait_items()
            return items if len(items) >= target else None
        try:
            params = [
                p
                for p in inspect.signature(target).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            params = []
        return target(self) if params else target()  # type: ignore[call-arg]

    def _timeout_message(self, target: int | Predicate, timeout: float) -> str:
        what = f"{target} item(s)" if isinstance(target, int) else "predicate"
        with self._lock:
            got = len(self._wait_items())
            recent = [f"{r.method} {r.path} -> {r.status}" for r in self._requests[-10:]]
        return f"{self.name}: timed out after {timeout}s waiting for {what}; have {got}; last requests: {recent}"

    def wait_for(self, target: int | Predicate, timeout: float = 5.0) -> Any:
        """Block until ``target`` holds; raise AssertionError on timeout.

        ``target`` is a count (see the subclass for what is counted; returns the items) or a
        predicate taking no argument or the fake itself (returns its truthy result).
        Blocks the calling thread: from an ``async`` test use :meth:`wait_for_async`.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = self._check(target)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._timeout_message(target, timeout))
                self._cond.wait(min(remaining, 0.05))

    async def wait_for_async(self, target: int | Predicate, timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Like :meth:`wait_for`, but polls with ``asyncio.sleep`` so the caller's loop keeps running."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                result = self._check(target)
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(self._timeout_message(target, timeout))
            await asyncio.sleep(0.005)

    # --- protocol hooks -----------------------------------------------------------------------
    async def handle(self, request: RecordedRequest) -> Response:
        raise NotImplementedError

    def error_response(self, status: int, message: Any) -> Response:
        return Response(status, {"error": message})

    def latency_for(self, request: RecordedRequest) -> float:
        return self.latency

    def on_answered(self, request: RecordedRequest, response: Response) -> None:
        """Called under the lock after a response was sent (bookkeeping in subclasses)."""

    # --- ASGI ---------------------------------------------------------------------------------
    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        started = time.monotonic()
        body: Any = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=query,
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=body,
            raw=raw,
            time=time.time(),
        )
        with self._cond:
            record.generation = self._generation
            self._requests.append(record)
            self._cond.notify_all()

        response = await self._respond(record)
        payload, headers = response.encode()
        # Book-keep before answering: once the client has the answer, the record must show it.
        with self._cond:
            record.status = response.status
            record.response = response.body
            record.elapsed = time.monotonic() - started
            if record.generation == self._generation:
                self.on_answered(record, response)
            self._cond.notify_all()
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _respond(self, record: RecordedRequest) -> Response:
        with self._lock:
            soft_down = self._soft_down
        if soft_down:
            record.injected = True
            return self.error_response(503, "Service Unavailable")
        delay = self.latency_for(record)
        if delay > 0:
            await asyncio.sleep(delay)
        failure = self._take_failure(record.path)
        if failure is not None:
            record.injected = True
            response = (
                Response(failure.status, failure.body)
                if failure.body is not None
                else self.error_response(failure.status, _phrase(failure.status))
            )
            if failure.retry_after is not None:
                response.headers["Retry-After"] = f"{failure.retry_after:g}"
            return response
        try:
            return await self.handle(record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a responder: answer 500 rather than hang the client
            return self.error_response(500, f"fake crashed: {type(exc).__name__}: {exc}")

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for i, failure in enumerate(self._failures):
                if failure.path is None or failure.path in path:
                    return self._failures.pop(i)
        return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
