"""Fast fake Hive and fake Evolution servers for the benchmarks, run in their own process.

Both are raw asyncio Protocols speaking just enough HTTP/1.1 (keep-alive, Content-Length bodies),
so their own cost stays far below the hub's: they share the machine's 2 cores with it.

Run as ``python -m bench.fakes``; the process prints one JSON line with the bound ports on stdout.
Control endpoints (on either port):

* ``GET  /_stats``            counts and, with ``?records=1``, every recorded request
* ``POST /_reset``            forget records and counts
* ``POST /_config``           ``{"hive_delay": {"tenant": seconds}, "hive_default_delay": seconds}``
* ``GET  /_watch``            a stream of ``evolution_receive_time\\thive_seconds\\ttext\\n`` lines, one per
                              text delivered to Evolution, so a driver can pace a closed loop on replies
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec


class _Content(msgspec.Struct):
    text: str | None = None


class _HiveMessage(msgspec.Struct):
    id: str = ""
    content: _Content = msgspec.field(default_factory=_Content)


class _HiveBody(msgspec.Struct):
    tenant: str = ""
    message: _HiveMessage = msgspec.field(default_factory=_HiveMessage)


class _SendText(msgspec.Struct):
    number: str = ""
    text: str | None = None


class _CreateBody(msgspec.Struct):
    instanceName: str = ""  # Evolution's field name


# Decoders skip every field not declared above, which keeps parsing of 2-10 KB Hive bodies cheap.
_hive_decoder = msgspec.json.Decoder(_HiveBody)
_send_decoder = msgspec.json.Decoder(_SendText)
_create_decoder = msgspec.json.Decoder(_CreateBody)
_encode = msgspec.json.encode

_REASONS = {200: b"OK", 201: b"Created", 404: b"Not Found", 400: b"Bad Request"}


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"OK")),
            b"content-type: ",
            content_type,
            b"\r\ncontent-length: %d\r\n\r\n" % len(body),
            body,
        )
    )


class State:
    """Everything both fakes record; lives in the fakes process only."""

    def __init__(self) -> None:
        self.hive_delay: dict[str, float] = {}
        self.hive_default_delay = 0.0
        self.reset()
        self.watchers: list[asyncio.Transport] = []
        self._key_ids = itertools.count(1)

    def reset(self) -> None:
        # Hive: (receive time, answer time, tenant, message id, text); Evolution: (receive time, instance, text).
        self.hive: list[tuple[float, float, str, str, str]] = []
        self.evolution: list[tuple[float, str, str]] = []
        self.other = 0
        #: Hive's own time per text, handed on with the matching Evolution record.
        self.hive_time: dict[str, float] = {}

    def next_key_id(self) -> str:
        return f"3EB0{next(self._key_ids):016X}"

    def stats(self, records: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hive": {
                "count": len(self.hive),
                "first": self.hive[0][0] if self.hive else None,
                "last": self.hive[-1][1] if self.hive else None,
            },
            "evolution": {
                "count": len(self.evolution),
                "first": self.evolution[0][0] if self.evolution else None,
                "last": self.evolution[-1][0] if self.evolution else None,
            },
            "other": self.other,
        }
        if records:
            out["hive"]["records"] = self.hive
            out["evolution"]["records"] = self.evolution
        return out


class HttpProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered strictly in order (no pipelining overlap)."""

    def __init__(self, state: State, handler: Callable[[HttpProtocol, bytes, bytes, bytes, float], None]) -> None:
        self.state = state
        self.handler = handler
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed answer is pending: hold later requests until it is written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._drain()

    def _drain(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = 0
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lowered.find(b"\r\n", at + 2)
                length = int(lowered[at + 17 : stop if stop >= 0 else len(lowered)].strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            received = time.time()
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            line_end = head.find(b"\r\n")
            request_line = head[: line_end if line_end >= 0 else len(head)]
            parts = request_line.split(b" ")
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
            self.handler(self, method, target, body, received)

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def release(self) -> None:
        self.busy = False
        self._drain()


class Fakes:
    def __init__(self, state: State) -> None:
        self.state = state

    # --- control --------------------------------------------------------------------------------
    def control(self, conn: HttpProtocol, method: bytes, target: bytes, body: bytes) -> bool:
        if not target.startswith(b"/_"):
            return False
        state = self.state
        if target.startswith(b"/_stats"):
            conn.send(_response(200, _encode(state.stats(b"records=1" in target))))
        elif target.startswith(b"/_reset"):
            state.reset()
            conn.send(_response(200, b"{}"))
        elif target.startswith(b"/_config"):
            conf = json.loads(body or b"{}")
            if "hive_delay" in conf:
                state.hive_delay = {str(k): float(v) for k, v in conf["hive_delay"].items()}
            if "hive_default_delay" in conf:
                state.hive_default_delay = float(conf["hive_default_delay"])
            conn.send(_response(200, b"{}"))
        elif target.startswith(b"/_watch") and conn.transport is not None:
            # Headers only, then one line per delivered text until the client hangs up.
            conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n")
            state.watchers.append(conn.transport)
            conn.busy = True  # nothing else on this connection
        else:
            conn.send(_response(404, b'{"error":"unknown control path"}'))
        return True

    # --- Hive -----------------------------------------------------------------------------------
    def hive(self, conn: HttpProtocol, method: bytes, target: bytes, body: bytes, received: float) -> None:
        if self.control(conn, method, target, body):
            return
        if not target.startswith(b"/process"):
            self.state.other += 1
            conn.send(_response(404, b'{"detail":"not found"}'))
            return
        try:
            parsed = _hive_decoder.decode(body)
        except msgspec.DecodeError:
            conn.send(_response(400, b'{"detail":"bad json"}'))
            return
        text = parsed.message.content.text or ""
        delay = self.state.hive_delay.get(parsed.tenant, self.state.hive_default_delay)
        # The reply echoes the text, so the driver can join Evolution's record to the webhook it sent.
        answer = _response(200, _encode({"reply": text}))
        if delay <= 0:
            conn.send(answer)
            self._hive_done(parsed, text, received)
            return
        conn.busy = True
        asyncio.get_running_loop().call_later(delay, self._hive_later, conn, answer, parsed, text, received)

    def _hive_later(self, conn: HttpProtocol, answer: bytes, parsed: _HiveBody, text: str, received: float) -> None:
        conn.send(answer)
        self._hive_done(parsed, text, received)
        conn.release()

    def _hive_done(self, parsed: _HiveBody, text: str, received: float) -> None:
        done = time.time()
        self.state.hive.append((received, done, parsed.tenant, parsed.message.id, text))
        if self.state.watchers:
            self.state.hive_time[text] = done - received

    # --- Evolution ------------------------------------------------------------------------------
    def evolution(self, conn: HttpProtocol, method: bytes, target: bytes, body: bytes, received: float) -> None:
        if self.control(conn, method, target, body):
            return
        state = self.state
        if target.startswith((b"/message/sendText/", b"/message/sendMedia/")):
            instance = target.rsplit(b"/", 1)[-1].decode()
            try:
                parsed = _send_decoder.decode(body)
            except msgspec.DecodeError:
                conn.send(_response(400, b'{"message":"bad json"}'))
                return
            text = parsed.text or ""
            state.evolution.append((received, instance, text))
            key = state.next_key_id()
            conn.send(
                _response(
                    201,
                    b'{"key":{"remoteJid":"%s@s.whatsapp.net","fromMe":true,"id":"%s"},'
                    b'"messageTimestamp":%d,"status":"PENDING"}'
                    % (parsed.number.encode(), key.encode(), int(received)),
                )
            )
            if state.watchers:
                hive_s = state.hive_time.pop(text, 0.0)
                line = f"{received:.6f}\t{hive_s:.6f}\t{text.replace(chr(10), ' ')}\n".encode()
                for transport in list(state.watchers):
                    if transport.is_closing():
                        state.watchers.remove(transport)
                    else:
                        transport.write(line)
            return
        state.other += 1
        if target.startswith(b"/instance/create"):
            name = _create_decoder.decode(body).instanceName if body else "bench"
            answer = {
                "instance": {"instanceName": name, "instanceId": f"bench-{name}", "status": "connecting"},
                "hash": f"TOKEN-{name}",
                "qrcode": {"code": "2@x", "base64": "data:image/png;base64,iVBORw0KGgo=", "pairingCode": None},
            }
            conn.send(_response(201, _encode(answer)))
        elif target.startswith(b"/instance/connectionState/"):
            conn.send(_response(200, b'{"instance":{"state":"open"}}'))
        else:
            conn.send(_response(200, b"{}"))


async def serve(host: str, hive_port: int, evolution_port: int) -> None:
    state = State()
    fakes = Fakes(state)
    loop = asyncio.get_running_loop()
    hive = await loop.create_server(lambda: HttpProtocol(state, fakes.hive), host, hive_port, backlog=1024)
    evo = await loop.create_server(lambda: HttpProtocol(state, fakes.evolution), host, evolution_port, backlog=1024)
    ports = {
        "hive_port": hive.sockets[0].getsockname()[1],
        "evolution_port": evo.sockets[0].getsockname()[1],
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    hive.close()
    evo.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fakes", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--hive-port", type=int, default=0)
    parser.add_argument("--evolution-port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with the hub's dependencies
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.hive_port, args.evolution_port))


if __name__ == "__main__":
    main()
