"""PooledTransport against real sockets: raw asyncio servers on 127.0.0.1 write the exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_core.http_client import HttpxPinningTransport, HubClient
from omni_core.http_transport import CONNECT_ADDRESSES, PooledTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    chunks: list[int] = field(default_factory=list)  # sizes of the chunks of a chunked body


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request off the wire, or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body, chunks = b"", []
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            chunks.append(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readline() == b"\r\n"
        body = b"".join(parts)
    return Request(method, target, headers, body, chunks)


def reply(body: bytes = b"", status: str = "200 OK", headers: tuple[str, ...] = ()) -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def app(respond: Callable[[Request], Awaitable[bytes | None]]) -> Handler:
    """Keep-alive server loop: one response per request; None closes the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (request := await read_request(reader)) is not None:
            out = await respond(request)
            if out is None:
                return
            writer.write(out)
            await writer.drain()

    return handler


async def echo_path(request: Request) -> bytes:
    return reply(request.target.encode())


class Server:
    """A real TCP server; counts accepted and finished connections and cancels stuck handlers at exit."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl = ssl_context
        self.accepted = 0
        self.finished = 0
        self.requests_per_connection: list[int] = []
        self.closed = asyncio.Event()  # set whenever a connection ends
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{'localhost' if self.ssl else '127.0.0.1'}:{self.port}"

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        index = self.accepted
        self.accepted += 1
        try:
            await self.handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass  # client hung up, or the test is over (__aexit__ cancels stuck handlers)
        finally:
            self.tasks.discard(task)
            writer.close()
            self.finished += 1
            self.closed.set()

    async def wait_finished(self, count: int) -> None:
        async with asyncio.timeout(2):
            while self.finished < count:
                self.closed.clear()
                await self.closed.wait()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler,
    ssl_context: ssl.SSLContext | None = None,
    client_class: type[httpx.AsyncClient] = httpx.AsyncClient,
    **options: object,
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    async with Server(handler, ssl_context) as server:
        transport = PooledTransport(**options)  # type: ignore[arg-type]
        async with client_class(transport=transport, base_url=server.url, timeout=5.0) as client:
            yield server, client


#: httpx's own client reads bodies through the stream's iterator; the hub's reads them in one call.
CLIENTS = pytest.mark.parametrize("client_class", [httpx.AsyncClient, HubClient], ids=["httpx", "hub"])


def live_connections(client: httpx.AsyncClient) -> list[object]:
    transport = client._transport
    assert isinstance(transport, PooledTransport)
    return [conn for pool in transport._pools.values() for conn in pool.conns]


def idle_connections(client: httpx.AsyncClient) -> int:
    transport = client._transport
    assert isinstance(transport, PooledTransport)
    return sum(len(pool.idle) for pool in transport._pools.values())


# -- keep-alive and concurrency -------------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    async with serving(app(echo_path)) as (server, client):
        for i in range(10):
            response = await client.get(f"/r{i}")
            assert response.status_code == 200 and response.text == f"/r{i}"
            assert response.http_version == "HTTP/1.1" and response.reason_phrase == "OK"
        assert server.accepted == 1
        assert idle_connections(client) == 1


async def test_concurrent_requests_stay_within_the_limit_and_match_their_answers() -> None:
    async def slow_echo(request: Request) -> bytes:
        await asyncio.sleep(0.005)
        return reply(json.dumps({"path": request.target, "body": request.body.decode()}).encode())

    async with serving(app(slow_echo), max_connections_per_origin=5) as (server, client):
        responses = await asyncio.gather(*(client.post(f"/item/{i}", content=f"body-{i}") for i in range(50)))
        assert [r.json() for r in responses] == [{"path": f"/item/{i}", "body": f"body-{i}"} for i in range(50)]
        assert 1 <= server.accepted <= 5
        assert len(live_connections(client)) <= 5


async def test_connection_close_response_is_not_reused() -> None:
    async def close_header(request: Request) -> bytes:
        return reply(b"bye", headers=("Connection: close",))  # but the server keeps the socket open

    async with serving(app(close_header)) as (server, client):
        assert (await client.get("/")).text == "bye"
        assert (await client.get("/")).text == "bye"
        assert server.accepted == 2


async def test_keepalive_expiry_closes_old_idle_connections() -> None:
    async with serving(app(echo_path), keepalive_expiry=0.05) as (server, client):
        await client.get("/a")
        await client.get("/b")
        assert server.accepted == 1
        await asyncio.sleep(0.1)
        assert (await client.get("/c")).text == "/c"
        assert server.accepted == 2
        await server.wait_finished(1)  # the expired one was closed, not leaked


async def test_idle_connections_beyond_the_cap_are_closed() -> None:
    async def slow_echo(request: Request) -> bytes:
        await asyncio.sleep(0.01)
        return reply(b"ok")

    async with serving(app(slow_echo), max_idle_per_origin=2) as (server, client):
        await asyncio.gather(*(client.get("/") for _ in range(6)))
        assert server.accepted == 6
        assert idle_connections(client) == 2
        await server.wait_finished(4)


# -- response framing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "reused"),
    [
        (reply(b"hello world"), b"hello world", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"hello world",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", b"until the end", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", b"old", False),
    ],
    ids=["content-length", "chunked", "close-delimited", "http1.0"],
)
@CLIENTS
async def test_body_framings(raw: bytes, expected: bytes, reused: bool, client_class: type[httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await read_request(reader) is not None:
            for i in range(0, len(raw), 7):  # split across TCP writes
                writer.write(raw[i : i + 7])
                await writer.drain()
            if (b"Content-Length" not in raw and b"chunked" not in raw) or b"HTTP/1.0" in raw:
                return  # close-delimited / HTTP/1.0: EOF ends the body

    async with serving(handler, client_class=client_class) as (server, client):
        for _ in range(3):
            response = await client.get("/")
            assert response.status_code == 200 and response.content == expected
        assert server.accepted == (1 if reused else 3)


async def test_interim_100_continue_is_skipped() -> None:
    async def continue_first(request: Request) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"final", status="201 Created")

    async with serving(app(continue_first)) as (server, client):
        response = await client.post("/", content=b"x" * 10, headers={"expect": "100-continue"})
        assert response.status_code == 201 and response.content == b"final"
        assert (await client.get("/")).status_code == 201
        assert server.accepted == 1


async def test_head_has_no_body_and_the_client_goes_on() -> None:
    async def head_or_get(request: Request) -> bytes:
        if request.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: video/mp4\r\n\r\n"
        return reply(b"got")

    async with serving(app(head_or_get)) as (_, client):
        response = await client.head("/file")
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-length"] == "1000"
        assert (await client.get("/")).text == "got"


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
async def test_bodyless_statuses_keep_the_connection(status: str) -> None:
    async def no_body(request: Request) -> bytes:
        if request.target == "/empty":
            return f"HTTP/1.1 {status}\r\nETag: x\r\n\r\n".encode()
        return reply(b"after")

    async with serving(app(no_body)) as (server, client):
        response = await client.get("/empty")
        assert response.status_code == int(status[:3]) and response.content == b""
        assert (await client.get("/next")).text == "after"
        assert server.accepted == 1


# -- bodies in both directions --------------------------------------------------------------------


async def test_json_post_round_trip() -> None:
    async def echo_json(request: Request) -> bytes:
        assert request.headers["content-type"] == "application/json"
        return reply(request.body, headers=("Content-Type: application/json",))

    payload = {"text": "olá 👋", "n": [1, 2, 3], "nested": {"ok": True}}
    async with serving(app(echo_json)) as (_, client):
        response = await client.post("/messages", json=payload)
        assert response.json() == payload


async def test_streaming_upload_is_sent_chunked() -> None:
    received: list[Request] = []

    async def digest(request: Request) -> bytes:
        received.append(request)
        return reply(hashlib.sha256(request.body).hexdigest().encode())

    parts = [bytes([i % 251]) * (i * 997 % 70_000) for i in range(60)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)

    async with serving(app(digest)) as (_, client):
        response = await client.post("/upload", content=body())
        assert response.text == hashlib.sha256(b"".join(parts)).hexdigest()
        assert received[0].headers["transfer-encoding"] == "chunked"
        assert received[0].chunks == [len(p) for p in parts if p]  # one chunk per piece, empty ones skipped
        assert (await client.get("/")).status_code == 200  # connection still in sync


async def test_large_byte_upload_respects_flow_control() -> None:
    data = bytes(range(256)) * 16384  # 4 MiB, far above the transport's write high-water mark

    async def slow_reader(request: Request) -> bytes:
        return reply(str(len(request.body)).encode() + b" " + hashlib.sha256(request.body).hexdigest().encode())

    async with serving(app(slow_reader)) as (_, client):
        response = await client.put("/blob", content=data)
        assert response.text == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


async def test_streamed_download_of_5_mb_in_chunks() -> None:
    payload = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
            for i in range(0, len(payload), 65536):
                writer.write(payload[i : i + 65536])
                await writer.drain()

    async with serving(handler) as (server, client):
        digest, size, pieces = hashlib.sha256(), 0, 0
        async with client.stream("GET", "/media") as response:
            assert response.headers["content-length"] == str(len(payload))
            async for piece in response.aiter_raw():
                digest.update(piece)
                size += len(piece)
                pieces += 1
        assert size == len(payload) and digest.digest() == hashlib.sha256(payload).digest()
        assert pieces > 1
        assert (await client.get("/again")).status_code == 200
        assert server.accepted == 1  # fully read: the connection went back to the pool


async def test_slow_consumer_pauses_reading_instead_of_buffering() -> None:
    limit = 64 * 1024
    total = 8 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * 65536
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    async with serving(handler, read_buffer_limit=limit) as (_, client):
        async with client.stream("GET", "/big") as response:
            stream = response.aiter_raw()
            size = len(await anext(stream))
            await asyncio.sleep(0.2)  # the server keeps pushing meanwhile
            (conn,) = live_connections(client)
            assert conn.reading_paused  # type: ignore[attr-defined]
            assert conn.buffered <= limit + 256 * 1024  # type: ignore[attr-defined]  # + at most one read
            async for piece in stream:
                size += len(piece)
        assert size == total


# -- errors ---------------------------------------------------------------------------------------


async def test_read_timeout() -> None:
    async def stall(request: Request) -> bytes:
        if request.target == "/slow":
            await asyncio.sleep(10)
        return reply(b"quick")

    async with serving(app(stall), max_connections_per_origin=1) as (_, client):
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get("/slow", timeout=httpx.Timeout(5.0, read=0.1))
        assert info.value.request.url.path == "/slow"
        assert (await client.get("/fast")).text == "quick"  # the slot was released


async def test_read_timeout_mid_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await asyncio.sleep(10)

    async with serving(handler) as (_, client):
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(5.0, read=0.1))
        assert live_connections(client) == []


async def test_write_timeout_when_the_server_stops_reading() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)  # never reads the body

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"u" * 1_000_000

    async with serving(handler) as (_, client):
        with pytest.raises(httpx.WriteTimeout):
            await client.post("/", content=body(), timeout=httpx.Timeout(5.0, write=0.2))
        assert live_connections(client) == []


async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with httpx.AsyncClient(transport=PooledTransport()) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
        assert info.value.request.url.port == port


async def test_dns_failure_is_a_connect_error() -> None:
    async with httpx.AsyncClient(transport=PooledTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://does-not-exist.invalid/")


async def test_pool_timeout_when_every_connection_is_busy() -> None:
    async with serving(app(echo_path), max_connections_per_origin=1) as (_, client):
        async with client.stream("GET", "/held") as held:
            with pytest.raises(httpx.PoolTimeout):
                await client.get("/waits", timeout=httpx.Timeout(5.0, pool=0.1))
            waiting = asyncio.create_task(client.get("/queued"))
            await asyncio.sleep(0.01)
            assert not waiting.done()
            await held.aread()
        assert (await waiting).text == "/queued"  # handed the connection when the stream closed


async def test_connect_timeout_covers_the_tls_handshake() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.read()  # never answers the ClientHello

    async with Server(silent) as server, httpx.AsyncClient(transport=PooledTransport()) as client:
        with pytest.raises(httpx.ConnectTimeout):
            await client.get(f"https://127.0.0.1:{server.port}/", timeout=httpx.Timeout(5.0, connect=0.1))
        assert live_connections(client) == []


async def test_unsupported_scheme() -> None:
    async with httpx.AsyncClient(transport=PooledTransport()) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/file")


async def test_garbage_response_is_a_protocol_error() -> None:
    async def garbage(request: Request) -> bytes:
        return b"SSH-2.0-OpenSSH_9.6\r\n\r\n"

    async with serving(app(garbage)) as (_, client):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


@CLIENTS
async def test_reset_mid_body_is_an_error_not_a_short_body(client_class: type[httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    async with serving(handler, client_class=client_class) as (_, client):
        with pytest.raises(httpx.ReadError):
            await client.get("/")
        assert live_connections(client) == []  # a connection that failed mid-body is never reused


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "chunked"],
)
@CLIENTS
async def test_peer_closing_mid_body_is_a_protocol_error(partial: bytes, client_class: type[httpx.AsyncClient]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(partial)

    async with serving(handler, client_class=client_class) as (_, client):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
        assert live_connections(client) == []


async def test_invalid_chunk_mid_body_is_a_protocol_error() -> None:
    async def bad_chunk(request: Request) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"

    async with serving(app(bad_chunk)) as (_, client):
        async with client.stream("GET", "/") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()
        assert live_connections(client) == []


async def test_early_answer_during_a_streaming_upload_is_returned() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")  # headers only: the body is refused
        writer.write(reply(b"too large", status="413 Payload Too Large", headers=("Connection: close",)))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"x" * 10_000
            await asyncio.sleep(0.005)

    async with serving(handler) as (_, client):
        response = await client.post("/upload", content=body())
        assert response.status_code == 413 and response.text == "too large"


async def test_peer_closing_before_answering() -> None:
    async def hang_up(request: Request) -> None:
        return None

    async with serving(app(hang_up)) as (_, client):
        with pytest.raises(httpx.ReadError):
            await client.get("/")


async def test_header_injection_is_refused() -> None:
    async with serving(app(echo_path)) as (_, client):
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"x-tenant": "a\r\nX-Admin: yes"})
        assert (await client.get("/ok")).text == "/ok"


# -- connection lifecycle -------------------------------------------------------------------------


async def test_stale_keep_alive_connection_is_retried_once() -> None:
    """The server drops a kept-alive connection just as the next request goes out on it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        served = 0
        while (request := await read_request(reader)) is not None:
            if index == 0 and served == 1:
                return  # closes without answering the second request
            served += 1
            writer.write(reply(request.target.encode() + b" " + request.body))
            await writer.drain()

    async with serving(handler) as (server, client):
        assert (await client.get("/one")).text == "/one "
        assert (await client.post("/two", content=b"again")).text == "/two again"
        assert server.accepted == 2


