"""The plugin's environment variables (read when used, so tests and deployments can set them per process)."""

from __future__ import annotations

import os

DEFAULT_API_URL = "https://discord.com/api/v10"
_FALSE = ("0", "false", "no", "off")


def api_base_url() -> str:
    """``DISCORD_API_URL`` (default ``https://discord.com/api/v10``), without a trailing slash."""
    return (os.environ.get("DISCORD_API_URL") or DEFAULT_API_URL).strip().rstrip("/")


def gateway_enabled() -> bool:
    """``DISCORD_GATEWAY_ENABLED=false``: this process keeps no gateway connections (it still sends)."""
    return (os.environ.get("DISCORD_GATEWAY_ENABLED") or "true").strip().lower() not in _FALSE


def sync_seconds() -> float:
    """``DISCORD_INSTANCE_SYNC_SECONDS`` (default 30; 0 = never): how often the instance list is re-read."""
    raw = os.environ.get("DISCORD_INSTANCE_SYNC_SECONDS") or "30"
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 30.0
