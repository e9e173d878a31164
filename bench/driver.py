"""Load generation: wrk with generated Lua scripts where present, else a raw-asyncio driver.

wrk (C, epoll) is used for every "how fast can it answer" run, because a Python client on the same
2 cores would be the bottleneck. The end-to-end and isolation scenarios need the send time of each
message, which wrk's Lua cannot hand out cheaply, so they use the asyncio driver here (raw streams,
keep-alive; not httpx, which costs more CPU per request than the hub does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from bench import payloads
from bench.stats import percentiles

T = TypeVar("T")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class Target:
    """Where a tenant's webhooks go and how they authenticate."""

    tenant: str
    token: str
    instance: str

    @property
    def path(self) -> str:
        return f"/webhooks/evolution/{self.tenant}"


@dataclass
class LoadResult:
    """One load run: counts and the latency distribution of answered requests (milliseconds)."""

    driver: str
    connections: int
    duration_s: float
    requests: int
    ok: int  # 2xx answers
    non2xx: int
    socket_errors: int
    latency_ms: dict[str, float]
    #: Webhook answers whose status was not "accepted" (e.g. "duplicate"); -1 when not checked.
    not_accepted: int = -1
    notes: list[str] = field(default_factory=list)

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok_per_s"] = round(self.ok_per_s, 1)
        return out


def wrk_path() -> str | None:
    return shutil.which("wrk")


# --- wrk -------------------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local threads = {}
local nthreads = 0
ok2xx, other, notacc, limit = 0, 0, 0, 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok2xx = ok2xx + 1
    if CHECK_ACCEPTED and not string.find(body, '"accepted"', 1, true) then notacc = notacc + 1 end
  else
    other = other + 1
  end
  if limit > 0 and ok2xx >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local ok, bad, na = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok2xx"); bad = bad + t:get("other"); na = na + t:get("notacc")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"ok":%d,"non2xx":%d,"not_accepted":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d}\n',
    summary.requests, summary.duration, ok, bad, na, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
"""


def _lua_str(text: str) -> str:
    """A Lua long-bracket string literal that holds ``text`` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_plain(check_accepted: bool = False) -> str:
    """A script that only counts answers (wrk sends its static request)."""
    return f"CHECK_ACCEPTED = {str(check_accepted).lower()}\n{_LUA_COMMON}"


def lua_ingest(targets: Sequence[Target], chats: int, per_thread_limit: int = 0) -> str:
    """Unique ``messages.upsert`` webhooks, round-robin over tenants, spread over ``chats`` chats per tenant."""
    parts = ", ".join(_lua_str(p) for p in payloads.template_parts())
    rows = ",\n".join(
        f"  {{path={_lua_str(t.path)}, token={_lua_str(t.token)}, instance={_lua_str(t.instance)}}}" for t in targets
    )
    tag = f"{random.getrandbits(24):06X}"  # unique per run: key ids never collide with earlier runs
    return f"""CHECK_ACCEPTED = true
{_LUA_COMMON}
limit = {per_thread_limit}
local parts = {{{parts}}}
local tenants = {{
{rows}
}}
local ntenants = #tenants
local nchats = {chats}
local filler = {_lua_str(payloads.FILLER)}
local headers = {{["Content-Type"] = "application/json"}}
local n = 0

function request()
  n = n + 1
  local me = tid or 0
  local t = tenants[(n + me) % ntenants + 1]
  -- n // ntenants: every tenant cycles through all its chats (lanes = tenants x chats)
  local chat = (math.floor(n / ntenants) * 7919 + me * 104729) % nchats
  local jid = string.format("55119%08d@s.whatsapp.net", chat)
  local kid = string.format("3EB0{tag}%02X%08X", me, n)
  headers["x-omni-webhook-token"] = t.token
  return wrk.format("POST", t.path, headers,
    parts[1] .. t.instance .. parts[2] .. jid .. parts[3] .. kid .. parts[4] .. kid .. " " .. filler .. parts[5])
end
"""


def lua_history(tenants: Sequence[str], api_key: str, limit: int = 50) -> str:
    """``GET /messages/history/{tenant}?limit=N`` over random tenants, with the admin key."""
    rows = ", ".join(_lua_str(t) for t in tenants)
    return f"""CHECK_ACCEPTED = false
{_LUA_COMMON}
local tenants = {{{rows}}}
local headers = {{["x-api-key"] = {_lua_str(api_key)}}}

function init(args)
  math.randomseed((tid or 0) * 7919 + os.time())
end

function request()
  local t = tenants[math.random(#tenants)]
  return wrk.format("GET", "/messages/history/" .. t .. "?limit={limit}", headers)
end
"""


