"""The hub's shared outbound HTTP client (``Hub.http``), used by the core and every plugin.

One ``httpx.AsyncClient`` for the whole process, so connections to an agent backend or a
channel's API are kept alive and reused across messages and tenants. Underneath it runs
:class:`omni_core.http_transport.PooledTransport` (see there for why), unless
``OMNI_HTTP_TRANSPORT=httpx`` or a proxy is configured in the environment: proxies are
httpx's own transport's job.

A request may be pinned to addresses already resolved and checked (the ``CONNECT_ADDRESSES``
extension, see :mod:`omni_core.http_transport`). Both default transports honour it: the pooled
one itself, httpx's own through :class:`HttpxPinningTransport`. Through a proxy the proxy
resolves and connects, so there is nothing to pin here.
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
from httpx._types import HeaderTypes, RequestContent, RequestExtensions, TimeoutTypes

from omni_core.config import Settings
from omni_core.http_transport import CONNECT_ADDRESSES, PooledTransport, ResponseStream, pinned_addresses

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_http_log = logging.getLogger("httpx")  # httpx's own request log line, kept on the fast path

log = structlog.get_logger("omni.http")

USER_AGENT = "omni-hub/0.1"


def _ascii_entries(headers: dict[Any, Any]) -> list[tuple[bytes, bytes, bytes]] | None:
    """``headers`` as httpx's header entries when every name and value is a ``str`` (what
    ``httpx.Headers`` would encode as ASCII, raising the same error if it cannot); None for any
    other shape, which httpx's own code then handles."""
    entries = []
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str:
            return None
        raw = name.encode("ascii")
        entries.append((raw, raw.lower(), value.encode("ascii")))
    return entries


def _has_content_encoding(headers: httpx.Headers) -> bool:
    # ``"content-encoding" in headers`` works out the headers' text encoding first (a decode of
    # every header); the lowercased raw names are already there.
    return any(lower == b"content-encoding" for _, lower, _ in headers._list)


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

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: RequestContent | None = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: HeaderTypes | None = None,
        cookies: Any = None,
        timeout: TimeoutTypes | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        extensions: RequestExtensions | None = None,
    ) -> httpx.Request:
        """httpx's ``build_request`` for the hub's usual call (a URL string, bytes or no body, a
        dict of headers): the same request, built without httpx's cookie and query merging, body
        encoders and second header pass, which were ~10% of an end-to-end message's CPU."""
        if (
            data is not None
            or files is not None
            or json is not None
            or params is not None
            or cookies is not None
            or not (extensions is None or type(extensions) is dict)
            or not isinstance(url, str)
            or not (content is None or type(content) is bytes)
            or not (headers is None or type(headers) is dict)
            or self.params
        ):
            return super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
        merged_url = self._merge_url(url)
        merged = httpx.Headers(self.headers)
        if headers:
            extra = _ascii_entries(headers)
            if extra is None:
                merged.update(headers)
            else:
                # What Headers.update does (a given name replaces every default of that name,
                # then the given ones follow in order) without re-parsing and re-scanning the
                # list once per name: ~4% of an end-to-end message's CPU.
                given = {lower for _, lower, _ in extra}
                merged._list = [entry for entry in merged._list if entry[1] not in given] + extra
        # What httpx's Request._prepare adds: Content-Length for a body, Host, and an explicit
        # zero length on a body-less POST/PUT/PATCH, in httpx's order.
        entries = merged._list
        names = {lower for _, lower, _ in entries}
        body = content or b""
        if body and b"content-length" not in names:
            entries.append((b"Content-Length", b"content-length", str(len(body)).encode("ascii")))
            names.add(b"content-length")
        auto: list[tuple[bytes, bytes, bytes]] = []
        if b"host" not in names and merged_url.host:
            auto.append((b"Host", b"host", merged_url.netloc))
        method = method.upper()
        if b"content-length" not in names and b"transfer-encoding" not in names and method in _BODY_METHODS:
            auto.append((b"Content-Length", b"content-length", b"0"))
        if auto:
            merged._list = auto + entries
        request_extensions: dict[str, Any] = {"timeout": self._timeout_extension(timeout)}
        if extensions:
            request_extensions.update(extensions)  # as httpx: a "timeout" given here wins
        request = httpx.Request(
            method,
            merged_url,
            headers=merged,
            stream=httpx.ByteStream(body),
            extensions=request_extensions,
        )
        request._content = body  # what Request.read() would set for a ByteStream
        return request

    def _timeout_extension(self, timeout: TimeoutTypes | UseClientDefault) -> dict[str, float | None]:
        if isinstance(timeout, UseClientDefault):
            return self.timeout.as_dict()
        return httpx.Timeout(timeout).as_dict()

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
        if CONNECT_ADDRESSES in request.extensions:
            if redirects:
                # The addresses were checked for this URL's host; a redirect elsewhere would be
                # connected to them too, or (unpinned) to whatever its host resolves to unchecked.
                raise ValueError(f"a request with {CONNECT_ADDRESSES} must not follow redirects")
            transport = self._transport_for_url(request.url)
            # Fail closed: a transport that ignored the pin would resolve the name again. A proxy
            # mount is the exception: the proxy resolves the name, whatever the hub does.
            if transport is self._transport and not isinstance(transport, PooledTransport | HttpxPinningTransport):
                raise ValueError(f"{type(transport).__name__} cannot honour {CONNECT_ADDRESSES}")
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
            next_request = self._build_redirect_request(request, response)
            # The pin belongs to this URL's host only; never carry it over to a redirect target.
            next_request.extensions = {k: v for k, v in next_request.extensions.items() if k != CONNECT_ADDRESSES}
            response.next_request = next_request
        try:
            body_stream = response.stream
            if _has_content_encoding(response.headers) or not isinstance(body_stream, httpx.AsyncByteStream):
                await response.aread()  # httpx decodes (gzip, br, ...)
            elif type(body_stream) is ResponseStream:
                # The pooled transport's own stream: the body in one call, and the connection back
                # to the pool at once (what Response.aclose does, without its exception-mapping
                # context: giving a connection back raises nothing).
                content = await body_stream.read_all()
                response.is_stream_consumed = True
                response._num_bytes_downloaded = len(content)
                response._content = content
                response.is_closed = True
                body_stream.close_now()
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


