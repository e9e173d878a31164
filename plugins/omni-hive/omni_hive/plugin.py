"""Hook glue for the Hive agent backend: decide whether Hive handles a tenant, then call it.

The wire format lives in :mod:`omni_hive.wire`; this module only does the HTTP call through the
hub's shared client and maps transport failures to the queue's error types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from omni_core import (
    AgentReply,
    Hub,
    Message,
    PermanentError,
    RouteContext,
    Tenant,
    TransientError,
    hookimpl,
)
from omni_hive.wire import (
    NO_URL_MESSAGE,
    HiveTarget,
    build_body,
    build_headers,
    encode_body,
    reply_from_response,
    resolve_target,
    validate_config,
)


def target_for(hub: Hub, tenant: Tenant) -> HiveTarget | None:
    settings = hub.settings
    return resolve_target(
        tenant.config,
        enabled=settings.hive_enabled,
        api_url=settings.hive_api_url,
        api_key=settings.hive_api_key,
        timeout=settings.hive_timeout_seconds,
    )


@hookimpl
def omni_route(hub: Hub, tenant: Tenant, message: Message, context: RouteContext) -> Awaitable[AgentReply] | None:
    target = target_for(hub, tenant)
    if target is None:
        return None
    return call_hive(hub.http, target, tenant, message, context)


@hookimpl
def omni_validate_tenant_config(config: Mapping[str, Any]) -> list[str] | None:
    return validate_config(config) or None


def _where(url: str) -> str:
    """Host and port of ``url`` for error messages (never credentials or query strings)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "the configured URL"


async def call_hive(
    http: httpx.AsyncClient, target: HiveTarget, tenant: Tenant, message: Message, context: RouteContext
) -> AgentReply:
    """``POST {api_url}/process`` and turn the answer into an :class:`AgentReply`."""
    if not target.api_url:
        raise PermanentError(NO_URL_MESSAGE)
    url = target.process_url
    content = encode_body(build_body(target, tenant, message, context))
    try:
        response = await http.post(
            url, content=content, headers=build_headers(target, message, context), timeout=target.timeout
        )
    except httpx.TimeoutException:
        raise TransientError(f"Hive at {_where(url)} timed out after {target.timeout:g}s") from None
    except httpx.UnsupportedProtocol:
        raise PermanentError(f"Hive API URL has an unsupported scheme ({_where(url)})") from None
    except httpx.TransportError as exc:
        raise TransientError(f"Hive at {_where(url)} is unreachable ({type(exc).__name__})") from None
    except httpx.InvalidURL:
        raise PermanentError("Hive API URL is not a valid URL") from None
    return reply_from_response(
        response.status_code,
        response.content,
        response.headers.get("retry-after"),
        secret=target.api_key,
    )