def run_wrk(
    url: str,
    script: str,
    connections: int,
    duration_s: float,
    *,
    stop_when: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
    timeout_s: int = 30,
) -> LoadResult:
    """Run wrk once; ``stop_when`` (polled) ends the run early with SIGINT, which wrk reports like a normal end."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk not found")
    threads = max(1, min(2, connections))  # two cores: more wrk threads would only steal the hub's CPU
    from bench import procs  # local: procs imports nothing from here, but keep the driver importable alone

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
        script_path = fh.name
    try:
        cmd = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s}s",
            "--latency",
            "-s",
            script_path,
            url,
        ]
        proc = procs.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if stop_when is not None:
            while proc.poll() is None:
                time.sleep(poll_s)
                if stop_when():
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
                    break
        output, _ = proc.communicate(timeout=duration_s + 60)
        procs.forget(proc)
    finally:
        os.unlink(script_path)
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}):\n{output}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    result = LoadResult(
        driver="wrk",
        connections=connections,
        duration_s=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        ok=raw["ok"],
        non2xx=raw["non2xx"],
        socket_errors=socket_errors,
        latency_ms={
            "p50": raw["p50"] / 1000,
            "p90": raw["p90"] / 1000,
            "p99": raw["p99"] / 1000,
            "p99.9": raw["p99.9"] / 1000,
            "max": raw["max"] / 1000,
        },
        not_accepted=raw["not_accepted"] if "CHECK_ACCEPTED = true" in script else -1,
    )
    if socket_errors:
        result.notes.append(
            f"wrk socket errors: connect {raw['connect']}, read {raw['read']}, write {raw['write']},"
            f" timeout {raw['timeout']}"
        )
    return result


# --- raw asyncio HTTP/1.1 client ------------------------------------------------------------------------


def build_request(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class HttpConnection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.stale_retries = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        reused = self.writer is not None and not self.writer.is_closing()
        if not reused:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # The server closed an idle keep-alive connection (uvicorn: after 5 s) just as we reused it;
            # nothing of an answer came back, so the request was not handled: resend on a fresh one,
            # as every HTTP client does. A fresh connection failing is a real error.
            if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                raise
            self.close()
            self.stale_retries += 1
            await self.connect()
            assert self.reader is not None and self.writer is not None
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = lowered.find(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(lowered[at + 17 : stop]))
        elif b"transfer-encoding: chunked" in lowered:
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(c[:-2] for c in chunks)
        else:
            body = await self.reader.read()
            self.close()
        if b"\r\nconnection: close" in lowered:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _latency_summary(samples_ms: list[float]) -> dict[str, float]:
    values = percentiles(samples_ms, PERCENTILES)
    out = {f"p{p:g}": values[p] for p in PERCENTILES}
    out["max"] = max(samples_ms) if samples_ms else 0.0
    return out


async def closed_loop(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    connections: int,
    duration_s: float,
    *,
    limit: int = 0,
    check_accepted: bool = False,
) -> LoadResult:
    """The wrk stand-in: ``connections`` clients, each sending its next request as soon as one is answered."""
    latencies: list[float] = []
    counts = {"ok": 0, "non2xx": 0, "errors": 0, "not_accepted": 0, "seq": 0}
    start = time.perf_counter()
    deadline = start + duration_s

    async def client() -> None:
        conn = HttpConnection(host, port)
        while time.perf_counter() < deadline and not (limit and counts["seq"] >= limit):
            counts["seq"] += 1
            raw = make_request(counts["seq"])
            sent = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                counts["errors"] += 1
                conn.close()
                continue
            latencies.append((time.perf_counter() - sent) * 1000)
            if 200 <= status < 300:
                counts["ok"] += 1
                if check_accepted and b'"accepted"' not in body:
                    counts["not_accepted"] += 1
            else:
                counts["non2xx"] += 1
        conn.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return LoadResult(
        driver="asyncio",
        connections=connections,
        duration_s=elapsed,
        requests=counts["ok"] + counts["non2xx"],
        ok=counts["ok"],
        non2xx=counts["non2xx"],
        socket_errors=counts["errors"],
        latency_ms=_latency_summary(latencies),
        not_accepted=counts["not_accepted"] if check_accepted else -1,
    )


class WebhookSource:
    """Unique webhooks over the given tenants and chats; ``text`` (the join key) is unique per run."""

    def __init__(self, targets: Sequence[Target], chats: int, host: str) -> None:
        self.targets = list(targets)
        self.chats = chats
        self.host = host
        self.tag = f"{random.getrandbits(32):08X}"
        self.seq = 0

    def next(self, target: Target | None = None) -> tuple[str, bytes]:
        self.seq += 1
        n = self.seq
        t = target or self.targets[n % len(self.targets)]
        chat = ((n // len(self.targets)) * 7919) % self.chats
        kid = f"3EB0{self.tag}{n:08X}"
        text = f"{kid} {payloads.FILLER}"
        body = payloads.upsert(t.instance, payloads.phone_jid(chat), kid, text)
        headers = {"content-type": "application/json", "x-omni-webhook-token": t.token}
        return text, build_request("POST", t.path, self.host, headers, body)


# --- replies seen by the fake Evolution ---------------------------------------------------------------


class ReplyWatch:
    """Follows the fakes' ``/_watch`` stream: when each text reached Evolution, and Hive's own time for it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.seen: dict[str, tuple[float, float]] = {}
        self.waiters: dict[str, asyncio.Future[tuple[float, float]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        writer.write(build_request("GET", "/_watch", self.host))
        await reader.readuntil(b"\r\n\r\n")
        self._writer = writer
        self._task = asyncio.create_task(self._follow(reader))

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            received, hive_s, text = line.decode().rstrip("\n").split("\t", 2)
            record = (float(received), float(hive_s))
            self.seen[text] = record
            waiter = self.waiters.pop(text, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(record)

    def expect(self, text: str) -> asyncio.Future[tuple[float, float]]:
        future: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        if text in self.seen:
            future.set_result(self.seen[text])
        else:
            self.waiters[text] = future
        return future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class FlowResult:
    """End-to-end figures for one stream of messages (webhook in -> reply at the fake Evolution)."""

    label: str
    sent: int  # acknowledged webhooks sent in the measured window
    ack_errors: int  # webhooks the hub did not answer with 200 (status or socket error)
    delivered_per_s: float  # replies that reached Evolution per second of the measured window
    replied: int  # measured-window messages whose reply arrived
    missing: int  # measured-window messages whose reply did not arrive before the driver gave up
    added_ms: dict[str, float]  # Evolution receive - webhook send - Hive's own time
    offered_per_s: float = 0.0
    max_send_lag_ms: float = 0.0
    #: Replies were missing: their latency is counted as the time waited, so percentiles are lower bounds.
    lower_bound: bool = False
    #: Webhook acknowledgement latency (send -> 200) of the measured window.
    ack_ms: dict[str, float] = field(default_factory=dict)
    #: Open loop only: sends skipped because the driver already had ``max_connections`` webhooks unanswered.
    skipped: int = 0
    #: What the failed acknowledgements were: HTTP status, or the socket error's type name.
    ack_failures: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flow_result(
    label: str,
    sends: list[tuple[float, str, float]],
    ack_errors: int,
    watch: ReplyWatch,
    window: tuple[float, float],
    offered: float = 0.0,
    lag: float = 0.0,
    skipped: int = 0,
    failures: dict[str, int] | None = None,
) -> FlowResult:
    lo, hi = window
    cutoff = time.time()
    texts = {text for _, text, _ in sends}
    delivered = sum(1 for text, (t, _) in watch.seen.items() if lo <= t <= hi and text in texts)
    added: list[float] = []
    missing = 0
    measured = [(t, text) for t, text, _ in sends if lo <= t <= hi]
    for sent_at, text in measured:
        seen = watch.seen.get(text)
        if seen is None:
            # Never delivered while the driver waited: leaving it out would flatter the percentiles.
            missing += 1
            added.append((cutoff - sent_at) * 1000)
        else:
            added.append((seen[0] - sent_at - seen[1]) * 1000)
    return FlowResult(
        label=label,
        sent=len(measured),
        ack_errors=ack_errors,
        delivered_per_s=delivered / (hi - lo) if hi > lo else 0.0,
        replied=len(measured) - missing,
        missing=missing,
        added_ms=_latency_summary(added),
        offered_per_s=offered,
        max_send_lag_ms=lag * 1000,
        lower_bound=missing > 0,
        ack_ms=_latency_summary([ack for t, _, ack in sends if lo <= t <= hi]),
        skipped=skipped,
        ack_failures=dict(failures or {}),
    )


async def e2e_closed_loop(
    host: str,
    port: int,
    watch: ReplyWatch,
    source: WebhookSource,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    reply_timeout_s: float = 30.0,
) -> FlowResult:
    """``concurrency`` conversations, each sending its next message once the previous reply was delivered."""
    sends: list[tuple[float, str, float]] = []
    errors = 0
    failures: Counter[str] = Counter()
    start = time.time()
    end = start + warmup_s + duration_s

    async def conversation() -> None:
        nonlocal errors
        conn = HttpConnection(host, port)
        while time.time() < end:
            text, raw = source.next()
            reply = watch.expect(text)
            sent_at = time.time()
            try:
                status, _ = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = 0
                failures[type(exc).__name__] += 1
                conn.close()
            if status != 200:
                if status:
                    failures[str(status)] += 1
                errors += 1
                watch.waiters.pop(text, None)
                continue
            sends.append((sent_at, text, (time.time() - sent_at) * 1000))
            try:
                await asyncio.wait_for(reply, max(0.1, min(reply_timeout_s, end + reply_timeout_s - time.time())))
            except TimeoutError:
                watch.waiters.pop(text, None)
        conn.close()

    await asyncio.gather(*(conversation() for _ in range(concurrency)))
    return _flow_result(
        f"closed c={concurrency}", sends, errors, watch, (start + warmup_s, end), failures=dict(failures)
    )


@dataclass
class Stream:
    """An open-loop stream: ``rate`` messages/s to ``targets`` (round-robin)."""

    label: str
    targets: Sequence[Target]
    rate: float


async def open_loop(
    host: str,
    port: int,
    watch: ReplyWatch,
    source: WebhookSource,
    streams: Sequence[Stream],
    warmup_s: float,
    duration_s: float,
    settle_s: float,
    max_connections: int = 512,
) -> list[FlowResult]:
    """Send at fixed rates whatever the hub does (no coordinated omission); then wait ``settle_s`` for replies."""
    pool: list[HttpConnection] = []
    start = time.time() + 0.05
    end = start + warmup_s + duration_s
    results: dict[str, dict[str, Any]] = {
        s.label: {"sends": [], "errors": 0, "skipped": 0, "lag": 0.0, "failures": Counter()} for s in streams
    }
    inflight: set[asyncio.Task[None]] = set()

    async def send(label: str, text: str, raw: bytes) -> None:
        conn = pool.pop() if pool else HttpConnection(host, port)
        sent_at = time.time()
        try:
            status, _ = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            status = 0
            results[label]["failures"][type(exc).__name__] += 1
        if status == 200:
            results[label]["sends"].append((sent_at, text, (time.time() - sent_at) * 1000))
            pool.append(conn)
        else:
            if status:
                results[label]["failures"][str(status)] += 1
            results[label]["errors"] += 1
            conn.close()

    async def schedule(stream: Stream) -> None:
        i = 0
        state = results[stream.label]
        while True:
            due = start + i / stream.rate
            if due >= end:
                return
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                state["lag"] = max(state["lag"], -delay)
            if len(inflight) >= max_connections:  # the hub stopped answering: do not open sockets forever
                state["skipped"] += 1
            else:
                target = stream.targets[i % len(stream.targets)]
                text, raw = source.next(target)
                task = asyncio.create_task(send(stream.label, text, raw))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            i += 1

    await asyncio.gather(*(schedule(s) for s in streams))
    if inflight:
        await asyncio.wait(list(inflight), timeout=settle_s)
    # Wait for the replies of the measured window (bounded).
    deadline = time.time() + settle_s
    while time.time() < deadline:
        pending = [text for s in results.values() for t, text, _ in s["sends"] if t >= start + warmup_s]
        if all(text in watch.seen for text in pending):
            break
        await asyncio.sleep(0.1)
    for conn in pool:
        conn.close()
    return [
        _flow_result(
            s.label,
            results[s.label]["sends"],
            results[s.label]["errors"],
            watch,
            (start + warmup_s, end),
            offered=s.rate,
            lag=results[s.label]["lag"],
            skipped=results[s.label]["skipped"],
            failures=dict(results[s.label]["failures"]),
        )
        for s in streams
    ]


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a driver coroutine on uvloop when available (lower per-request cost than the default loop)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