class HttpxPinningTransport(httpx.AsyncBaseTransport):
    """httpx's own transport (``OMNI_HTTP_TRANSPORT=httpx``), plus the ``CONNECT_ADDRESSES`` pin.

    httpx connects to an IP-literal URL without resolving anything and takes the TLS server name
    (SNI and the certificate check) from the ``sni_hostname`` extension. So a pinned request is
    sent to its address as the URL, with its Host header and server name left the original
    host's. httpx pools connections by the URL's origin, here the address: a kept-alive
    connection verified for one host would then serve another host on the same address. So
    pinned requests go through a second pool that keeps no connection alive.
    """

    def __init__(self, **kwargs: Any) -> None:
        """``kwargs`` are ``httpx.AsyncHTTPTransport``'s."""
        self._shared = httpx.AsyncHTTPTransport(**kwargs)
        self._pinned = httpx.AsyncHTTPTransport(**{**kwargs, "limits": httpx.Limits(max_keepalive_connections=0)})

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pinned = request.extensions.get(CONNECT_ADDRESSES)
        if pinned is None:
            return await self._shared.handle_async_request(request)
        addresses = pinned_addresses(pinned)
        for index, address in enumerate(addresses):
            try:
                return await self._pinned.handle_async_request(_to_address(request, address))
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
                # Not connected, so nothing was sent: the next address may take it.
        raise AssertionError("unreachable: pinned_addresses is never empty")

    async def aclose(self) -> None:
        await self._shared.aclose()
        await self._pinned.aclose()


def _to_address(request: httpx.Request, address: str) -> httpx.Request:
    """``request`` with the address as its URL's host, for the original host's Host header and TLS name."""
    headers = request.headers.copy()
    if "host" not in headers:
        headers["Host"] = request.url.netloc.decode("ascii")
    extensions = {k: v for k, v in request.extensions.items() if k != CONNECT_ADDRESSES}
    extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
    moved = httpx.Request(
        request.method,
        request.url.copy_with(host=address),
        headers=headers,
        stream=request.stream,
        extensions=extensions,
    )
    if hasattr(request, "_content"):
        moved._content = request._content  # already read: what Request.read() would set
    return moved


#: Connections the pooled transport opens to one origin (scheme, host, port) at most.
_MAX_PER_ORIGIN = 100


def make_http_client(settings: Settings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(30.0, connect=5.0)
    headers = {"user-agent": USER_AGENT}
    proxies = sorted(urllib.request.getproxies())
    if settings.http_transport == "pooled" and not proxies:
        # Every worker may be talking to one agent backend at once: with fewer idle connections
        # kept than workers, each burst closed the extras and the next one connected again
        # (~3% of an end-to-end message's CPU at 64 conversations, plus the backend's accepts).
        idle = min(_MAX_PER_ORIGIN, max(32, settings.workers))
        transport = PooledTransport(max_connections_per_origin=_MAX_PER_ORIGIN, max_idle_per_origin=idle)
        client = HubClient(timeout=timeout, headers=headers, transport=transport)
    else:
        if settings.http_transport == "pooled":
            log.info("http_transport_fallback", reason="proxy configured", proxies=proxies)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        client = HubClient(timeout=timeout, headers=headers, limits=limits)
        # Swapped in after construction: given ``transport=``, httpx would not mount the proxies
        # from the environment.
        client._transport = HttpxPinningTransport(limits=limits)
    # One client serves every tenant: a cookie one tenant's backend sets must never ride along
    # on another tenant's request to the same host. Keep none (this also skips parsing them).
    client._cookies = _NoCookies()
    return client


class _NoCookies(httpx.Cookies):
    """A cookie store that stores nothing: responses' Set-Cookie headers are ignored."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None