async def test_stale_connection_with_a_streaming_body_is_not_replayed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        served = 0
        while (request := await read_request(reader)) is not None:
            if served == 1:
                return
            served += 1
            writer.write(reply(request.target.encode()))
            await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        yield b"once only"

    async with serving(handler) as (server, client):
        await client.get("/one")
        with pytest.raises(httpx.TransportError):
            await client.post("/two", content=body())
        assert server.accepted == 1


async def test_idle_connection_closed_by_server_leaves_the_pool_at_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(reply(request.target.encode()))
            await writer.drain()
            if index == 0:
                await asyncio.sleep(0.02)
                return  # idle timeout on the server side

    async with serving(handler) as (server, client):
        assert (await client.get("/a")).text == "/a"
        await asyncio.sleep(0.1)
        assert idle_connections(client) == 0 and live_connections(client) == []
        assert (await client.get("/b")).text == "/b"
        assert server.accepted == 2


async def test_unsolicited_bytes_on_an_idle_connection_drop_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(reply(request.target.encode()))
            await writer.drain()
            if index == 0:
                await asyncio.sleep(0.02)
                writer.write(reply(b"nobody asked"))  # out of sync: must never answer the next request

    async with serving(handler) as (server, client):
        assert (await client.get("/a")).text == "/a"
        await asyncio.sleep(0.1)
        assert (await client.get("/b")).text == "/b"
        assert server.accepted == 2


