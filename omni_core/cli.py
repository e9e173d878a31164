"""``omni`` command line: ``omni serve`` (default) and ``omni migrate``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

from omni_core.config import ConfigError, Settings, load_settings, read_dotenv
from omni_core.logs import configure_logging
from omni_core.otel import adopt_dotenv


def _serve(settings: Settings) -> int:
    import os

    import uvicorn

    from omni_core.app import create_app
    from omni_core.http_server import JoinedWritesHttpToolsProtocol
    from omni_core.store.sqlite import StoreLockedError, take_file_lock

    # Refuse a second hub on the same SQLite file with one clear line, before anything starts.
    if not settings.database_url:
        try:
            os.close(take_file_lock(settings.sqlite_path))
        except StoreLockedError as exc:
            print(f"omni: {exc}", file=sys.stderr)
            return 3
        except OSError:
            pass  # the data directory does not exist yet: the store creates it

    app = create_app(settings)
    # Each request allocates thousands of short-lived containers; the default threshold (700)
    # runs the collector many times per request burst for little gain.
    gc.set_threshold(20_000, 50, 50)
    # The event loop shares the GIL with the SQLite threads; at the default 5 ms switch interval
    # each statement a store thread runs can wait that long for the GIL (a convoy): 0.5 ms
    # measured ~50% more end-to-end throughput (docs/performance.md).
    sys.setswitchinterval(0.0005)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - platforms without uvloop
        loop = "asyncio"
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        loop=loop,
        http=JoinedWritesHttpToolsProtocol,
        log_level="warning",
        # uvicorn's own records (invalid requests, errors escaping the app) propagate to the
        # hub's handler (omni_core.logs): JSON and scrubbed, not uvicorn's plain-text default.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    return 0


async def _migrate(settings: Settings) -> list[str]:
    from omni_core.store.factory import make_store

    store = make_store(settings)
    await store.open()  # opening applies pending migrations (under a lock where replicas share a database)
    try:
        return list(store.applied_migrations)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omni", description="Omni Hub: multi-tenant messaging hub for AI agents")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the hub (default)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"omni: configuration error: {exc}", file=sys.stderr)
        return 2
    adopt_dotenv(read_dotenv(Path(".env")))  # OTEL_* from .env too, like every other setting
    configure_logging(settings.log_level, settings.log_format, settings.trace_include_sensitive)
    if args.command == "migrate":
        from omni_core.store.sqlite import StoreLockedError

        try:
            applied = asyncio.run(_migrate(settings))
        except StoreLockedError as exc:
            print(f"omni: {exc}; the running hub applies migrations itself at start-up", file=sys.stderr)
            return 3
        print(f"migrations applied: {', '.join(applied) if applied else 'none (schema is current)'}")
        return 0
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
