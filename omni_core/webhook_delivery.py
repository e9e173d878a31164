"""Sending tenant webhook deliveries: signed POSTs on a retry schedule that survives restarts.

Each delivery is a job of kind ``webhook`` (its own lane, so deliveries never wait for each
other). An attempt records its status code, latency and error as a trace; a failure is retried
after the next step of the schedule; after the last one the delivery is dead. A webhook that has
kept failing for ``OMNI_WEBHOOK_DISABLE_AFTER_SECONDS`` is disabled and ``webhook.disabled`` tells
the tenant's other webhooks.

Unless private addresses are allowed, an attempt resolves the URL's host once, refuses it when any
answer is not a public address, and has the client connect to exactly the addresses it checked
(``CONNECT_ADDRESSES``): letting the client resolve the name again would let a DNS answer that
changed in between (rebinding, TTL 0) reach an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
import msgspec
import structlog

from omni_core import signing
from omni_core.errors import ApiError
from omni_core.http_transport import CONNECT_ADDRESSES
from omni_core.model import now_iso
from omni_core.store.base import Job

if TYPE_CHECKING:
    from omni_core.pipeline import Pipeline

log = structlog.get_logger("omni.webhooks")
_encode = msgspec.json.Encoder().encode
MAX_ERROR_BODY = 300


class DeliveryFailed(Exception):
    def __init__(self, message: str, status_code: int | None = None, *, final: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.final = final


def check_url_syntax(url: str) -> str:
    """``url`` if it is an absolute http(s) URL; ApiError 400 naming the problem otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise ApiError(400, "invalid_webhook_url", "webhook url must use http or https")
    if not parsed.hostname:
        raise ApiError(400, "invalid_webhook_url", "webhook url has no host")
    if parsed.username or parsed.password:
        raise ApiError(400, "invalid_webhook_url", "webhook url must not carry credentials")
    return url


def is_private(address: str) -> bool:
    """True unless ``address`` is a public unicast address a tenant's receiver may have.

    Besides private, loopback, link-local, reserved, multicast and unspecified addresses, anything
    not globally reachable counts: 100.64.0.0/10 (carrier-grade NAT) is none of the above, yet some
    clouds serve their instance metadata there (100.100.100.200).
    """
    ip = ipaddress.ip_address(address)
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def url_host(url: str) -> str:
    """The URL's host as the HTTP client connects to it: IDNA-encoded, an IPv6 literal unbracketed."""
    try:
        return httpx.URL(url).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError):
        return urlparse(url).hostname or ""


async def resolve_host(host: str) -> list[str]:
    """The addresses the system resolver gives for ``host``, in its order, without repeats.

    Deliveries and the API's check call it through this module, so a test can put a resolver in
    its place that answers differently from one call to the next (a rebinding DNS server).
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def host_addresses(host: str) -> list[str]:
    """``host`` itself when it is an IP literal, else what it resolves to; OSError when nothing."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        addresses = await resolve_host(host)
    except UnicodeError as exc:  # a label the IDNA codec refuses (e.g. longer than 63 characters)
        raise OSError(f"invalid host name: {exc}") from None
    if not addresses:
        raise OSError("no address found")
    return addresses


async def resolves_private(url: str) -> bool:
    """True when the URL's host is, or resolves to, a private/loopback/link-local address."""
    try:
        addresses = await host_addresses(url_host(url))
    except OSError:
        return False  # unresolvable: the delivery itself will fail and be retried
    return any(is_private(address) for address in addresses)


async def public_addresses(url: str) -> tuple[str, ...]:
    """The addresses an attempt may connect to: the host resolved once, every answer public.

    DeliveryFailed (retried) when the host does not resolve or any answer is not public.
    """
    host = url_host(url)
    if not host:
        raise DeliveryFailed("webhook url has no host")
    try:
        addresses = await host_addresses(host)
    except OSError as exc:
        raise DeliveryFailed(f"could not resolve host {host}: {exc.strerror or exc}") from None
    if any(is_private(address) for address in addresses):
        raise DeliveryFailed("url resolves to a private address (set OMNI_WEBHOOK_ALLOW_PRIVATE to allow)")
    return tuple(addresses)


