"""A lean HTTP/1.1 transport for the hub's shared ``httpx.AsyncClient``.

Why it exists: under load a large share of the hub's CPU went to httpcore. For every request its
``AsyncConnectionPool`` scans all pooled connections and asks each ``has_expired()``, which polls
the socket (``is_socket_readable()``, one ``poll()`` syscall per connection): O(pool size) syscalls
per request, on top of the anyio stream layers.

What it does instead: asyncio protocols straight on ``loop.create_connection`` and
``httptools.HttpResponseParser`` (the llhttp parser uvicorn already uses). A connection learns that
the peer closed it from ``connection_lost``, not by polling, and leaves the pool at once. Per origin
the idle connections are a LIFO stack (O(1) checkout, lazy keep-alive expiry from the old end),
open connections are capped and waiting requests queue FIFO. Response bodies stream with
backpressure; a request that meets a keep-alive connection the server closed at the same moment is
retried once on a fresh connection when its body can be replayed.

Connection pinning: a request whose ``extensions`` carry :data:`CONNECT_ADDRESSES` (IP address
strings) is connected to those addresses only, in order, without a DNS lookup, while its Host
header, TLS server name and certificate check keep the URL's hostname. The tenant webhook sender
uses it so the addresses it checked are the ones connected to (no DNS rebinding in between).

What it does not do: HTTP/2, proxies (the caller keeps httpx's own transport when proxy
environment variables are set), ``Expect: 100-continue`` waiting (the body is sent at once; interim
1xx responses are skipped), pipelining, or trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os.path
import ssl
from collections import deque
from typing import Any

import httptools
import httpx

__all__ = ["CONNECT_ADDRESSES", "PooledTransport", "pinned_addresses"]

#: Request extension: a sequence of IP address strings to connect to instead of resolving the host.
CONNECT_ADDRESSES = "omni.connect_addresses"

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_NO_TIMEOUTS: dict[str, float | None] = {}
#: (scheme, host, port, pinned addresses or None). Pinned requests get pools of their own, keyed by
#: the address set: a keep-alive connection opened to one set never serves a request pinned to
#: another, nor an unpinned one (whose host might resolve elsewhere by now), and vice versa.
_Origin = tuple[bytes, bytes, int, frozenset[str] | None]


def _expire(fut: asyncio.Future[Any]) -> None:
    """Timer callback: a wait ran out. ``False`` as result means "timed out", no exception needed."""
    if not fut.done():
        fut.set_result(False)


def _default_ssl_context(verify: bool | ssl.SSLContext | str) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify  # the caller's context is used as is (not mutated)
    if isinstance(verify, str):  # a CA bundle file or directory (httpx deprecates passing it the str)
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    ctx = httpx.create_ssl_context(verify=verify)  # certifi or SSL_CERT_FILE/DIR, as httpx does
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: the protocol callbacks feed the parser, the owning request awaits."""

    __slots__ = (
        "active",
        "buffered",
        "chunks",
        "discarded",
        "drain_waiter",
        "error",
        "head",
        "headers",
        "headers_done",
        "idle",
        "idle_since",
        "interim",
        "keep_alive",
        "limit",
        "lost",
        "lost_exc",
        "message_done",
        "parser",
        "pool",
        "reading_paused",
        "reason",
        "received",
        "request",
        "status",
        "transport",
        "waiter",
        "write_paused",
    )

    def __init__(self, pool: _Pool, limit: int) -> None:
        self.pool = pool
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False  # connection_lost seen
        self.lost_exc: Exception | None = None
        self.discarded = False  # closed by us and its pool slot released
        self.idle = False  # sitting in the pool's idle stack
        self.idle_since = 0.0
        self.active = False  # an exchange is in progress
        self.waiter: asyncio.Future[bool] | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[bool] | None = None
        self.reading_paused = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.error: httpx.TransportError | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # fresh list per message (on_message_begin)
        self.reason = b""
        self.status = 0
        self.start(None, False)
        self.active = False

    # -- asyncio protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active or self.message_done:
            # Bytes nobody asked for (idle connection, or after a complete response): the connection
            # is out of sync and must not be reused. HEAD bodies announced by Content-Length land here.
            if self.active and self.head:
                return
            self.keep_alive = False
            if not self.active:
                self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("unexpected protocol upgrade", request=self.request))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}", request=self.request))
        else:
            if self.buffered > self.limit and not self.reading_paused:
                self.reading_paused = True  # backpressure: the reader catches up, then take() resumes
                self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> None:
        return None  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        self.keep_alive = False
        self._wake()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)
        if self.idle:
            self.pool.lost_idle(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status  # may come in pieces when the status line spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.interim = True  # 1xx: skipped, the final response follows
            return
        self.status = status
        self.headers_done = True
        if self.head:
            self.message_done = True  # no body follows a HEAD response, whatever the headers say

    def on_body(self, body: bytes) -> None:
        if not self.message_done:
            self.chunks.append(body)
            self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.message_done = True
        # Must be asked now: llhttp resets its flags right after this callback.
        self.keep_alive = not self.head and self.parser.should_keep_alive()

    # -- used by the transport --------------------------------------------------------------------

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self.keep_alive = False
        self.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(True)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def start(self, request: httpx.Request | None, head: bool) -> None:
        """Reset the per-exchange state."""
        self.active = True
        self.request = request
        self.head = head
        self.error = None
        self.received = False  # any response byte arrived in this exchange (no stale retry after that)
        self.headers_done = False
        self.message_done = False
        self.interim = False
        self.keep_alive = False

    def make_idle(self, now: float) -> None:
        self.active = False
        self.request = None
        self.chunks.clear()
        self.buffered = 0
        if self.reading_paused:  # an idle connection must keep reading to notice the peer closing
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.idle = True
        self.idle_since = now

    async def _wait(self, read_timeout: float | None) -> bool:
        fut: asyncio.Future[bool] = self.pool.loop.create_future()
        self.waiter = fut
        if read_timeout is None:
            return await fut
        handle = self.pool.loop.call_later(read_timeout, _expire, fut)
        try:
            return await fut
        finally:
            handle.cancel()

    async def drain(self, write_timeout: float | None) -> None:
        """Wait until the transport's write buffer is under its high-water mark (flow control)."""
        if not self.write_paused or self.lost:
            return
        fut: asyncio.Future[bool] = self.pool.loop.create_future()
        self.drain_waiter = fut
        handle = self.pool.loop.call_later(write_timeout, _expire, fut) if write_timeout is not None else None
        try:
            done = await fut
        finally:
            self.drain_waiter = None
            if handle is not None:
                handle.cancel()
        if not done:
            raise httpx.WriteTimeout("timed out sending the request", request=self.request)

    async def receive_head(self, read_timeout: float | None) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            if self.lost:
                if self.lost_exc is not None:
                    raise httpx.ReadError(f"connection lost: {self.lost_exc!r}", request=self.request)
                raise httpx.ReadError("server disconnected without sending a complete response", request=self.request)
            if not await self._wait(read_timeout):
                raise httpx.ReadTimeout("timed out waiting for the response", request=self.request)

    def take(self) -> bytes | None:
        """Buffered body bytes, ``b""`` at the end of the body, ``None`` when the caller must wait."""
        chunks = self.chunks
        if chunks:
            if len(chunks) == 1:
                data = chunks.popleft()
            else:
                data = b"".join(chunks)
                chunks.clear()
            self.buffered = 0
            if self.reading_paused and not self.lost:
                self.reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            return data
        if self.message_done:
            return b""
        return None

    async def read(self, read_timeout: float | None) -> bytes:
        while True:
            data = self.take()
            if data is not None:
                return data
            if self.error is not None:
                raise self.error
            if self.lost:
                if self.lost_exc is not None:
                    raise httpx.ReadError(f"connection lost mid-body: {self.lost_exc!r}", request=self.request)
                if self._close_delimited():
                    self.message_done = True  # the body ran until EOF, as announced
                    return b""
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending the complete body", request=self.request
                )
            if not await self._wait(read_timeout):
                raise httpx.ReadTimeout("timed out reading the response body", request=self.request)

    def _close_delimited(self) -> bool:
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
                return False
        return True


