"""The hub's shared outbound HTTP client (``Hub.http``), used by the core and every plugin.

One ``httpx.AsyncClient`` for the whole process, so connections to an agent backend or a
channel's API are kept alive and reused across messages and tenants. Underneath it runs
:class:`omni_core.http_transport.PooledTransport` (see there for why), unless
``OMNI_HTTP_TRANSPORT=httpx`` or a proxy is configured in the environment: proxies are
httpx's own transport's job.
"""

from __future__ import annotations

import datetime
import logging
import time
import urllib.request
from typing import Any

import httpx
import structlog
from httpx._client import ClientState, UseClientDefault

from omni_core.config import Settings
from omni_core.http_transport import PooledTransport

_http_log = logging.getLogger("httpx")  # httpx's own request log line, kept on the fast path

log = structlog.get_logger("omni.http")

USER_AGENT = "omni-hub/0.1"


class HubClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` that parses each distinct URL string once.

    The hub calls the same few endpoints over and over (an agent's process URL, a channel's send
    path per instance); parsing the string again for every request was a measurable share of
    the CPU per message. ``httpx.URL`` is immutable, so a parsed one can be shared.
    """

    _URL_CACHE_SIZE = 4096

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls: dict[str, httpx.URL] = {}

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """httpx's ``send`` without its layers for auth flows, redirect loops and event hooks when
        the request needs none of them (the hub's own calls never do): one request, one response,
        body read. Anything else (streaming, auth, redirects, hooks) takes httpx's full path."""
        redirects = self.follow_redirects if isinstance(follow_redirects, UseClientDefault) else follow_redirects
        if (
            stream
            or redirects
            or self._auth is not None
            or not isinstance(auth, UseClientDefault)
            or request.url.userinfo
            or self._event_hooks["request"]
            or self._event_hooks["response"]
            or self.is_closed
        ):
            return await super().send(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
        self._state = ClientState.OPENED
        if "timeout" not in request.extensions:
            request.extensions = {**request.extensions, "timeout": self.timeout.as_dict()}
        started = time.perf_counter()
        response = await self._transport_for_url(request.url).handle_async_request(request)
        response.request = request
        response.default_encoding = self._default_encoding
        if response.has_redirect_location:
            response.next_request = self._build_redirect_request(request, response)
        try:
            body_stream = response.stream
            if "content-encoding" in response.headers or not isinstance(body_stream, httpx.AsyncByteStream):
                await response.aread()  # httpx decodes (gzip, br, ...)
            else:
                # An identity body: the transport's chunks joined, without httpx's per-chunk
                # chunker and decoder generators (what ``aread`` leaves behind, set the same way).
                response.is_stream_consumed = True
                chunks = [chunk async for chunk in body_stream]
                content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                response._num_bytes_downloaded = len(content)
                response._content = content
                await response.aclose()
        except BaseException:
            await response.aclose()
            raise
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        if _http_log.isEnabledFor(logging.INFO):
            _http_log.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        if not isinstance(url, str):
            return super()._merge_url(url)
        merged = self._urls.get(url)
        if merged is None:
            merged = super()._merge_url(url)
            if len(self._urls) >= self._URL_CACHE_SIZE:
                self._urls.clear()  # many distinct URLs: start over rather than grow
            self._urls[url] = merged
        return merged


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(30.0, connect=5.0)
    headers = {"user-agent": USER_AGENT}
    proxies = sorted(urllib.request.getproxies())
    if settings.http_transport == "pooled" and not proxies:
        client = HubClient(timeout=timeout, headers=headers, transport=PooledTransport())
    else:
        if settings.http_transport == "pooled":
            log.info("http_transport_fallback", reason="proxy configured", proxies=proxies)
        client = HubClient(
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
