"""``python -m bench [--quick] [--only NAME ...] [--backend sqlite postgres] [--out docs/performance.md]``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import procs, report, scenarios
from bench.backends import BACKENDS, BackendUnavailable
from bench.scenarios import SCENARIOS, Context, Plan, log

DEFAULT_OUT = Path("docs/performance.md")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Omni Hub benchmark suite (issue 3)")
    parser.add_argument("--quick", action="store_true", help="tiny runs for a smoke check (under a minute)")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, metavar="NAME", help=f"scenarios: {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=list(BACKENDS),
        default=["sqlite"],
        help="storage backends, each runs every selected scenario (postgres: the server at $OMNI_BENCH_POSTGRES_URL,"
        " default postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown report (default docs/performance.md; with --quick a file in the temp dir)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "omni-bench-cache",
        help="where the built history database is kept for reruns",
    )
    parser.add_argument("--keep", action="store_true", help="keep the hubs' data dirs and logs (printed at the end)")
    parser.add_argument("--asyncio-driver", action="store_true", help="use the asyncio driver even if wrk is present")
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    out: Path = args.out or (
        Path(tempfile.gettempdir()) / "omni-bench-quick" / "performance.md" if args.quick else DEFAULT_OUT
    )
    selected = [name for name in SCENARIOS if not args.only or name in args.only]
    backends = {name: BACKENDS[name]() for name in dict.fromkeys(args.backend)}
    for name, backend in backends.items():
        try:
            backend.check()
        except BackendUnavailable as exc:
            print(f"python -m bench: backend {name}: {exc}", file=sys.stderr)
            return 2
    # SIGTERM takes the same path as Ctrl-C: the finally below stops every child process.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started in the background, where SIGINT is ignored
    workdir = scenarios.make_workdir()
    facts = report.machine_facts()
    facts["mode"] = "quick" if args.quick else "standard"
    fresh: dict[str, Any] = {"order": list(SCENARIOS), "backends": {}}
    failures = 0
    started = time.monotonic()
    fakes = procs.Fakes(workdir)
    try:
        fakes.start()
        log(f"fakes: Hive {fakes.hive_url}, Evolution {fakes.evolution_url}; work dir {workdir}")
        for name, backend in backends.items():
            ctx = Context(plan, backend, workdir / name, args.cache_dir, fakes)
            if args.asyncio_driver:
                ctx.use_wrk = False
            generator = "wrk" if ctx.use_wrk else "asyncio driver"
            if not ctx.use_wrk and not args.asyncio_driver:
                # The asyncio driver costs the machine more CPU than wrk, which lowers every figure.
                generator += " (wrk not found: `make bench` installs it, or apt-get install wrk)"
            log(f"backend {name}: {backend.describe()}; load generator: {generator}")
            meta = {**facts, "backend": backend.describe()}
            informational = "" if name == report.TARGET_BACKEND else " (informational)"
            results: dict[str, Any] = {}
            for scenario in selected:
                log(f"scenario {scenario}")
                # The previous scenario's databases may still have dirty pages for the kernel to
                # write back (the backlog's: hundreds of MB); flush them now, not during this one.
                os.sync()
                t0 = time.monotonic()
                others = procs.OthersMeter(fakes.proc.pid if fakes.proc else None)
                try:
                    section = scenarios.RUNNERS[scenario](ctx)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    failures += 1
                    traceback.print_exc()
                    section = scenarios.failed_section(scenario, exc)
                section.notes.extend(ctx.take_events())
                section.raw["elapsed_s"] = round(time.monotonic() - t0, 1)
                share = others.share()
                section.raw["other_processes_cpu_share"] = round(share, 3)
                if share >= 0.1:
                    section.notes.append(
                        f"machine busy: processes outside this benchmark used {100 * share:.0f}% of the machine's"
                        " CPU during this scenario, so its figures are understated"
                    )
                log(f"scenario {scenario} done in {time.monotonic() - t0:.0f}s")
                for check in section.checks:
                    verdict = "n/a" if check.passed is None else ("PASS" if check.passed else "MISS")
                    log(f"  {verdict}{informational}: {check.name} = {check.value} (target {check.target})")
                results[scenario] = {"meta": meta, "section": section.as_dict()}
            fresh["backends"][name] = results
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    finally:
        fakes.stop()
        procs.stop_all()
        for backend in backends.values():  # after the hubs: their databases are no longer in use
            try:
                backend.cleanup()
            except (Exception, KeyboardInterrupt) as exc:
                log(f"cleanup of backend {backend.name} failed: {type(exc).__name__}: {exc}")
        if args.keep:
            log(f"kept work dir {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    json_path = out.with_suffix(".json")
    data = report.merge(json_path, fresh)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    report.write(out, data, json_path.name if out.parent == json_path.parent else str(json_path))
    log(f"wrote {out} and {json_path} in {time.monotonic() - started:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