async def test_early_close_of_a_partly_read_stream_closes_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (request := await read_request(reader)) is not None:
            if request.target == "/big":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 100_000)
                await writer.drain()
                await reader.read()  # until the client hangs up
                return
            writer.write(reply(b"small"))
            await writer.drain()

    async with serving(handler) as (server, client):
        async with client.stream("GET", "/big") as response:
            first = await anext(response.aiter_raw())
            assert first
        await server.wait_finished(1)  # the client closed that connection instead of draining 10 MB
        assert (await client.get("/small")).text == "small"
        assert server.accepted == 2


async def test_cancelled_request_frees_its_connection_and_slot() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (request := await read_request(reader)) is not None:
            if request.target == "/slow":
                await asyncio.sleep(10)
            writer.write(reply(b"done"))
            await writer.drain()

    async with serving(handler, max_connections_per_origin=1) as (server, client):
        task = asyncio.create_task(client.get("/slow"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get("/slow"), 0.05)  # as callers do
        assert live_connections(client) == []
        async with asyncio.timeout(1):
            assert (await client.get("/fast")).text == "done"
        assert server.accepted == 3


async def test_cancelled_pool_waiter_does_not_lose_the_slot() -> None:
    async with serving(app(echo_path), max_connections_per_origin=1) as (_, client):
        async with client.stream("GET", "/held") as held:
            waiter = asyncio.create_task(client.get("/gives-up"))
            await asyncio.sleep(0.01)
            waiter.cancel()
            await held.aread()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        async with asyncio.timeout(1):
            assert (await client.get("/next")).text == "/next"


async def test_waiter_gets_the_slot_of_a_closed_connection() -> None:
    async def partial_for_held(request: Request) -> bytes:
        if request.target == "/held":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"
        return reply(request.target.encode())

    async with serving(app(partial_for_held), max_connections_per_origin=1) as (server, client):
        async with client.stream("GET", "/held"):
            waiting = asyncio.create_task(client.get("/queued"))
            await asyncio.sleep(0.01)
        # closed unread: that connection is gone, the waiter opens a new one in its slot
        async with asyncio.timeout(1):
            assert (await waiting).text == "/queued"
        assert server.accepted == 2 and len(live_connections(client)) == 1


async def test_cancelled_waiter_passes_on_a_connection_handed_to_it() -> None:
    async with serving(app(echo_path), max_connections_per_origin=1) as (server, client):
        async with client.stream("GET", "/held") as held:
            waiter = asyncio.create_task(client.get("/gives-up"))
            await asyncio.sleep(0.01)
            await held.aread()
        waiter.cancel()  # the connection was handed over, but the waiter never got to run
        with pytest.raises(asyncio.CancelledError):
            await waiter
        async with asyncio.timeout(1):
            assert (await client.get("/next")).text == "/next"
        assert server.accepted == 1


async def test_transport_close_closes_every_connection() -> None:
    async with Server(app(echo_path)) as server:
        transport = PooledTransport()
        client = httpx.AsyncClient(transport=transport, base_url=server.url)
        await asyncio.gather(*(client.get("/") for _ in range(3)))
        await client.aclose()
        await server.wait_finished(server.accepted)
        assert transport._pools == {}


# -- TLS ------------------------------------------------------------------------------------------


def self_signed(directory: Path, name: str = "localhost", with_ip: bool = True) -> tuple[Path, Path] | None:
    """A cert for ``name`` (and 127.0.0.1 when ``with_ip``): with `cryptography` if installed, else the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
        from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        if shutil.which("openssl") is None:
            return None
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)),
                *("-addext", f"subjectAltName=DNS:{name}" + (",IP:127.0.0.1" if with_ip else "")),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(name)]
    if with_ip:
        alt_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    files = self_signed(tmp_path_factory.mktemp("tls"))
    if files is None:
        pytest.skip("no way to make a test certificate: neither `cryptography` nor the openssl CLI is available")
    return files


async def test_tls_round_trip(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def echo(request: Request) -> bytes:
        return reply(request.body or request.target.encode())

    async with serving(app(echo), server_ctx, verify=client_ctx) as (server, client):
        assert (await client.get("/secure")).text == "/secure"
        assert (await client.post("/secure", content=b"x" * 300_000)).content == b"x" * 300_000
        assert server.accepted == 1
    async with serving(app(echo), server_ctx) as (_, client):  # default verification: untrusted cert
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


# -- pinned addresses (CONNECT_ADDRESSES) -----------------------------------------------------------

#: A name that never resolves (RFC 6761): a request to it that succeeds cannot have looked it up.
MADE_UP = "receiver.omni-test.invalid"


def pinned(*addresses: object) -> dict[str, object]:
    return {CONNECT_ADDRESSES: addresses}


async def echo_host(request: Request) -> bytes:
    return reply(request.headers["host"].encode())


async def test_a_pinned_request_connects_to_its_addresses_in_order_and_keeps_the_host() -> None:
    async with serving(app(echo_host)) as (server, client):
        url = f"http://{MADE_UP}:{server.port}/x"
        assert (await client.get(url, extensions=pinned("127.0.0.1"))).text == f"{MADE_UP}:{server.port}"
        # Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1): refused, then the next one.
        assert (await client.get(url, extensions=pinned("127.0.0.2", "127.0.0.1"))).status_code == 200
        assert server.accepted == 2
        with pytest.raises(httpx.ConnectError, match=r"127\.0\.0\.2"):
            await client.get(url, extensions=pinned("127.0.0.2"))
        with pytest.raises(httpx.ConnectError):
            await client.get(url)  # unpinned, the name is looked up, and it resolves nowhere
        assert server.accepted == 2


async def test_pinned_and_unpinned_requests_never_share_a_connection() -> None:
    async with serving(app(echo_path)) as (server, client):
        transport = client._transport
        assert isinstance(transport, PooledTransport)
        url = f"http://localhost:{server.port}"
        await client.get(url + "/plain")
        # The idle connection to what ``localhost`` resolved to is not used for a request pinned elsewhere.
        with pytest.raises(httpx.ConnectError):
            await client.get(url + "/elsewhere", extensions=pinned("127.0.0.3"))
        assert server.accepted == 1
        await client.get(url + "/pinned", extensions=pinned("127.0.0.1"))
        assert server.accepted == 2  # its own connection, although the plain one was idle
        assert (await client.get(url + "/plain")).text == "/plain"
        assert (await client.get(url + "/pinned", extensions=pinned("127.0.0.1"))).text == "/pinned"
        assert server.accepted == 2 and idle_connections(client) == 2  # each kept alive in its own pool
        # A new address set for the origin retires the unused pool of the old one (its idle
        # connection closes); the unpinned pool is left alone.
        await client.get(url + "/moved", extensions=pinned("127.0.0.2", "127.0.0.1"))
        await server.wait_finished(1)
        assert server.accepted == 3 and idle_connections(client) == 2 and len(transport._pools) == 2
        await client.get(url + "/plain")
        assert server.accepted == 3


async def test_pinned_addresses_must_be_ip_addresses() -> None:
    async with serving(app(echo_path)) as (server, client):
        for bad in (pinned("localhost"), pinned(), {CONNECT_ADDRESSES: "127.0.0.1"}, pinned("127.0.0.1", 7)):
            with pytest.raises(ValueError, match=CONNECT_ADDRESSES):
                await client.get("/", extensions=bad)
        assert server.accepted == 0


@pytest.fixture(scope="module")
def made_up_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for MADE_UP only: no IP address in it, so only the hostname can verify."""
    files = self_signed(tmp_path_factory.mktemp("tls-made-up"), MADE_UP, with_ip=False)
    if files is None:
        pytest.skip("no way to make a test certificate: neither `cryptography` nor the openssl CLI is available")
    return files


@pytest.mark.parametrize("kind", ["pooled", "httpx"])
async def test_pinned_tls_uses_the_hostname_for_sni_and_the_certificate(
    made_up_tls: tuple[Path, Path], kind: str
) -> None:
    """Both transports the hub's client may run on: its own, and httpx's (``OMNI_HTTP_TRANSPORT=httpx``)."""
    cert, key = made_up_tls
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: server_names.append(name)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    transport = PooledTransport(verify=client_ctx) if kind == "pooled" else HttpxPinningTransport(verify=client_ctx)
    client = HubClient(transport=transport)
    async with Server(app(echo_host), server_ctx) as server, client:
        url = f"https://{MADE_UP}:{server.port}/x"
        response = await client.get(url, extensions=pinned("127.0.0.1"))
        assert response.status_code == 200 and response.text == f"{MADE_UP}:{server.port}"
        assert server_names == [MADE_UP]
        # The certificate is checked against the URL's name: another name on the same address fails,
        # also right after a connection to that address was verified for the first name.
        with pytest.raises(httpx.ConnectError):
            await client.get(f"https://other.omni-test.invalid:{server.port}/x", extensions=pinned("127.0.0.1"))
        response = await client.get(url, extensions=pinned("127.0.0.2", "127.0.0.1"))  # .2: refused, then .1
        assert response.text == f"{MADE_UP}:{server.port}" and server_names == [
            MADE_UP,
            "other.omni-test.invalid",
            MADE_UP,
        ]
        with pytest.raises(httpx.ConnectError):
            await client.get(url)  # unpinned: the made-up name resolves nowhere
        assert server.accepted == 2  # the refused handshake never reached the server's handler


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=20_000),
    chunk_sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    write_sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    use_chunked=st.booleans(),
)
def test_any_body_and_split_round_trips_exactly(
    body: bytes, chunk_sizes: list[int], write_sizes: list[int], use_chunked: bool
) -> None:
    """Response framing and TCP segmentation never change the body; the connection stays in sync."""

    def cut(data: bytes, sizes: list[int]) -> list[bytes]:
        pieces, i, k = [], 0, 0
        while i < len(data):
            pieces.append(data[i : i + sizes[k % len(sizes)]])
            i += sizes[k % len(sizes)]
            k += 1
        return pieces

    if use_chunked:
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*cut(body, chunk_sizes))
    else:
        raw = reply(body)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (request := await read_request(reader)) is not None:
            assert request.body == body
            for piece in cut(raw, write_sizes):
                writer.write(piece)
                await writer.drain()

    async def scenario() -> None:
        async with serving(handler) as (server, client):
            for _ in range(2):
                assert (await client.post("/", content=body)).content == body
            assert server.accepted == 1

    asyncio.run(scenario())


def test_runs_on_uvloop() -> None:
    """The hub serves on uvloop: the same protocol code must hold there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
            served = 0
            while (request := await read_request(reader)) is not None:
                if index == 0 and served == 2:
                    return  # stale keep-alive connection
                served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(request.body, b"!"))
                await writer.drain()

        async with serving(handler) as (server, client):
            assert (await client.post("/", content=b"a")).content == b"a!"
            async with client.stream("POST", "/", content=b"b" * 1_000_000) as response:
                assert b"".join([piece async for piece in response.aiter_raw()]) == b"b" * 1_000_000 + b"!"
            assert (await client.post("/", content=b"c")).content == b"c!"  # retried on a new connection
            assert server.accepted == 2

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
