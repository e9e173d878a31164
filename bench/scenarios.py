"""The six scenarios of issue 3. Each starts its own hub(s), repeats short runs and keeps the median.

Every scenario returns a :class:`Section`: the table for docs/performance.md, the target checks,
notes about anything abnormal (non-2xx, socket errors, lost replies, hub log errors) and the raw
figures of every repetition for docs/performance.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import driver, procs
from bench.backends import Backend, history_tenant_ids
from bench.driver import LoadResult, ReplyWatch, Stream, Target, WebhookSource
from bench.stats import median

SCENARIOS = ("ceiling", "ingest", "e2e", "backlog", "history", "isolation")


@dataclass
class Plan:
    """Sizes and durations; :meth:`quick` is the smoke-check variant."""

    reps: int = 3
    ceiling_s: float = 5
    ingest_s: float = 5
    ingest_levels: tuple[int, ...] = (1, 16, 64, 256)
    tenants: int = 8
    chats: int = 5000
    e2e_warmup_s: float = 2
    e2e_s: float = 6
    e2e_concurrency: int = 64
    e2e_rate: float = 1000
    e2e_floor_s: float = 3
    backlog_messages: int = 100_000
    backlog_fill_timeout_s: float = 150
    backlog_drain_timeout_s: float = 200
    history_tenants: int = 1000
    history_per_tenant: int = 1000
    history_s: float = 5
    history_levels: tuple[int, ...] = (1, 16)
    isolation_rate: float = 20
    isolation_warmup_s: float = 3
    isolation_s: float = 8
    isolation_slow_s: float = 5.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            reps=1,
            ceiling_s=1,
            ingest_s=1,
            tenants=3,
            chats=200,
            e2e_warmup_s=0.5,
            e2e_s=1.5,
            e2e_rate=200,
            e2e_floor_s=1,
            backlog_messages=2000,
            backlog_fill_timeout_s=20,
            backlog_drain_timeout_s=30,
            history_tenants=20,
            history_per_tenant=200,
            history_s=1,
            isolation_rate=10,
            isolation_warmup_s=0.5,
            isolation_s=2,
            isolation_slow_s=2.0,
        )


@dataclass
class Check:
    name: str
    target: str
    value: str
    passed: bool | None  # None: could not be judged (scenario failed or no data)


@dataclass
class Section:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Context:
    """What the scenarios of one ``python -m bench`` run share: plan, backend, fakes, work dirs."""

    def __init__(self, plan: Plan, backend: Backend, workdir: Path, cache_dir: Path, fakes: procs.Fakes) -> None:
        self.plan = plan
        self.backend = backend
        self.workdir = workdir
        self.cache_dir = cache_dir
        self.fakes = fakes
        self.ceiling: float | None = None
        self.use_wrk = driver.wrk_path() is not None
        self._dirs = 0

    def data_dir(self, label: str) -> Path:
        self._dirs += 1
        path = self.workdir / f"{self._dirs:02d}-{label}"
        path.mkdir(parents=True)
        return path

    def hub(self, label: str, *, workers: int | None, hive: bool, data_dir: Path | None = None) -> procs.Hub:
        data_dir = data_dir or self.data_dir(label)
        env = {
            **self.backend.hub_env(data_dir),
            "EVOLUTION_API_BASE_URL": self.fakes.evolution_url,
            "EVOLUTION_API_KEY": "bench-evolution-key",
            "OMNI_TO_HIVE_ENABLED": "true" if hive else "false",
            "HIVE_API_URL": self.fakes.hive_url,
            "HIVE_API_KEY": "bench-hive-key",
        }
        if workers is not None:
            env["OMNI_WORKERS"] = str(workers)
        return procs.Hub(data_dir, env)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def running(hub: procs.Hub) -> Iterator[procs.Hub]:
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def setup_targets(hub: procs.Hub, prefix: str, count: int) -> list[Target]:
    """Tenants with one WhatsApp instance each, created through the API (the fake Evolution answers)."""
    targets = []
    for i in range(count):
        tenant_id = f"{prefix}{i}" if count > 1 else prefix
        tenant = hub.create_tenant(tenant_id)
        hub.create_instance(tenant_id, f"{tenant_id}-wa")
        targets.append(Target(tenant=tenant_id, token=tenant["webhook_secret"], instance=f"{tenant_id}-wa"))
    return targets


# --- formatting helpers ---------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def rate(value: float) -> str:
    return f"{value:,.0f}"


def med(runs: list[dict[str, Any]], *path: str) -> float:
    """Median over repetitions of a (nested) figure."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return median(values)


