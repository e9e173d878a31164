"""Omni Hub plugin: hand inbound messages to an Automagik Hive agent backend (``POST /process``)."""

from omni_hive.wire import (
    BACKEND,
    HiveTarget,
    build_body,
    build_headers,
    error_for_status,
    parse_reply,
    parse_reply_json,
    reply_from_response,
    resolve_target,
    validate_config,
)

__version__ = "0.1.0"

__all__ = [
    "BACKEND",
    "HiveTarget",
    "build_body",
    "build_headers",
    "error_for_status",
    "parse_reply",
    "parse_reply_json",
    "reply_from_response",
    "resolve_target",
    "validate_config",
]