class _Pool:
    """Connections to one origin: an idle LIFO stack, a cap on open connections, a FIFO of waiters."""

    __slots__ = (
        "addresses",
        "closed",
        "conns",
        "host",
        "idle",
        "keepalive_expiry",
        "loop",
        "max_connections",
        "max_idle",
        "port",
        "slots",
        "ssl",
        "waiters",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        max_idle: int,
        keepalive_expiry: float,
        addresses: tuple[str, ...] | None = None,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.addresses = addresses  # pinned: connect to these, never to what ``host`` resolves to
        self.ssl = ssl_context
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.keepalive_expiry = keepalive_expiry
        self.idle: deque[_Connection] = deque()  # oldest left, newest right
        self.conns: set[_Connection] = set()  # every live connection, idle or busy
        self.slots = 0  # connections open or being opened, counted against max_connections
        # A waiter's result: a connection handed over, True (a slot to open one), False (timed out).
        self.waiters: deque[asyncio.Future[_Connection | bool]] = deque()
        self.closed = False

    def checkout(self) -> _Connection | None:
        idle = self.idle
        if not idle:
            return None
        oldest_allowed = self.loop.time() - self.keepalive_expiry
        while idle and idle[0].idle_since < oldest_allowed:
            self.discard(idle.popleft(), graceful=True)
        if not idle:
            return None
        conn = idle.pop()
        conn.idle = False
        return conn

    async def acquire(self, request: httpx.Request, pool_timeout: float | None) -> _Connection | None:
        """An idle connection, or None when the caller holds a slot and must open one."""
        if self.slots < self.max_connections and not self.waiters:
            self.slots += 1
            return None
        fut: asyncio.Future[_Connection | bool] = self.loop.create_future()
        self.waiters.append(fut)
        handle = self.loop.call_later(pool_timeout, _expire, fut) if pool_timeout is not None else None
        try:
            result = await fut
        except BaseException:
            # Cancelled. If a connection or slot was handed over meanwhile, pass it on.
            if fut.cancelled():
                self._forget(fut)
            else:
                given = fut.result()
                if given is True:
                    self.free_slot()
                elif given is not False:
                    self.release(given, reuse=True)
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if result is False:
            self._forget(fut)
            raise httpx.PoolTimeout("timed out waiting for a connection from the pool", request=request)
        if result is True:
            return None
        return result

    def _forget(self, fut: asyncio.Future[_Connection | bool]) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(fut)

    def free_slot(self) -> None:
        """A connection is gone: its slot goes to the first live waiter, else back to the pool."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self.slots -= 1

    def release(self, conn: _Connection, reuse: bool) -> None:
        if not reuse or conn.lost or conn.discarded or self.closed:
            self.discard(conn)
            return
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                conn.active = False
                fut.set_result(conn)  # direct hand-over, keeps FIFO order
                return
        conn.make_idle(self.loop.time())
        idle = self.idle
        idle.append(conn)
        if len(idle) > self.max_idle:
            self.discard(idle.popleft(), graceful=True)

    def discard(self, conn: _Connection, graceful: bool = False) -> None:
        """Close a connection and release its slot (idempotent)."""
        if conn.discarded:
            return
        conn.discarded = True
        conn.idle = False
        conn.active = False
        if conn.transport is not None and not conn.lost:
            if graceful:
                conn.transport.close()
            else:
                conn.transport.abort()
        self.conns.discard(conn)
        self.free_slot()

    def lost_idle(self, conn: _Connection) -> None:
        """The peer closed an idle connection: drop it now, no polling needed."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self.discard(conn)

    def unused(self) -> bool:
        """No request holds or waits for a connection here (any open ones are idle)."""
        return self.slots == len(self.idle) and not self.waiters

    def close(self, graceful: bool = False) -> None:
        self.closed = True
        self.idle.clear()
        for conn in list(self.conns):
            self.discard(conn, graceful)


class ResponseStream(httpx.AsyncByteStream):
    """The response body as it arrives; closing it returns the connection to the pool or closes it."""

    __slots__ = ("_close", "_conn", "_pool", "_timeout")

    def __init__(self, pool: _Pool, conn: _Connection, timeout: float | None, close: bool) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout = timeout
        self._close = close  # the request asked for Connection: close

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        data = conn.take()
        if data is None:
            try:
                data = await conn.read(self._timeout)
            except BaseException:
                self._conn = None  # timeout, error or cancellation mid-body: never reuse
                self._pool.discard(conn)
                raise
        if not data:
            raise StopAsyncIteration
        return data

    async def read_all(self) -> bytes:
        """The rest of the body in one call: what iterating the stream yields, joined (without an
        async iterator step per chunk, for :class:`omni_core.http_client.HubClient`)."""
        conn = self._conn
        if conn is None:
            return b""
        chunks: list[bytes] = []
        while True:
            data = conn.take()
            if data is None:
                try:
                    data = await conn.read(self._timeout)
                except BaseException:
                    self._conn = None  # as in __anext__: never reuse a connection that failed mid-body
                    self._pool.discard(conn)
                    raise
            if not data:
                break
            chunks.append(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close_now(self) -> None:
        """:meth:`aclose` without the coroutine: it never waits."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            reuse = conn.message_done and conn.keep_alive and not self._close and conn.error is None
            self._pool.release(conn, reuse)

    async def aclose(self) -> None:
        # No await in here: it runs from except/finally blocks of cancelled tasks too.
        self.close_now()


class PooledTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive transport on asyncio protocols and httptools; a drop-in for httpx.

    Args:
        verify: TLS verification: True (certifi / SSL_CERT_FILE, as httpx), False, a CA bundle path,
            or a ready ``ssl.SSLContext`` (used as is).
        max_connections_per_origin: open connections per (scheme, host, port); further requests
            wait in FIFO order, at most the request's ``pool`` timeout (then ``httpx.PoolTimeout``).
        max_idle_per_origin: idle keep-alive connections kept per origin; extras are closed.
        keepalive_expiry: seconds an idle connection may wait for reuse before it is closed.
        read_buffer_limit: response bytes buffered per connection before reading pauses
            (backpressure for streamed downloads).
    """

    def __init__(
        self,
        *,
        verify: bool | ssl.SSLContext | str = True,
        max_connections_per_origin: int = 100,
        max_idle_per_origin: int = 32,
        keepalive_expiry: float = 5.0,
        read_buffer_limit: int = 256 * 1024,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._verify = verify
        self._ssl_context: ssl.SSLContext | None = None  # built on first https request
        self._max_connections = max_connections_per_origin
        self._max_idle = max(0, max_idle_per_origin)
        self._keepalive_expiry = keepalive_expiry
        self._read_buffer_limit = read_buffer_limit
        self._pools: dict[_Origin, _Pool] = {}
        self._closed = False

    def _pool(self, request: httpx.Request) -> _Pool:
        url = request.url
        scheme = url.raw_scheme
        port = url.port or _DEFAULT_PORTS.get(scheme, 0)
        pinned = request.extensions.get(CONNECT_ADDRESSES)
        origin = (scheme, url.raw_host, port, None if pinned is None else frozenset(pinned))
        pool = self._pools.get(origin)
        if pool is not None:
            return pool
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("request URL has no host", request=request)
        addresses = None
        if pinned is not None:
            addresses = pinned_addresses(pinned)
            self._retire_pinned(origin)
        ctx = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = _default_ssl_context(self._verify)
            ctx = self._ssl_context
        pool = _Pool(
            asyncio.get_running_loop(),
            url.raw_host.decode("ascii"),  # IDNA-encoded already
            port,
            ctx,
            self._max_connections,
            self._max_idle,
            self._keepalive_expiry,
            addresses,
        )
        self._pools[origin] = pool
        return pool

    def _retire_pinned(self, origin: _Origin) -> None:
        """A new address set for an origin: drop its older pinned pools that no request uses.

        Pinned pools are keyed by address set, so a host whose DNS answer keeps changing would
        otherwise leave a pool (and idle connections) behind for every answer it ever gave.
        """
        stale = [
            key for key, pool in self._pools.items() if key[3] is not None and key[:3] == origin[:3] and pool.unused()
        ]
        for key in stale:
            self._pools.pop(key).close(graceful=True)  # only idle connections are left

    async def _connect(self, pool: _Pool, request: httpx.Request, connect_timeout: float | None) -> _Connection:
        """Open a connection in a slot the caller holds; on failure the slot is released."""
        conn = _Connection(pool, self._read_buffer_limit)
        try:
            if self._closed:
                raise httpx.ConnectError("transport is closed", request=request)
            async with asyncio.timeout(connect_timeout):
                if pool.addresses is None:
                    await pool.loop.create_connection(
                        lambda: conn,
                        pool.host,
                        pool.port,
                        ssl=pool.ssl,
                        server_hostname=pool.host if pool.ssl is not None else None,
                    )
                else:
                    await _connect_pinned(pool, conn)
        except BaseException as exc:
            pool.free_slot()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(f"timed out connecting to {pool.host}:{pool.port}", request=request) from exc
            if isinstance(exc, OSError):  # refused, DNS (gaierror), TLS (SSLError), unreachable
                raise httpx.ConnectError(f"{pool.host}:{pool.port}: {exc}", request=request) from exc
            raise
        if self._closed or pool.closed:  # closed while connecting
            conn.discarded = True
            conn.abort()
            pool.free_slot()
            raise httpx.ConnectError("transport is closed", request=request)
        pool.conns.add(conn)
        return conn

    async def _replace(
        self, pool: _Pool, conn: _Connection, request: httpx.Request, connect_timeout: float | None
    ) -> _Connection:
        """Drop a dead connection but keep its slot for a fresh one (no waiting, limit respected)."""
        conn.discarded = True
        conn.active = False
        conn.abort()
        pool.conns.discard(conn)
        return await self._connect(pool, request, connect_timeout)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("transport is closed", request=request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout") or _NO_TIMEOUTS
        pool = self._pool(request)
        head, chunked, close = _request_head(request)
        stream = request.stream
        body: bytes | None = None
        if isinstance(stream, httpx.ByteStream):
            try:
                body = request.content
            except httpx.RequestNotRead:
                body = b"".join(stream)  # a ByteStream iterates its bytes
        elif not isinstance(stream, httpx.AsyncByteStream):
            raise RuntimeError("PooledTransport needs an async request body")

        conn = pool.checkout()
        reused = conn is not None
        if conn is None:
            conn = await pool.acquire(request, timeouts.get("pool"))
            if conn is None:
                conn = await self._connect(pool, request, timeouts.get("connect"))
            else:
                reused = True
        is_head = request.method == "HEAD"
        write_timeout = timeouts.get("write")
        read_timeout = timeouts.get("read")
        while True:
            if conn.lost:  # died while being handed over: nothing was sent, any body is still intact
                conn = await self._replace(pool, conn, request, timeouts.get("connect"))
                reused = False
            conn.start(request, is_head)
            try:
                await _send(conn, head, body, stream, chunked, write_timeout)
                await conn.receive_head(read_timeout)
            except httpx.TransportError:
                # A kept-alive connection the server closed just as we picked it: nothing of a response
                # arrived, so nothing was processed; replay once on a fresh connection in the same slot.
                if reused and body is not None and conn.lost and not conn.received and not self._closed:
                    conn = await self._replace(pool, conn, request, timeouts.get("connect"))
                    reused = False
                    continue
                pool.discard(conn)
                raise
            except BaseException:  # cancelled: the connection is half-used, never pool it
                pool.discard(conn)
                raise
            break
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=ResponseStream(pool, conn, read_timeout, close),
            extensions={
                "http_version": b"HTTP/1.0" if conn.parser.get_http_version() == "1.0" else b"HTTP/1.1",
                "reason_phrase": conn.reason,
            },
        )

    async def aclose(self) -> None:
        self._closed = True
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            pool.close()


def pinned_addresses(pinned: object) -> tuple[str, ...]:
    """The pinned addresses as given, in order and without repeats; each must be an IP literal,
    since a name here would be resolved by ``create_connection`` and defeat the pinning."""
    if isinstance(pinned, str | bytes) or not isinstance(pinned, tuple | list):
        raise ValueError(f"{CONNECT_ADDRESSES} must be a tuple or list of IP address strings")
    addresses = tuple(dict.fromkeys(pinned))
    if not addresses:
        raise ValueError(f"{CONNECT_ADDRESSES} is empty: there is no address to connect to")
    for address in addresses:
        if not isinstance(address, str):
            raise ValueError(f"{CONNECT_ADDRESSES} holds {address!r}, not an IP address string")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{CONNECT_ADDRESSES} holds {address!r}, not an IP address") from None
    return addresses


async def _connect_pinned(pool: _Pool, conn: _Connection) -> None:
    """Connect to the pool's pinned addresses in order, the first that accepts wins.

    TLS is set up for the URL's hostname (SNI and certificate check), not for the address. A TLS
    failure ends the attempt: the next address would present the same name's certificate.
    """
    assert pool.addresses is not None
    failures: list[str] = []
    for address in pool.addresses:
        try:
            await pool.loop.create_connection(
                lambda: conn,
                address,
                pool.port,
                ssl=pool.ssl,
                server_hostname=pool.host if pool.ssl is not None else None,
            )
            return
        except ssl.SSLError:
            raise
        except OSError as exc:
            failures.append(f"{address}: {exc}")
    raise OSError("; ".join(failures))


def _request_head(request: httpx.Request) -> tuple[bytes, bool, bool]:
    """Request line and headers; whether the body is chunked; whether the request asks to close."""
    raw = request.headers.raw
    parts = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = close = False
    for name, value in raw:
        parts.append(b"%s: %s" % (name, value))
        lname = name.lower()
        if lname == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lname == b"connection":
            close = b"close" in value.lower()
    parts.append(b"\r\n")
    head = b"\r\n".join(parts)
    # Header injection guard (h11 rejects these too): exactly one CRLF per line, no stray CR/LF/NUL.
    lines = len(raw) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise httpx.LocalProtocolError("invalid character in request line or headers", request=request)
    return head, chunked, close


async def _send(
    conn: _Connection,
    head: bytes,
    body: bytes | None,
    stream: Any,
    chunked: bool,
    write_timeout: float | None,
) -> None:
    transport = conn.transport
    assert transport is not None
    if conn.lost:
        raise httpx.WriteError("connection closed before the request was sent", request=conn.request)
    if body is not None:
        if chunked:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        if len(body) <= 65536:
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            transport.write(body)
        await conn.drain(write_timeout)
        return
    transport.write(head)
    async for chunk in stream:
        if conn.lost:
            break  # the server hung up (maybe after an early answer): read what it said
        if not chunk:
            continue  # an empty chunk would end a chunked body
        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain(write_timeout)
    else:
        if chunked and not conn.lost:
            transport.write(b"0\r\n\r\n")
    if conn.lost and not conn.received:
        raise httpx.WriteError("connection closed while sending the request", request=conn.request)
