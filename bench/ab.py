"""Alternating A/B runs of two versions of the hub on this machine: ``python -m bench.ab``.

A machine of this kind changes speed by +-15% within minutes (neighbours, turbo), more than most
single changes gain, so one full run of each version says little. This tool starts one hub per
version and run, alternating the order (A B, B A, A B ...), and reports per version the median
rate, latency and CPU per 1,000 units of work for the hub's serving process and its helpers
(the SQLite writer) apart, and in how many pairs B beat A.

A version is ``LABEL`` (this checkout) or ``LABEL:PATH``: a checkout whose ``omni_core`` and
plugin packages are put first on the hub's ``PYTHONPATH`` (for instance a
``git worktree add /tmp/base HEAD~3``). Examples::

    python -m bench.ab ingest base:/tmp/base new            # ingest c=64, workers off
    python -m bench.ab e2e -r 6 -s 8 base:/tmp/base new     # closed loop, 64 conversations
    python -m bench.ab e2e-open base:/tmp/base new            # open loop at 1,000 messages/s (p50 target)
    python -m bench.ab history base:/tmp/base new            # c=16, 1,000 x 1,000 messages
    python -m bench.ab ingest --env OMNI_SQLITE_WRITER=thread thread new   # one checkout, two settings
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import TypeVar

from bench import driver, procs, scenarios
from bench.backends import BACKENDS, history_tenant_ids
from bench.scenarios import Context, Plan, log

N = TypeVar("N", int, float)

PLUGIN_DIRS = ("omni-whatsapp-evolution", "omni-hive", "omni-slack", "omni-discord")


@dataclass
class Version:
    label: str
    path: Path | None
    env: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, float]] = field(default_factory=list)

    def hub_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.path is not None:
            roots = [self.path, *(self.path / "plugins" / name for name in PLUGIN_DIRS)]
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in roots)
        return env


def parse_version(text: str, env_items: list[str]) -> Version:
    label, _, path = text.partition(":")
    env: dict[str, str] = {}
    for item in env_items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    root = Path(path).resolve() if path else None
    if root is not None and not (root / "omni_core").is_dir():
        raise SystemExit(f"{text}: {root} has no omni_core package")
    return Version(label, root, env)


class Measure:
    """CPU seconds over one run: the hub's serving process, its helper processes, the load
    generator (this process's driver, or wrk once reaped) and the fakes."""

    def __init__(self, hub: procs.Hub, fakes: procs.Fakes) -> None:
        self.pid = hub.pid
        self.fakes_pid = fakes.proc.pid if fakes.proc is not None else None
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        tree = procs.process_tree(self.pid)
        own = os.times()
        load = own.user + own.system + own.children_user + own.children_system
        fakes = procs.cpu_seconds(self.fakes_pid) if self.fakes_pid is not None else 0.0
        return procs.cpu_seconds(tree[0]), sum(procs.cpu_seconds(p) for p in tree[1:]), load, fakes

    def per_thousand(self, units: int) -> dict[str, float]:
        """CPU milliseconds per 1,000 units of each part."""
        now = self._read()
        scale = 1e6 / units if units > 0 else 0.0
        parts = ("serving", "helpers", "load", "fakes")
        return {part: (b - a) * scale for part, a, b in zip(parts, self.start, now, strict=True)}


def run_ingest(ctx: Context, version: Version, seconds: float) -> dict[str, float]:
    hub = ctx.hub(f"ab-{version.label}", workers=0, hive=False, extra_env=version.hub_env())
    with scenarios.running(hub):
        targets = scenarios.setup_targets(hub, "ab", ctx.plan.tenants)
        scenarios.load_ingest(ctx, hub, targets, ctx.plan.chats, 64, 1.0)  # warm up
        measure = Measure(hub, ctx.fakes)
        result = scenarios.load_ingest(ctx, hub, targets, ctx.plan.chats, 64, seconds)
        cpu = measure.per_thousand(result.ok)
    return _figures(result.ok_per_s, result.latency_ms, cpu)


def run_e2e(ctx: Context, version: Version, seconds: float, rate: float = 0.0) -> dict[str, float]:
    """Closed loop with 64 conversations, or with ``rate`` an open loop at that many messages/s."""
    ctx.fakes.configure()
    hub = ctx.hub(f"ab-{version.label}", workers=None, hive=True, extra_env=version.hub_env())
    with scenarios.running(hub):
        targets = scenarios.setup_targets(hub, "ab", ctx.plan.tenants)
        source = driver.WebhookSource(targets, ctx.plan.chats, procs.HOST)

        async def flow() -> driver.FlowResult:
            watch = driver.ReplyWatch(procs.HOST, ctx.fakes.evolution_port)
            await watch.start()
            try:
                if rate:
                    stream = driver.Stream("open", source.targets, rate)
                    flows = await driver.open_loop(procs.HOST, hub.port, watch, source, [stream], 2.0, seconds, 8.0)
                    return flows[0]
                return await driver.e2e_closed_loop(procs.HOST, hub.port, watch, source, 64, 2.0, seconds)
            finally:
                await watch.close()

        # CPU over the whole flow (warm-up and settling included) per reply delivered meanwhile.
        delivered = ctx.fakes.stats()["evolution"]["count"]
        measure = Measure(hub, ctx.fakes)
        result = driver.run_async(flow())
        cpu = measure.per_thousand(ctx.fakes.stats()["evolution"]["count"] - delivered)
    return _figures(result.delivered_per_s, result.added_ms, cpu)


def run_history(ctx: Context, version: Version, seconds: float) -> dict[str, float]:
    plan = ctx.plan
    data_dir = ctx.data_dir(f"ab-{version.label}")
    env = ctx.backend.history_env(ctx.cache_dir, data_dir, plan.history_tenants, plan.history_per_tenant)
    hub = ctx.hub(f"ab-{version.label}", workers=0, hive=False, data_dir=data_dir, extra_env=version.hub_env())
    hub.env.update(env)
    tenants = history_tenant_ids(plan.history_tenants)
    try:
        with scenarios.running(hub):
            scenarios.load_history(ctx, hub, tenants, 16, 1.0)
            measure = Measure(hub, ctx.fakes)
            result = scenarios.load_history(ctx, hub, tenants, 16, seconds)
            cpu = measure.per_thousand(result.ok)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        ctx.backend.discard(data_dir)
    return _figures(result.ok_per_s, result.latency_ms, cpu)


def _figures(rate: float, latency: dict[str, float], cpu: dict[str, float]) -> dict[str, float]:
    return {"rate": rate, "p50": latency["p50"], "p99": latency["p99"], **cpu}


def run_e2e_open(ctx: Context, version: Version, seconds: float) -> dict[str, float]:
    return run_e2e(ctx, version, seconds, rate=ctx.plan.e2e_rate)


RUNNERS = {
    "ingest": (run_ingest, "ack/s"),
    "e2e": (run_e2e, "replies/s"),
    "e2e-open": (run_e2e_open, "replies/s"),
    "history": (run_history, "pages/s"),
}


def summary(a: Version, b: Version, unit: str, key: str = "rate") -> list[str]:
    """Medians per version, and B against A pair by pair on ``key`` (rate: higher is better;
    a latency: lower is better)."""
    lines = [
        f"{'version':<12} {unit:>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'CPU ms per 1k: serving':>23} {'helpers':>8} {'load':>8} {'fakes':>8}"
    ]
    for v in (a, b):
        lines.append(
            f"{v.label:<12} {median(r['rate'] for r in v.runs):>10,.0f} {median(r['p50'] for r in v.runs):>8.1f}"
            f" {median(r['p99'] for r in v.runs):>8.1f} {median(r['serving'] for r in v.runs):>23.1f}"
            f" {median(r['helpers'] for r in v.runs):>8.1f} {median(r['load'] for r in v.runs):>8.1f}"
            f" {median(r['fakes'] for r in v.runs):>8.1f}"
        )
    pairs = list(zip(a.runs, b.runs, strict=False))
    higher = key == "rate"
    wins = sum((rb[key] > ra[key]) == higher and rb[key] != ra[key] for ra, rb in pairs)
    ratio = median(rb[key] / ra[key] for ra, rb in pairs if ra[key] > 0) if pairs else 0.0
    lines.append(
        f"{b.label} / {a.label} ({key}): median pair ratio {ratio:.3f}, {b.label} better in {wins}/{len(pairs)} pairs"
    )
    return lines


def positive(convert: Callable[[str], N], what: str) -> Callable[[str], N]:
    """An argparse type: ``convert(text)`` (``what`` it expects), which must be above 0."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected more than 0, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(RUNNERS))
    parser.add_argument("a", help="LABEL or LABEL:PATH (the baseline)")
    parser.add_argument("b", help="LABEL or LABEL:PATH")
    reps, seconds = positive(int, "a whole number"), positive(float, "a number")
    parser.add_argument("-r", "--reps", type=reps, default=4, help="pairs of runs (default 4)")
    parser.add_argument("-s", "--seconds", type=seconds, default=6.0, help="measured seconds per run (default 6)")
    parser.add_argument("--backend", choices=list(BACKENDS), default="sqlite")
    parser.add_argument("--env-a", action="append", default=[], metavar="NAME=VALUE", help="extra hub env for A")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra hub env for B")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "omni-bench-cache")
    args = parser.parse_args(argv)
    a, b = parse_version(args.a, args.env_a), parse_version(args.b, args.env)
    runner, unit = RUNNERS[args.scenario]
    backend = BACKENDS[args.backend]()
    backend.check()
    workdir = Path(tempfile.mkdtemp(prefix="omni-bench-ab-"))
    fakes = procs.Fakes(workdir)
    try:
        fakes.start()
        ctx = Context(Plan(), backend, workdir / backend.name, args.cache_dir, fakes)
        for rep in range(args.reps):
            for version in (a, b) if rep % 2 == 0 else (b, a):
                figures = runner(ctx, version, args.seconds)
                version.runs.append(figures)
                log(
                    f"{args.scenario} {version.label} rep {rep + 1}: {figures['rate']:,.0f} {unit},"
                    f" p50 {figures['p50']:.1f} p99 {figures['p99']:.1f} ms, CPU per 1k: serving"
                    f" {figures['serving']:.1f} ms, helpers {figures['helpers']:.1f},"
                    f" load {figures['load']:.1f}, fakes {figures['fakes']:.1f} ms"
                )
        print("\n".join(summary(a, b, unit, "p50" if args.scenario == "e2e-open" else "rate")))
    except KeyboardInterrupt:
        return 130
    finally:
        fakes.stop()
        procs.stop_all()
        with contextlib.suppress(Exception):
            backend.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