class WebhookSender:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def delay(self, attempt: int) -> float:
        """Seconds before the attempt after ``attempt`` (1-based), with ±10% jitter."""
        schedule = self.pipeline.settings.webhook_retry_schedule
        step = schedule[min(attempt, len(schedule)) - 1]
        return float(step * random.uniform(0.9, 1.1))

    async def run(self, job: Job) -> None:
        store = self.pipeline.store
        webhook_id = str(job.payload.get("webhook_id", ""))
        started = time.perf_counter()
        webhook = await store.get_webhook(webhook_id)
        now = now_iso()
        if webhook is None or webhook.tenant != job.tenant:
            await store.bury(job, "webhook was deleted", "dead", now)
            return
        if not webhook.enabled:
            await store.bury(job, f"webhook is disabled: {webhook.disabled_reason or 'by the tenant'}", "dead", now)
            return
        status_code: int | None = None
        span = self.pipeline.telemetry.span(
            "omni.webhook_delivery",
            parent=job.payload.get("traceparent"),
            job_id=job.id,
            webhook_id=webhook.id,
            event=str(job.payload.get("event", "")),
        )
        try:
            with span:
                status_code = await self._post(webhook.url, webhook.secrets_in_use(time.time()), job)
        except DeliveryFailed as exc:
            await self._failed(job, webhook.id, exc, started)
            return
        # The attempt's record first, then the state change: whoever sees the outcome sees its attempt.
        await self._trace(job, "ok", status_code, started, None)
        await store.finish_deliver(job, None, "sent", now_iso())
        await store.record_webhook_result(webhook.id, True, time.time())
        log.debug("webhook_delivered", job_id=job.id, webhook_id=webhook.id, status=status_code)

    async def _post(self, url: str, secrets_in_use: list[str], job: Job) -> int:
        settings = self.pipeline.settings
        extensions: dict[str, Any] | None = None
        if not settings.webhook_allow_private:
            # Connect to exactly the checked addresses: no second lookup that could answer otherwise.
            extensions = {CONNECT_ADDRESSES: await public_addresses(url)}
        body = _encode(job.payload.get("body", {}))
        event_id = str(job.payload.get("event_id") or job.id)
        headers = signing.headers(secrets_in_use, event_id, int(time.time()), body)
        headers["user-agent"] = "omni-hub-webhooks/0.1"
        hub = self.pipeline.hub
        assert hub is not None
        try:
            response = await hub.http.post(
                url,
                content=body,
                headers=headers,
                timeout=settings.webhook_timeout_seconds,
                follow_redirects=False,
                extensions=extensions,
            )
        except httpx.TimeoutException:
            raise DeliveryFailed(f"timed out after {settings.webhook_timeout_seconds:g}s") from None
        except httpx.TransportError as exc:
            raise DeliveryFailed(f"connection failed: {type(exc).__name__}") from None
        if 200 <= response.status_code < 300:
            return response.status_code
        detail = response.text[:MAX_ERROR_BODY].strip()
        message = f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
        # 410 Gone: the receiver says this endpoint is gone for good.
        raise DeliveryFailed(message, response.status_code, final=response.status_code == 410)

    async def _failed(self, job: Job, webhook_id: str, exc: DeliveryFailed, started: float) -> None:
        store = self.pipeline.store
        settings = self.pipeline.settings
        now = now_iso()
        failing_since = await store.record_webhook_result(webhook_id, False, time.time())
        exhausted = job.attempts >= job.max_attempts
        if exc.final or exhausted:
            await self._trace(job, "dead", exc.status_code, started, exc.message)
            await store.bury(job, exc.message, "dead", now)
        else:
            await self._trace(job, "retry", exc.status_code, started, exc.message)
            await store.retry_later(job, exc.message, time.time() + self.delay(job.attempts), now)
        too_long = failing_since is not None and time.time() - failing_since >= settings.webhook_disable_after_seconds
        if exc.final or too_long:
            reason = "the endpoint answered 410 Gone" if exc.final else "deliveries kept failing"
            await self.disable(webhook_id, reason)

    async def disable(self, webhook_id: str, reason: str) -> None:
        store = self.pipeline.store
        webhook = await store.get_webhook(webhook_id)
        if webhook is None or not webhook.enabled:
            return
        webhook.enabled = False
        webhook.disabled_reason = reason
        webhook.updated_at = now_iso()
        await store.update_webhook(webhook)
        log.warning("webhook_disabled", webhook_id=webhook_id, tenant=webhook.tenant, reason=reason)
        await self.pipeline.emit(webhook.tenant, "webhook.disabled", {**webhook.public(), "reason": reason})

    async def _trace(self, job: Job, outcome: str, status_code: int | None, started: float, error: str | None) -> None:
        await self.pipeline.trace_attempt(job, "webhook", outcome, None, started, status_code, error)
