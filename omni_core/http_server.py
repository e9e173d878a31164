"""uvicorn's httptools protocol, with each response leaving in one socket write.

uvicorn writes a response's head when the app sends ``http.response.start`` and its body on
``http.response.body``: two ``send()`` syscalls per answer. Under webhook load those two writes
were over a quarter of the event loop's time (py-spy, docs/performance.md). Here a connection's
writes made during one pass of the event loop are joined and written once, at the end of that
pass; nothing waits longer than that. Closing flushes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _JoinedWrites:
    """Stands in for the connection's transport: buffers ``write`` until the loop pass ends."""

    __slots__ = ("_loop", "_parts", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(bytes(data))

    def flush(self) -> None:
        if not self._parts:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class JoinedWritesHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=JoinedWritesHttpToolsProtocol)``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control keeps the real transport (pause/resume reading); writes go through the joiner.
        self.transport = _JoinedWrites(transport, self.loop)  # type: ignore[assignment]
