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
    backlog_drain_timeout_s: float = 150
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
        #: Notes about the run itself (restarts, retries), added to the current scenario's section.
        self.events: list[str] = []
        self._hubs: list[procs.Hub] = []

    def data_dir(self, label: str) -> Path:
        self._dirs += 1
        path = self.workdir / f"{self._dirs:02d}-{label}"
        path.mkdir(parents=True)
        return path

    def hub(
        self,
        label: str,
        *,
        workers: int | None,
        hive: bool,
        data_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> procs.Hub:
        if (note := self.fakes.ensure_running()) is not None:
            self.events.append(note)
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
        env.update(extra_env or {})
        hub = procs.Hub(data_dir, env)
        self._hubs.append(hub)
        return hub

    def take_events(self) -> list[str]:
        """Run notes since the last call, including hub starts that needed a retry."""
        events = self.events + [
            f"a hub start failed and was retried: {failure}" for hub in self._hubs for failure in hub.start_failures
        ]
        self.events, self._hubs = [], []
        return events


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def running(hub: procs.Hub) -> Iterator[procs.Hub]:
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def default_workers() -> int:
    """The hub's default ``OMNI_WORKERS`` (hubs started with ``workers=None`` run with it)."""
    import msgspec

    from omni_core.config import Settings

    return int(next(f.default for f in msgspec.structs.fields(Settings) if f.name == "workers"))


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


def ms_lb(runs: list[dict[str, Any]], point: str, *path: str) -> str:
    """Median added latency; marked ">=" when replies were missing (their time waited was counted)."""
    value = med(runs, *path, "added_ms", point)
    lower = any(_dig(r, *path).get("lower_bound") for r in runs)
    return (">= " if lower else "") + ms(value)


def _dig(run: dict[str, Any], *path: str) -> dict[str, Any]:
    for key in path:
        run = run[key]
    return run


def med(runs: list[dict[str, Any]], *path: str) -> float:
    """Median over repetitions of a (nested) figure."""
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return median(values)


class LogTally:
    """Warnings and errors the hubs of one scenario logged, summed over all its hubs (one note each)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.events: Counter[str] = Counter()
        self.tracebacks = 0
        self.plain = 0
        self.example = ""
        self.where = ""

    def add(self, hub: procs.Hub) -> None:
        for line in hub.logs().splitlines():
            if not line.strip():
                continue
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    entry = json.loads(line)
                    level = str(entry.get("level", "")).lower()
                    if level in ("warning", "error", "critical"):
                        detail = entry.get("error") or entry.get("reason") or ""
                        self.events[
                            f"{level} {entry.get('event')}" + (f" ({str(detail)[:120]})" if detail else "")
                        ] += 1
            elif line.startswith("Traceback"):
                self.tracebacks += 1
                self.where = str(hub.log_path)
            elif not line.startswith(" "):
                # Not the hub's JSON log: a library logging on its own, past the hub's level and format.
                self.plain += 1
                self.example = self.example or line

    def notes(self) -> list[str]:
        notes = [f"{self.label}: hub logged {n:,} x {what}" for what, n in self.events.most_common(5)]
        if self.tracebacks:
            notes.append(f"{self.label}: hub logs have {self.tracebacks} traceback(s) (e.g. {self.where})")
        if self.plain:
            notes.append(
                f"{self.label}: hub wrote {self.plain:,} non-JSON log lines although OMNI_LOG_LEVEL=warning and"
                f" OMNI_LOG_FORMAT=json (one per outbound HTTP request), e.g. {self.example[:150]!r}"
            )
        return notes


def failure_kinds(flows: list[dict[str, Any]]) -> str:
    """``"503 x 2, ConnectionResetError x 1"`` from the flows' ``ack_failures``."""
    total: Counter[str] = Counter()
    for flow in flows:
        total.update(flow.get("ack_failures", {}))
    return ", ".join(f"{kind} x {n}" for kind, n in total.most_common()) or "no detail"


def per_cpu(runs: list[dict[str, Any]], key: str) -> str:
    """Median of ``key`` per second of hub CPU: a cost figure that holds up when others share the CPU."""
    values = [float(r[key]) / (r["hub_cpu_pct"] / 100) for r in runs if r.get("hub_cpu_pct", 0) > 1]
    return rate(median(values)) if values else "-"


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
    """The hub's CPU use over a run (with its writer process), as a share of one core (100% = one core busy)."""

    def __init__(self, hub: procs.Hub) -> None:
        self.pid = hub.pid
        self.cpu = procs.tree_cpu_seconds(self.pid)
        self.wall = time.monotonic()

    def percent(self) -> float:
        wall = time.monotonic() - self.wall
        return 100 * (procs.tree_cpu_seconds(self.pid) - self.cpu) / wall if wall > 0 else 0.0


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
    tally = LogTally("ceiling")
    tally.add(hub)
    notes = [n for r in runs for n in load_notes("ceiling", _as_load(r))] + tally.notes()
    return Section(
        name="ceiling",
        title="1. Ceiling: GET /health at concurrency 64",
        columns=[
            "concurrency",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "hub CPU",
            "per hub CPU-s",
            "non-2xx",
            "errors",
        ],
        rows=[
            [
                "64",
                rate(med(runs, "ok_per_s")),
                ms(med(runs, "latency_ms", "p50")),
                ms(med(runs, "latency_ms", "p99")),
                ms(med(runs, "latency_ms", "max")),
                f"{med(runs, 'hub_cpu_pct'):.0f}%",
                per_cpu(runs, "ok_per_s"),
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
    tally = LogTally("ingest")
    tally.add(hub)
    acknowledged = sum(r["ok"] for level in runs.values() for r in level)
    stored = ctx.backend.stored_messages(hub.data_dir)
    durable = stored >= acknowledged
    notes.append(
        f"durability: {acknowledged:,} webhooks acknowledged, {stored:,} messages in the database after the hub stopped"
        + ("" if durable else " -- FEWER THAN ACKNOWLEDGED")
    )

    # The same load with workers on and Hive enabled: ingest competing with forwarding for the core.
    ctx.fakes.configure()
    hub2 = ctx.hub("ingest-workers", workers=None, hive=True)
    busy = _ingest_c64_runs(ctx, hub2, "ingw", "workers+Hive", notes)
    tally.add(hub2)

    # SQLite only: the same c=64 load with the writer on a thread of the hub process
    # (OMNI_SQLITE_WRITER=thread), against the default writer process, in the same run.
    threaded: list[dict[str, Any]] = []
    if ctx.backend.name == "sqlite":
        hub3 = ctx.hub("ingest-thread-writer", workers=0, hive=False, extra_env={"OMNI_SQLITE_WRITER": "thread"})
        threaded = _ingest_c64_runs(ctx, hub3, "ingt", "thread writer", notes)
        tally.add(hub3)
    notes += tally.notes()

    ceiling_rps = ctx.ceiling or 0.0
    rows = []
    for c in plan.ingest_levels:
        level = runs[str(c)]
        ack = med(level, "ok_per_s")
        rows.append(_ingest_row(str(c), "0 (ingest only)", level, ack, ceiling_rps))
    if busy:
        rows.append(_ingest_row("64", f"{default_workers()} + Hive", busy, med(busy, "ok_per_s"), ceiling_rps))
    if threaded:
        rows.append(_ingest_row("64", "0, writer on a thread", threaded, med(threaded, "ok_per_s"), ceiling_rps))
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
            "ack per hub CPU-s",
            "non-2xx",
            "errors",
        ],
        rows=rows,
        checks=checks,
        notes=[f"{plan.tenants} tenants, {plan.chats} chats each; ceiling {rate(ceiling_rps)} req/s", *notes],
        raw={
            "runs": runs,
            "workers_on": busy,
            "thread_writer": threaded,
            "ceiling_rps": ceiling_rps,
            "ceiling_runs": ceiling_runs,
            "acknowledged": acknowledged,
            "stored": stored,
        },
    )


def _ingest_c64_runs(ctx: Context, hub: procs.Hub, prefix: str, label: str, notes: list[str]) -> list[dict[str, Any]]:
    """The c=64 ingest load, ``plan.reps`` times, on a hub of its own; a failure becomes a note
    (the figures already measured are kept)."""
    runs: list[dict[str, Any]] = []
    try:
        with running(hub):
            targets = setup_targets(hub, prefix, ctx.plan.tenants)
            for rep in range(ctx.plan.reps):
                meter = CpuMeter(hub)
                result = load_ingest(ctx, hub, targets, ctx.plan.chats, 64, ctx.plan.ingest_s)
                depth = hub.queue_depth()
                runs.append({**result.as_dict(), "hub_cpu_pct": meter.percent(), "queue_depth_after": depth})
                notes += load_notes(f"ingest c=64 {label}", result)
                log(f"  ingest c=64 {label} rep {rep + 1}: {result.ok_per_s:,.0f} ack/s, queue after {depth}")
    except Exception as exc:
        notes.append(f"ingest c=64 {label} failed: {type(exc).__name__}: {str(exc)[:300]}")
    return runs


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
        per_cpu(level, "ok_per_s"),
        str(sum(r["non2xx"] for r in level)),
        str(sum(r["socket_errors"] for r in level)),
    ]


# --- 3. end to end --------------------------------------------------------------------------------------------


def e2e(ctx: Context) -> Section:
    plan = ctx.plan
    notes: list[str] = []
    modes = ("closed c=1", f"closed c={plan.e2e_concurrency}", f"open {plan.e2e_rate:g}/s")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    tally = LogTally("e2e")
    ctx.fakes.configure()

    async def one(hub: procs.Hub, source: WebhookSource, mode: str) -> driver.FlowResult:
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
            stream = Stream(mode, source.targets, plan.e2e_rate)
            return (
                await driver.open_loop(
                    procs.HOST, hub.port, watch, source, [stream], plan.e2e_warmup_s, plan.e2e_s, settle_s=8
                )
            )[0]
        finally:
            await watch.close()

    for rep in range(plan.reps):
        # A fresh hub per repetition: an open-loop run the hub cannot keep up with leaves a backlog
        # that would otherwise have to drain (minutes) before the next run could start clean.
        hub = ctx.hub("e2e", workers=None, hive=True)
        with running(hub):
            targets = setup_targets(hub, "e2e", plan.tenants)
            source = WebhookSource(targets, plan.chats, procs.HOST)
            for mode in modes:
                meter = CpuMeter(hub)
                flow: driver.FlowResult = driver.run_async(one(hub, source, mode))
                cpu = meter.percent()
                runs[mode].append({**flow.as_dict(), "hub_cpu_pct": cpu})
                log(
                    f"  e2e {mode} rep {rep + 1}: {flow.delivered_per_s:,.0f} replies/s, added p50"
                    f" {flow.added_ms['p50']:.1f} p99 {flow.added_ms['p99']:.1f} ms, missing {flow.missing}"
                )
                if mode != modes[-1] and not wait_for_empty_queue(hub, 30):
                    notes.append(f"e2e {mode} rep {rep + 1}: queue not empty 30 s after the run")
        tally.add(hub)
    for mode in modes:
        sent = sum(r["sent"] for r in runs[mode])
        missing = sum(r["missing"] for r in runs[mode])
        ack_errors = sum(r["ack_errors"] for r in runs[mode])
        if missing:
            notes.append(
                f"e2e {mode}: {missing:,} of {sent:,} measured replies had not arrived when the driver stopped"
                " waiting; they count at the time waited, so the percentiles are lower bounds"
            )
        if ack_errors:
            notes.append(f"e2e {mode}: {ack_errors:,} webhooks not acknowledged with 200 ({failure_kinds(runs[mode])})")
        skipped = sum(r.get("skipped", 0) for r in runs[mode])
        if skipped:
            notes.append(
                f"e2e {mode}: {skipped:,} sends skipped because 512 webhooks were already waiting for an answer"
                " (the driver does not open sockets without bound)"
            )
        if mode.startswith("open"):
            notes.append(
                f"e2e {mode}: webhook acknowledgement p50 {ms(med(runs[mode], 'ack_ms', 'p50'))} ms,"
                f" p99 {ms(med(runs[mode], 'ack_ms', 'p99'))} ms while the workers ran"
            )
    notes += tally.notes()
    rows = []
    for mode in modes:
        level = runs[mode]
        rows.append(
            [
                mode,
                rate(med(level, "offered_per_s")) if mode.startswith("open") else "-",
                rate(med(level, "delivered_per_s")),
                ms_lb(level, "p50"),
                ms_lb(level, "p99"),
                ms_lb(level, "max"),
                f"{med(level, 'hub_cpu_pct'):.0f}%",
                per_cpu(level, "delivered_per_s"),
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
            f"{ms_lb(opened, 'p50')} ms ({rate(open_rate)} delivered/s)",
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
            "replies per hub CPU-s",
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
    tally = LogTally("backlog")
    tally.add(filler)
    if depth < n:
        notes.append(f"backlog: only {depth:,} of {n:,} messages queued within {plan.backlog_fill_timeout_s:.0f}s")

    ctx.fakes.configure()
    ctx.fakes.reset()
    drainer = ctx.hub("backlog-drain", workers=None, hive=True, data_dir=data_dir)
    drainer.log_path = data_dir / "hub-drain.log"
    # (seconds since spawn, queue depth, Hive calls, Evolution sends, RSS MB), once a second.
    samples: list[tuple[float, int, int, int, float]] = []
    spawned = time.time()
    drained = False
    with running(drainer):
        meter = CpuMeter(drainer)
        deadline = time.monotonic() + plan.backlog_drain_timeout_s
        while time.monotonic() < deadline:
            left = drainer.queue_depth()
            stats = ctx.fakes.stats()
            samples.append(
                (
                    round(time.time() - spawned, 2),
                    left,
                    stats["hive"]["count"],
                    stats["evolution"]["count"],
                    round(drainer.rss_mb(), 1),
                )
            )
            if left == 0 and stats["evolution"]["count"] > 0:
                drained = True
                break
            time.sleep(1.0)
        peak = drainer.peak_rss_mb()
        cpu = meter.percent()
        final_left = drainer.queue_depth()
        window_end = time.time()
    tally.add(drainer)
    notes += tally.notes()
    stats = ctx.fakes.stats()
    forwarded, delivered = stats["hive"]["count"], stats["evolution"]["count"]
    first = stats["hive"]["first"] or spawned
    last = (stats["evolution"]["last"] or window_end) if drained else window_end
    elapsed = max(1e-6, last - first)
    jobs_per_s = (forwarded + delivered) / elapsed
    first_reply = next((t for t, _, _, sent, _ in samples if sent > 0), None)
    if first_reply is None:
        notes.append(
            f"backlog: no reply reached Evolution in {plan.backlog_drain_timeout_s:.0f} s of draining"
            f" ({forwarded:,} messages forwarded to Hive meanwhile): replies queue behind the whole inbound backlog"
        )
    else:
        notes.append(f"backlog: first reply delivered {first_reply:.0f} s after the hub was started")
    if not drained:
        remaining = 2 * depth - forwarded - delivered
        eta = remaining / jobs_per_s if jobs_per_s else float("inf")
        notes.append(
            f"backlog: queue not empty after {plan.backlog_drain_timeout_s:.0f} s ({final_left:,} jobs left);"
            f" rates are over that window; at that rate the rest would take about {eta:,.0f} s more"
        )
    if len(samples) >= 20:
        # Rate over the first and the last 10 s of the window: does draining slow down as it goes?
        def window_rate(a: tuple[float, int, int, int, float], b: tuple[float, int, int, int, float]) -> float:
            return ((b[2] + b[3]) - (a[2] + a[3])) / max(1e-6, b[0] - a[0])

        early, late = window_rate(samples[0], samples[10]), window_rate(samples[-11], samples[-1])
        notes.append(f"backlog: jobs/s over the first 10 s {early:,.0f}, over the last 10 s {late:,.0f}")
    log(
        f"  backlog drain: {forwarded:,} forwarded + {delivered:,} delivered in {elapsed:.0f}s ="
        f" {jobs_per_s:,.0f} jobs/s, peak RSS {peak:.0f} MB"
    )
    rows = [
        [
            f"{depth:,}",
            f"{rate(result.ok_per_s)} ack/s",
            f"{elapsed:.0f} s" + ("" if drained else " (cut off)"),
            rate(forwarded / elapsed),
            rate(delivered / elapsed),
            rate(jobs_per_s),
            f"{cpu:.0f}%",
            f"{peak:.0f}",
        ]
    ]
    return Section(
        name="backlog",
        title=f"4. Backlog: {n:,} queued messages drained (workers on, Hive instant)",
        columns=[
            "queued",
            "fill rate",
            "drain time",
            "forwarded/s",
            "delivered/s",
            "jobs/s",
            "hub CPU",
            "peak RSS MB",
        ],
        rows=rows,
        checks=[Check("backlog peak RSS", "<= 300 MB", f"{peak:.0f} MB", peak <= 300)],
        notes=[
            "one run (not 3: it is the long one), bounded in time; each message is 2 jobs: forward to Hive"
            " (route) and deliver the reply to Evolution; window = first Hive request to the queue empty"
            " (or to the time bound)",
            *notes,
        ],
        raw={
            "queued": depth,
            "fill": result.as_dict(),
            "fill_s": fill_s,
            "forwarded": forwarded,
            "delivered": delivered,
            "window_s": elapsed,
            "jobs_per_s": jobs_per_s,
            "drained": drained,
            "first_reply_s": first_reply,
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
    tally = LogTally("history")
    tally.add(hub)
    notes += tally.notes()
    shutil.rmtree(data_dir, ignore_errors=True)  # about 1 GB; the cached original stays
    ctx.backend.discard(data_dir)  # the same for a database on a server
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
                per_cpu(level, "ok_per_s"),
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
        columns=["concurrency", "requests/s", "p50 ms", "p99 ms", "max ms", "hub CPU", "per hub CPU-s", "non-2xx"],
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
    tally = LogTally("isolation")
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
            tally.add(hub)
            runs[variant].append({"A": flow_a.as_dict(), "B": flow_b.as_dict()})
            log(
                f"  isolation {variant} rep {rep + 1}: B p50 {flow_b.added_ms['p50']:.1f} p99"
                f" {flow_b.added_ms['p99']:.1f} ms (missing {flow_b.missing}); A p50 {flow_a.added_ms['p50']:.0f} ms"
                f" (missing {flow_a.missing})"
            )
    ctx.fakes.configure()
    for variant in variants:
        for who in ("A", "B"):
            errors = sum(r[who]["ack_errors"] for r in runs[variant])
            if errors:
                kinds = failure_kinds([r[who] for r in runs[variant]])
                notes.append(f"isolation {variant}: {errors:,} of {who}'s webhooks not acknowledged with 200 ({kinds})")
        missing_b = sum(r["B"]["missing"] for r in runs[variant])
        if missing_b:
            notes.append(f"isolation {variant}: {missing_b:,} of B's replies never arrived")
    notes += tally.notes()
    rows = []
    for variant in variants:
        level = runs[variant]
        rows.append(
            [
                variant,
                rate(med(level, "B", "delivered_per_s")),
                ms_lb(level, "p50", "B"),
                ms_lb(level, "p99", "B"),
                ms_lb(level, "max", "B"),
                str(sum(r["B"]["missing"] for r in level)),
                ms_lb(level, "p50", "A"),
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
            f"A slow needs about {plan.isolation_rate * plan.isolation_slow_s:g} Hive calls in flight"
            f" (rate x delay) to keep up, against a share of half the hub's {default_workers()} workers;"
            " A's messages beyond what its share carries queue up (A missing: replies not back when the"
            " driver stopped waiting). Latencies are added latency as in 3; 1,000 chats per tenant.",
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
