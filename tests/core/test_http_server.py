"""The hub's uvicorn protocol (one socket write per response): answers stay byte-exact."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from omni_core.http_server import JoinedWritesHttpToolsProtocol

BIG = bytes(range(256)) * 8192  # 2 MiB: more than a socket buffer takes at once


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    answer = BIG if path == "/big" else b'{"echo":' + str(len(body)).encode() + b"}"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=JoinedWritesHttpToolsProtocol, log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn offers no event for "listening"
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "test server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_keep_alive_answers_stay_in_order_and_exact(server_url: str) -> None:
    async with httpx.AsyncClient() as client:
        for size in (0, 1, 1000, 100_000):
            r = await client.post(server_url + "/echo", content=b"x" * size)
            assert r.status_code == 200 and r.json() == {"echo": size}
        answers = await asyncio.gather(*(client.post(server_url + "/echo", content=b"y" * n) for n in range(50)))
        assert [a.json()["echo"] for a in answers] == list(range(50))


async def test_a_big_body_and_a_streamed_body_arrive_whole(server_url: str) -> None:
    async with httpx.AsyncClient() as client:
        big = await client.get(server_url + "/big")
        assert big.content == BIG
        async with client.stream("GET", server_url + "/stream") as streamed:
            parts = [chunk async for chunk in streamed.aiter_raw()]
        assert b"".join(parts) == b"one,two,three"
        assert len(parts) >= 2  # written as the app sent them, not held back to the end


async def test_connection_close_flushes_before_closing(server_url: str) -> None:
    reader, writer = await asyncio.open_connection(*server_url.removeprefix("http://").split(":"))
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b'{"echo":0}')
