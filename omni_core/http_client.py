"""The hub's shared outbound HTTP client (``Hub.http``), used by the core and every plugin.

One ``httpx.AsyncClient`` for the whole process, so connections to an agent backend or a
channel's API are kept alive and reused across messages and tenants. Underneath it runs
:class:`omni_core.http_transport.PooledTransport` (see there for why), unless
``OMNI_HTTP_TRANSPORT=httpx`` or a proxy is configured in the environment: proxies are
httpx's own transport's job.
"""

from __future__ import annotations

import urllib.request

import httpx
import structlog

from omni_core.config import Settings
from omni_core.http_transport import PooledTransport

log = structlog.get_logger("omni.http")

USER_AGENT = "omni-hub/0.1"


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(30.0, connect=5.0)
    headers = {"user-agent": USER_AGENT}
    proxies = sorted(urllib.request.getproxies())
    if settings.http_transport == "pooled" and not proxies:
        client = httpx.AsyncClient(timeout=timeout, headers=headers, transport=PooledTransport())
    else:
        if settings.http_transport == "pooled":
            log.info("http_transport_fallback", reason="proxy configured", proxies=proxies)
        client = httpx.AsyncClient(
            timeout=timeout,
            headers=headers,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )
    # One client serves every tenant: a cookie one tenant's backend sets must never ride along
    # on another tenant's request to the same host. Keep none (this also skips parsing them).
    client._cookies = _NoCookies()
    return client


class _NoCookies(httpx.Cookies):
    """A cookie store that stores nothing: responses' Set-Cookie headers are ignored."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None