def hub_log_notes(hub: procs.Hub, label: str) -> list[str]:
    """Warnings and errors the hub logged (JSON lines), counted by event; tracebacks counted too."""
    events: Counter[str] = Counter()
    tracebacks = 0
    for line in hub.logs().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                level = str(entry.get("level", "")).lower()
                if level in ("warning", "error", "critical"):
                    detail = entry.get("error") or entry.get("reason") or ""
                    events[f"{level} {entry.get('event')}" + (f" ({str(detail)[:120]})" if detail else "")] += 1
        elif line.startswith("Traceback"):
            tracebacks += 1
    notes = [f"{label}: hub logged {n} x {what}" for what, n in events.most_common(5)]
    if tracebacks:
        notes.append(f"{label}: hub log has {tracebacks} traceback(s) (see {hub.log_path})")
    return notes


def load_notes(label: str, result: LoadResult) -> list[str]:
    notes = []
    if result.non2xx:
        notes.append(f"{label}: {result.non2xx} non-2xx answers of {result.requests}")
    if result.socket_errors:
        notes.append(f"{label}: {result.socket_errors} socket errors/timeouts")
    if result.not_accepted > 0:
        notes.append(f"{label}: {result.not_accepted} 2xx answers were not 'accepted'")
    notes.extend(f"{label}: {n}" for n in result.notes)
    return notes


class CpuMeter:
    """The hub's CPU use over a run, as a share of one core (100% = one core busy)."""

    def __init__(self, hub: procs.Hub) -> None:
        self.pid = hub.pid
        self.cpu = procs.cpu_seconds(self.pid)
        self.wall = time.monotonic()

    def percent(self) -> float:
        wall = time.monotonic() - self.wall
        return 100 * (procs.cpu_seconds(self.pid) - self.cpu) / wall if wall > 0 else 0.0


# --- load helpers that pick wrk or the asyncio fallback ---------------------------------------------------


def load_health(ctx: Context, hub: procs.Hub, connections: int, seconds: float) -> LoadResult:
    if ctx.use_wrk:
        return driver.run_wrk(hub.url + "/health", driver.lua_plain(), connections, seconds)
    raw = driver.build_request("GET", "/health", procs.HOST)
    return driver.run_async(driver.closed_loop(procs.HOST, hub.port, lambda _: raw, connections, seconds))


def load_ingest(
    ctx: Context,
    hub: procs.Hub,
    targets: list[Target],
    chats: int,
    connections: int,
    seconds: float,
    *,
    limit: int = 0,
    stop_when: Callable[[], bool] | None = None,
) -> LoadResult:
    if ctx.use_wrk:
        threads = max(1, min(2, connections))
        script = driver.lua_ingest(targets, chats, per_thread_limit=math.ceil(limit / threads) if limit else 0)
        return driver.run_wrk(hub.url + "/", script, connections, seconds, stop_when=stop_when, poll_s=1.0)
    source = WebhookSource(targets, chats, procs.HOST)
    return driver.run_async(
        driver.closed_loop(
            procs.HOST, hub.port, lambda _: source.next()[1], connections, seconds, limit=limit, check_accepted=True
        )
    )


