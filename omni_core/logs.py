"""structlog set-up: JSON lines in production, readable lines in a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from omni_core.sanitize import scrub, scrub_text

#: Log fields that are identifiers or plumbing, never end-user data: kept as they are.
SAFE_FIELDS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "message_id",
        "job_id",
        "tenant",
        "instance",
        "plugin",
        "kind",
        "channel",
        "webhook_id",
        "attempt",
        "attempts",
        "delay_s",
        "count",
        "status",
        "path",
        "exception",
        "migration",
        "host",
        "port",
        "plugins",
        "permanent",
        "reason",
        "traces",
        "jobs",
        "messages",
    }
)


def scrub_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Keep end users' data (text, numbers, addresses) and secrets out of log lines."""
    for key, value in list(event.items()):
        if key not in SAFE_FIELDS:
            event[key] = scrub(value, key=key)
        elif key == "exception" and isinstance(value, str):
            event[key] = scrub_text(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto", include_sensitive: bool = False) -> None:
    # Client libraries log every request with its full URL (query strings, phone numbers in
    # paths): keep them to warnings, which carry no request details.
    for noisy in ("httpx", "httpcore", "discord", "slack_sdk", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([] if include_sensitive else [scrub_event]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
