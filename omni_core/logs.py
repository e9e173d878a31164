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
        "logger",
    }
)

#: Marks the root handler :func:`configure_logging` installs, so a second call replaces it.
_HANDLER_MARK = "_omni_stdlib_handler"


def scrub_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Keep end users' data (text, numbers, addresses) and secrets out of log lines."""
    for key, value in list(event.items()):
        if key not in SAFE_FIELDS:
            event[key] = scrub(value, key=key)
        elif key == "exception" and isinstance(value, str):
            event[key] = scrub_text(value)
    return event


def scrub_message(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A library's log message is free text (URLs, phone numbers): scrub it like any other value."""
    if isinstance(event.get("event"), str):
        event["event"] = scrub_text(event["event"])
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
    numeric_level = getattr(logging, level.upper(), logging.INFO)
    scrubbing: list[structlog.typing.Processor] = [] if include_sensitive else [scrub_event]
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            *scrubbing,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(numeric_level, renderer, stamp, scrubbing)


def _route_stdlib_logging(
    level: int,
    renderer: structlog.typing.Processor,
    stamp: structlog.typing.Processor,
    scrubbing: list[structlog.typing.Processor],
) -> None:
    """Records of the standard ``logging`` module (libraries, plugins' dependencies) as hub log lines.

    Without a handler of ours they went out through whatever the last configuration installed
    (Litestar's default: plain text at INFO), bypassing the JSON format and the scrubbing.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            *([scrub_message] if scrubbing else []),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *scrubbing, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