def load_history(ctx: Context, hub: procs.Hub, tenants: list[str], connections: int, seconds: float) -> LoadResult:
    if ctx.use_wrk:
        return driver.run_wrk(hub.url + "/", driver.lua_history(tenants, procs.ADMIN_KEY), connections, seconds)
    import random

    headers = {"x-api-key": procs.ADMIN_KEY}
    return driver.run_async(
        driver.closed_loop(
            procs.HOST,
            hub.port,
            lambda _: driver.build_request(
                "GET", f"/messages/history/{random.choice(tenants)}?limit=50", procs.HOST, headers
            ),
            connections,
            seconds,
        )
    )


def wait_for_empty_queue(hub: procs.Hub, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if hub.queue_depth() == 0:
            return True
        time.sleep(0.25)
    return False


# --- 1. ceiling -------------------------------------------------------------------------------------------


def measure_ceiling(ctx: Context, hub: procs.Hub) -> list[dict[str, Any]]:
    runs = []
    for rep in range(ctx.plan.reps):
        meter = CpuMeter(hub)
        result = load_health(ctx, hub, 64, ctx.plan.ceiling_s)
        runs.append({**result.as_dict(), "hub_cpu_pct": meter.percent()})
        log(f"  ceiling rep {rep + 1}: {result.ok_per_s:,.0f} req/s, p99 {result.latency_ms['p99']:.1f} ms")
    ctx.ceiling = med(runs, "ok_per_s")
    return runs


def ceiling(ctx: Context) -> Section:
    hub = ctx.hub("ceiling", workers=0, hive=False)
    with running(hub):
        runs = measure_ceiling(ctx, hub)
    notes = [n for r in runs for n in load_notes("ceiling", _as_load(r))] + hub_log_notes(hub, "ceiling")
    return Section(
        name="ceiling",
        title="1. Ceiling: GET /health at concurrency 64",
        columns=["concurrency", "requests/s", "p50 ms", "p99 ms", "max ms", "hub CPU", "non-2xx", "errors"],
        rows=[
            [
                "64",
                rate(med(runs, "ok_per_s")),
                ms(med(runs, "latency_ms", "p50")),
                ms(med(runs, "latency_ms", "p99")),
                ms(med(runs, "latency_ms", "max")),
                f"{med(runs, 'hub_cpu_pct'):.0f}%",
                str(sum(r["non2xx"] for r in runs)),
                str(sum(r["socket_errors"] for r in runs)),
            ]
        ],
        notes=notes,
        raw={"runs": runs, "ceiling_rps": ctx.ceiling},
    )


def _as_load(run: dict[str, Any]) -> LoadResult:
    fields = {k: run[k] for k in LoadResult.__dataclass_fields__}
    return LoadResult(**fields)


# --- 2. ingest ----------------------------------------------------------------------------------------------


def ingest(ctx: Context) -> Section:
    plan = ctx.plan
    notes: list[str] = []
    runs: dict[str, list[dict[str, Any]]] = {str(c): [] for c in plan.ingest_levels}
    hub = ctx.hub("ingest", workers=0, hive=False)
    ceiling_runs: list[dict[str, Any]] = []
    with running(hub):
        targets = setup_targets(hub, "ing", plan.tenants)
        if ctx.ceiling is None:
            log("  no ceiling measured in this run yet: measuring it on the ingest hub")
            ceiling_runs = measure_ceiling(ctx, hub)
        # Repetitions interleave the levels, so a slow drift (database growth, a neighbour's load)
        # spreads over all of them instead of biasing one.
        for rep in range(plan.reps):
            for c in plan.ingest_levels:
                meter = CpuMeter(hub)
                result = load_ingest(ctx, hub, targets, plan.chats, c, plan.ingest_s)
                runs[str(c)].append({**result.as_dict(), "hub_cpu_pct": meter.percent()})
                notes += load_notes(f"ingest c={c}", result)
                log(
                    f"  ingest c={c} rep {rep + 1}: {result.ok_per_s:,.0f} ack/s,"
                    f" p50 {result.latency_ms['p50']:.1f} p99 {result.latency_ms['p99']:.1f} ms"
                )
    notes += hub_log_notes(hub, "ingest")
    acknowledged = sum(r["ok"] for level in runs.values() for r in level)
    stored = ctx.backend.stored_messages(hub.data_dir)
    durable = stored >= acknowledged
    notes.append(
        f"durability: {acknowledged:,} webhooks acknowledged, {stored:,} messages in the database after the hub stopped"
        + ("" if durable else " -- FEWER THAN ACKNOWLEDGED")
    )

    # The same load with workers on and Hive enabled: ingest competing with forwarding for the core.
    hub2 = ctx.hub("ingest-workers", workers=None, hive=True)
    busy: list[dict[str, Any]] = []
    ctx.fakes.configure()
    with running(hub2):
        targets2 = setup_targets(hub2, "ingw", plan.tenants)
        for rep in range(plan.reps):
            meter = CpuMeter(hub2)
            result = load_ingest(ctx, hub2, targets2, plan.chats, 64, plan.ingest_s)
            depth = hub2.queue_depth()
            busy.append({**result.as_dict(), "hub_cpu_pct": meter.percent(), "queue_depth_after": depth})
            notes += load_notes("ingest c=64 workers on", result)
            log(f"  ingest c=64 workers+Hive rep {rep + 1}: {result.ok_per_s:,.0f} ack/s, queue after {depth}")
    notes += hub_log_notes(hub2, "ingest workers on")

    ceiling_rps = ctx.ceiling or 0.0
    rows = []
    for c in plan.ingest_levels:
        level = runs[str(c)]
        ack = med(level, "ok_per_s")
        rows.append(_ingest_row(str(c), "0 (ingest only)", level, ack, ceiling_rps))
    rows.append(_ingest_row("64", "50 + Hive", busy, med(busy, "ok_per_s"), ceiling_rps))
    c64 = runs.get("64", [])
    checks = []
    if c64:
        ack64, p99, ratio = med(c64, "ok_per_s"), med(c64, "latency_ms", "p99"), 0.0
        ratio = ack64 / ceiling_rps if ceiling_rps else 0.0
        checks = [
            Check("ingest c=64 acknowledged/s", ">= 5,000", rate(ack64), ack64 >= 5000),
            Check("ingest c=64 p99", "<= 50 ms", f"{ms(p99)} ms", p99 <= 50),
            Check("ingest c=64 share of ceiling", ">= 50%", f"{100 * ratio:.0f}%", ratio >= 0.5),
            Check(
                "ingest acknowledgements durable", "stored >= acknowledged", f"{stored:,} / {acknowledged:,}", durable
            ),
        ]
    return Section(
        name="ingest",
        title="2. Ingest: unique messages.upsert webhooks (1.4 KB), acknowledged after commit",
        columns=[
            "concurrency",
            "workers",
            "ack/s",
            "of ceiling",
            "p50 ms",
            "p99 ms",
            "max ms",
            "hub CPU",
            "non-2xx",
            "errors",
        ],
        rows=rows,
        checks=checks,
        notes=[f"{plan.tenants} tenants, {plan.chats} chats each; ceiling {rate(ceiling_rps)} req/s", *notes],
        raw={
            "runs": runs,
            "workers_on": busy,
            "ceiling_rps": ceiling_rps,
            "ceiling_runs": ceiling_runs,
            "acknowledged": acknowledged,
            "stored": stored,
        },
    )


def _ingest_row(c: str, workers: str, level: list[dict[str, Any]], ack: float, ceiling_rps: float) -> list[str]:
    return [
        c,
        workers,
        rate(ack),
        f"{100 * ack / ceiling_rps:.0f}%" if ceiling_rps else "-",
        ms(med(level, "latency_ms", "p50")),
        ms(med(level, "latency_ms", "p99")),
        ms(med(level, "latency_ms", "max")),
        f"{med(level, 'hub_cpu_pct'):.0f}%",
        str(sum(r["non2xx"] for r in level)),
        str(sum(r["socket_errors"] for r in level)),
    ]


# --- 3. end to end --------------------------------------------------------------------------------------------


def e2e(ctx: Context) -> Section:
    plan = ctx.plan
    notes: list[str] = []
    modes = ("closed c=1", f"closed c={plan.e2e_concurrency}", f"open {plan.e2e_rate:g}/s")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    ctx.fakes.configure()
    hub = ctx.hub("e2e", workers=None, hive=True)
    with running(hub):
        targets = setup_targets(hub, "e2e", plan.tenants)
        source = WebhookSource(targets, plan.chats, procs.HOST)

        async def one(mode: str) -> driver.FlowResult:
            watch = ReplyWatch(procs.HOST, ctx.fakes.evolution_port)
            await watch.start()
            try:
                if mode == modes[0]:
                    return await driver.e2e_closed_loop(
                        procs.HOST, hub.port, watch, source, 1, 0.5, plan.e2e_floor_s, reply_timeout_s=10
                    )
                if mode == modes[1]:
                    return await driver.e2e_closed_loop(
                        procs.HOST, hub.port, watch, source, plan.e2e_concurrency, plan.e2e_warmup_s, plan.e2e_s
                    )
                stream = Stream(mode, targets, plan.e2e_rate)
                return (
                    await driver.open_loop(
                        procs.HOST, hub.port, watch, source, [stream], plan.e2e_warmup_s, plan.e2e_s, settle_s=15
                    )
                )[0]
            finally:
                await watch.close()

        for rep in range(plan.reps):
            for mode in modes:
                meter = CpuMeter(hub)
                flow: driver.FlowResult = driver.run_async(one(mode))
                cpu = meter.percent()
                runs[mode].append({**flow.as_dict(), "hub_cpu_pct": cpu})
                log(
                    f"  e2e {mode} rep {rep + 1}: {flow.delivered_per_s:,.0f} replies/s, added p50"
                    f" {flow.added_ms['p50']:.1f} p99 {flow.added_ms['p99']:.1f} ms, missing {flow.missing}"
                )
                if flow.ack_errors:
                    notes.append(f"e2e {mode}: {flow.ack_errors} webhooks not acknowledged with 200")
                if flow.missing:
                    notes.append(f"e2e {mode} rep {rep + 1}: {flow.missing} of {flow.sent} replies never arrived")
                if not wait_for_empty_queue(hub, 60):
                    notes.append(f"e2e {mode} rep {rep + 1}: queue not empty 60 s after the run")
    notes += hub_log_notes(hub, "e2e")
    rows = []
    for mode in modes:
        level = runs[mode]
        rows.append(
            [
                mode,
                rate(med(level, "offered_per_s")) if mode.startswith("open") else "-",
                rate(med(level, "delivered_per_s")),
                ms(med(level, "added_ms", "p50")),
                ms(med(level, "added_ms", "p99")),
                ms(med(level, "added_ms", "max")),
                f"{med(level, 'hub_cpu_pct'):.0f}%",
                str(sum(r["missing"] for r in level)),
                str(sum(r["ack_errors"] for r in level)),
            ]
        )
    closed = runs[modes[1]]
    opened = runs[modes[2]]
    sustained = med(closed, "delivered_per_s")
    p50_open = med(opened, "added_ms", "p50")
    open_rate = med(opened, "delivered_per_s")
    checks = [
        Check(
            f"end to end sustained (closed c={plan.e2e_concurrency})",
            ">= 1,000 msg/s",
            rate(sustained),
            sustained >= 1000,
        ),
        Check(
            f"end to end p50 added latency at {plan.e2e_rate:g} msg/s offered",
            "<= 10 ms",
            f"{ms(p50_open)} ms ({rate(open_rate)} delivered/s)",
            p50_open <= 10 and open_rate >= 0.95 * plan.e2e_rate,
        ),
    ]
    return Section(
        name="e2e",
        title="3. End to end: webhook -> Hive (instant fake) -> reply at the fake Evolution",
        columns=[
            "load",
            "offered/s",
            "replies/s",
            "added p50 ms",
            "added p99 ms",
            "added max ms",
            "hub CPU",
            "missing",
            "ack errors",
        ],
        rows=rows,
        checks=checks,
        notes=[
            "added latency = fake Evolution receive time - webhook send time - fake Hive's own time;"
            " closed c=N keeps N conversations each waiting for its reply (latency includes queueing:"
            " about N / throughput); open = fixed send rate regardless of the hub (the target check)",
            *notes,
        ],
        raw={"runs": runs},
    )


# --- 4. backlog -----------------------------------------------------------------------------------------------


def backlog(ctx: Context) -> Section:
    plan = ctx.plan
    notes: list[str] = []
    n = plan.backlog_messages
    data_dir = ctx.data_dir("backlog")
    filler = ctx.hub("backlog-fill", workers=0, hive=True, data_dir=data_dir)
    with running(filler):
        targets = setup_targets(filler, "blg", 10)
        chats = max(10, n // 100)  # about 10 messages per chat: per-chat order matters while draining
        started = time.monotonic()
        result = load_ingest(
            ctx,
            filler,
            targets,
            chats,
            64,
            plan.backlog_fill_timeout_s,
            limit=n,
            stop_when=lambda: filler.queue_depth() >= n,
        )
        fill_s = time.monotonic() - started
        depth = filler.queue_depth()
        notes += load_notes("backlog fill", result)
        log(f"  backlog: {depth:,} queued in {fill_s:.0f}s ({result.ok_per_s:,.0f} ack/s)")
    notes += hub_log_notes(filler, "backlog fill")
    if depth < n:
        notes.append(f"backlog: only {depth:,} of {n:,} messages queued within {plan.backlog_fill_timeout_s:.0f}s")

    ctx.fakes.configure()
    ctx.fakes.reset()
    drainer = ctx.hub("backlog-drain", workers=None, hive=True, data_dir=data_dir)
    drainer.log_path = data_dir / "hub-drain.log"
    samples: list[tuple[float, int, int, float]] = []
    spawned = time.time()
    with running(drainer):
        meter = CpuMeter(drainer)
        deadline = time.monotonic() + plan.backlog_drain_timeout_s
        drained = False
        while time.monotonic() < deadline:
            left = drainer.queue_depth()
            delivered = ctx.fakes.stats()["evolution"]["count"]
            samples.append((time.time() - spawned, left, delivered, drainer.rss_mb()))
            if left == 0:
                drained = True
                break
            time.sleep(1.0)
        peak = drainer.peak_rss_mb()
        cpu = meter.percent()
        final_left = drainer.queue_depth()
    notes += hub_log_notes(drainer, "backlog drain")
    stats = ctx.fakes.stats()
    delivered = stats["evolution"]["count"]
    first = stats["hive"]["first"] or spawned
    last = stats["evolution"]["last"] or time.time()
    elapsed = max(1e-6, last - first)
    drain_rate = delivered / elapsed
    if not drained:
        notes.append(
            f"backlog: queue not empty after {plan.backlog_drain_timeout_s:.0f}s ({final_left:,} jobs left);"
            " the rate is over the part drained"
        )
    log(f"  backlog drain: {delivered:,} replies in {elapsed:.0f}s = {drain_rate:,.0f}/s, peak RSS {peak:.0f} MB")
    rows = [
        [
            f"{depth:,}",
            f"{rate(result.ok_per_s)} ack/s",
            f"{elapsed:.0f} s" + ("" if drained else " (cut off)"),
            rate(drain_rate),
            rate(2 * drain_rate),
            f"{cpu:.0f}%",
            f"{peak:.0f}",
        ]
    ]
    return Section(
        name="backlog",
        title=f"4. Backlog: {n:,} queued messages drained (workers on, Hive instant)",
        columns=["queued", "fill rate", "drain time", "messages/s", "jobs/s", "hub CPU", "peak RSS MB"],
        rows=rows,
        checks=[Check("backlog peak RSS", "<= 300 MB", f"{peak:.0f} MB", peak <= 300)],
        notes=[
            "one run (not 3: it is the long one); drain time = first Hive request to last reply delivered;"
            " each message is 2 jobs (route, deliver)",
            *notes,
        ],
        raw={
            "queued": depth,
            "fill": result.as_dict(),
            "fill_s": fill_s,
            "delivered": delivered,
            "drain_s": elapsed,
            "drain_rate": drain_rate,
            "drained": drained,
            "peak_rss_mb": peak,
            "hub_cpu_pct": cpu,
            "samples": samples,
        },
    )


# --- 5. history --------------------------------------------------------------------------------------------------


def history(ctx: Context) -> Section:
    plan = ctx.plan
    notes: list[str] = []
    data_dir = ctx.data_dir("history")
    env = ctx.backend.history_env(ctx.cache_dir, data_dir, plan.history_tenants, plan.history_per_tenant)
    hub = ctx.hub("history", workers=0, hive=False, data_dir=data_dir)
    hub.env.update(env)
    tenants = history_tenant_ids(plan.history_tenants)
    runs: dict[str, list[dict[str, Any]]] = {str(c): [] for c in plan.history_levels}
    with running(hub):
        page = hub.admin("GET", f"/messages/history/{tenants[0]}?limit=50")
        if len(page.get("messages", [])) != 50:
            notes.append(f"history: a page returned {len(page.get('messages', []))} messages, expected 50")
        for rep in range(plan.reps):
            for c in plan.history_levels:
                meter = CpuMeter(hub)
                result = load_history(ctx, hub, tenants, c, plan.history_s)
                runs[str(c)].append({**result.as_dict(), "hub_cpu_pct": meter.percent()})
                notes += load_notes(f"history c={c}", result)
                log(
                    f"  history c={c} rep {rep + 1}: {result.ok_per_s:,.0f} req/s,"
                    f" p50 {result.latency_ms['p50']:.1f} p99 {result.latency_ms['p99']:.1f} ms"
                )
    notes += hub_log_notes(hub, "history")
    shutil.rmtree(data_dir, ignore_errors=True)  # about 1 GB; the cached original stays
    rows = []
    checks = []
    for c in plan.history_levels:
        level = runs[str(c)]
        p99 = med(level, "latency_ms", "p99")
        rows.append(
            [
                str(c),
                rate(med(level, "ok_per_s")),
                ms(med(level, "latency_ms", "p50")),
                ms(p99),
                ms(med(level, "latency_ms", "max")),
                f"{med(level, 'hub_cpu_pct'):.0f}%",
                str(sum(r["non2xx"] for r in level)),
            ]
        )
        checks.append(Check(f"history p99 at concurrency {c}", "<= 20 ms", f"{ms(p99)} ms", p99 <= 20))
    total = plan.history_tenants * plan.history_per_tenant
    return Section(
        name="history",
        title=(
            f"5. History: GET /messages/history/{{tenant}}?limit=50,"
            f" {total:,} messages, {plan.history_tenants:,} tenants"
        ),
        columns=["concurrency", "requests/s", "p50 ms", "p99 ms", "max ms", "hub CPU", "non-2xx"],
        rows=rows,
        checks=checks,
        notes=["random tenant per request, admin key; database built directly in the hub's schema", *notes],
        raw={"runs": runs},
    )


# --- 6. isolation -------------------------------------------------------------------------------------------------


def isolation(ctx: Context) -> Section:
    plan = ctx.plan
    notes: list[str] = []
    variants = ("A fast (baseline)", f"A slow ({plan.isolation_slow_s:g} s)")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(plan.reps):
        for variant in variants:
            slow = variant != variants[0]
            ctx.fakes.configure({"iso-a": plan.isolation_slow_s} if slow else {})
            hub = ctx.hub("isolation", workers=None, hive=True)
            with running(hub):
                a = setup_targets(hub, "iso-a", 1)
                b = setup_targets(hub, "iso-b", 1)
                source = WebhookSource(a + b, 1000, procs.HOST)
                streams = [Stream("A", a, plan.isolation_rate), Stream("B", b, plan.isolation_rate)]

                async def go(
                    streams: list[Stream] = streams, source: WebhookSource = source, port: int = hub.port
                ) -> list[Any]:
                    watch = ReplyWatch(procs.HOST, ctx.fakes.evolution_port)
                    await watch.start()
                    try:
                        return await driver.open_loop(
                            procs.HOST,
                            port,
                            watch,
                            source,
                            streams,
                            plan.isolation_warmup_s,
                            plan.isolation_s,
                            settle_s=plan.isolation_slow_s + 5,
                        )
                    finally:
                        await watch.close()

                flow_a, flow_b = driver.run_async(go())
            notes += hub_log_notes(hub, f"isolation {variant}")
            runs[variant].append({"A": flow_a.as_dict(), "B": flow_b.as_dict()})
            log(
                f"  isolation {variant} rep {rep + 1}: B p50 {flow_b.added_ms['p50']:.1f} p99"
                f" {flow_b.added_ms['p99']:.1f} ms (missing {flow_b.missing}); A p50 {flow_a.added_ms['p50']:.0f} ms"
                f" (missing {flow_a.missing})"
            )
            if flow_b.missing:
                notes.append(
                    f"isolation {variant} rep {rep + 1}: {flow_b.missing} of B's {flow_b.sent} replies missing"
                )
            for flow in (flow_a, flow_b):
                if flow.ack_errors:
                    notes.append(f"isolation {variant}: {flow.label}: {flow.ack_errors} webhooks not acknowledged")
    ctx.fakes.configure()
    rows = []
    for variant in variants:
        level = runs[variant]
        rows.append(
            [
                variant,
                rate(med(level, "B", "delivered_per_s")),
                ms(med(level, "B", "added_ms", "p50")),
                ms(med(level, "B", "added_ms", "p99")),
                ms(med(level, "B", "added_ms", "max")),
                str(sum(r["B"]["missing"] for r in level)),
                ms(med(level, "A", "added_ms", "p50")),
                str(sum(r["A"]["missing"] for r in level)),
            ]
        )
    base = med(runs[variants[0]], "B", "added_ms", "p99")
    slow_p99 = med(runs[variants[1]], "B", "added_ms", "p99")
    bound = 1.5 * base + 5
    missing_b = sum(r["B"]["missing"] for r in runs[variants[1]])
    return Section(
        name="isolation",
        title=f"6. Isolation: tenants A and B at {plan.isolation_rate:g} msg/s each; Hive answers A slowly",
        columns=["variant", "B replies/s", "B p50 ms", "B p99 ms", "B max ms", "B missing", "A p50 ms", "A missing"],
        rows=rows,
        checks=[
            Check(
                "isolation: B's p99 with A slow",
                f"<= 1.5 x baseline + 5 ms ({ms(bound)} ms)",
                f"{ms(slow_p99)} ms (baseline {ms(base)} ms)",
                slow_p99 <= bound and missing_b == 0,
            )
        ],
        notes=[
            f"A slow keeps about {plan.isolation_rate * plan.isolation_slow_s:g} Hive calls in flight"
            " (rate x delay), against the hub's default of 50 workers; latencies are added latency as in 3.",
            *notes,
        ],
        raw={"runs": runs},
    )


RUNNERS: dict[str, Callable[[Context], Section]] = {
    "ceiling": ceiling,
    "ingest": ingest,
    "e2e": e2e,
    "backlog": backlog,
    "history": history,
    "isolation": isolation,
}


def failed_section(name: str, exc: BaseException) -> Section:
    return Section(
        name=name,
        title=f"{SCENARIOS.index(name) + 1}. {name}: FAILED",
        columns=["error"],
        rows=[[f"{type(exc).__name__}: {str(exc)[:300]}"]],
        checks=[Check(name, "scenario ran", "failed", None)],
        notes=[f"{name} failed: {type(exc).__name__}: {exc}"[:2000]],
    )


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="omni-bench-"))
