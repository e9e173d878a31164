"""Evolution REST calls over the hub's shared ``httpx.AsyncClient``.

Bodies and answers are built and read in :mod:`wire`; this module only resolves where to call, makes
the calls and turns transport/HTTP failures into :class:`TransientError` / :class:`PermanentError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from omni_core import (
    DeliveryReceipt,
    Hub,
    Instance,
    InstanceInfo,
    Message,
    PermanentError,
    QrCode,
    Tenant,
    TransientError,
    classify_status,
    parse_retry_after,
)
from omni_whatsapp_evolution import wire

_encode = msgspec.json.Encoder().encode

_NO_BASE_URL = (
    "no Evolution base URL configured: set EVOLUTION_API_BASE_URL or the instance's config evolution.base_url"
)


def _path(name: str) -> str:
    """An instance name as one URL path segment (names are user-chosen and may hold spaces or slashes)."""
    return quote(name, safe="")


class EvolutionClient:
    """One Evolution server as seen with one API key."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str | None) -> None:
        self.http = http
        self.base_url = base_url
        self._api_key = api_key

    @classmethod
    def for_instance(cls, hub: Hub, instance: Instance) -> EvolutionClient:
        """Client for calls about an existing instance.

        The key falls back from an explicit ``api_key`` to the per-instance token Evolution issued at
        creation, then to the global key, so an instance keeps working if the global key rotates.
        """
        conf = wire.evolution_config(instance.config)
        url = wire.base_url(conf.get("base_url"), hub.settings.evolution_api_base_url)
        if url is None:
            raise PermanentError(_NO_BASE_URL)
        key = wire.first_str(conf.get("api_key"), conf.get("instance_token"), hub.settings.evolution_api_key)
        return cls(hub.http, url, key)

    @classmethod
    def for_create(cls, hub: Hub, instance: Instance, options: Mapping[str, Any]) -> EvolutionClient:
        """Client for ``instance/create``, which needs the server's global key (no instance token exists yet)."""
        conf = wire.evolution_config(instance.config)
        opts = wire.evolution_config(options)
        url = wire.base_url(opts.get("base_url"), conf.get("base_url"), hub.settings.evolution_api_base_url)
        if url is None:
            raise PermanentError(_NO_BASE_URL)
        key = wire.first_str(opts.get("api_key"), conf.get("api_key"), hub.settings.evolution_api_key)
        return cls(hub.http, url, key)

    def scrub(self, text: str) -> str:
        # Belt and braces: an error text must never carry the key, even if a server echoes it.
        return text.replace(self._api_key, "***") if self._api_key else text

    async def call(
        self, method: str, path: str, action: str, body: Mapping[str, Any] | None = None, *, missing_ok: bool = False
    ) -> Any:
        """Make one request and return the decoded JSON answer (``None`` when the answer is not JSON).

        ``missing_ok`` turns a 404 into ``None`` (deleting what is already gone is a success).
        """
        headers = {"apikey": self._api_key} if self._api_key else {}
        content = None
        if body is not None:
            content = _encode(body)  # msgspec: several times faster than httpx's json=
            headers["content-type"] = "application/json"
        try:
            response = await self.http.request(method, f"{self.base_url}{path}", content=content, headers=headers)
        except httpx.TimeoutException:
            raise TransientError(f"evolution {action}: timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(self.scrub(f"evolution {action}: {type(exc).__name__}: {exc}")) from None
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.text
        status = response.status_code
        if missing_ok and status == 404:
            return None
        error_class = classify_status(status)
        if error_class is None and not 200 <= status < 300:
            error_class = PermanentError  # redirects are not followed: the base URL is wrong
        if error_class is not None:
            raise error_class(
                self.scrub(wire.error_message(action, status, payload)),
                status_code=status,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return payload if not isinstance(payload, str) else None


async def deliver(hub: Hub, instance: Instance, message: Message) -> DeliveryReceipt:
    """Send ``message`` through Evolution; one request per part (see :func:`wire.plan_delivery`)."""
    try:
        calls = wire.plan_delivery(message)
    except ValueError as exc:
        raise PermanentError(f"cannot send on WhatsApp: {exc}") from None
    client = EvolutionClient.for_instance(hub, instance)
    ids: list[str] = []
    for call in calls:
        answer = await client.call("POST", f"/message/{call.action}/{_path(instance.name)}", call.action, call.body)
        # A 2xx without a key still means WhatsApp took the message: never fail (and so resend) after it.
        if (key_id := wire.parse_send_response(answer)) is not None:
            ids.append(key_id)
    raw: dict[str, Any] = {"requests": len(calls)}
    if ids:
        raw["key_ids"] = ids
    return DeliveryReceipt(external_id=ids[0] if ids else None, status="sent", raw=raw)


async def create_instance(hub: Hub, tenant: Tenant, instance: Instance, options: Mapping[str, Any]) -> InstanceInfo:
    """Create the instance on Evolution with its webhook pointed at this tenant's hub route."""
    client = EvolutionClient.for_create(hub, instance, options)
    url = wire.webhook_url(tenant.id, hub.settings.evolution_webhook_url, hub.settings.base_url)
    body = wire.build_instance_create_body(
        instance.name, url, tenant.webhook_secret, qrcode=bool(options.get("qrcode", True))
    )
    try:
        answer = await client.call("POST", "/instance/create", "instance/create", body)
    except PermanentError as exc:
        if exc.status_code == 403:
            raise PermanentError(
                f"evolution instance/create 403: instance name {instance.name!r} is already in use"
                " on the Evolution server",
                status_code=403,
            ) from None
        raise
    try:
        return wire.parse_instance_create_response(answer)
    except ValueError as exc:
        raise PermanentError(f"evolution instance/create: {exc}") from None


async def set_webhook(hub: Hub, tenant: Tenant, instance: Instance) -> None:
    """Re-set the instance's webhook as :func:`create_instance` does, carrying the tenant's current secret."""
    client = EvolutionClient.for_instance(hub, instance)
    url = wire.webhook_url(tenant.id, hub.settings.evolution_webhook_url, hub.settings.base_url)
    body = wire.build_webhook_set_body(url, tenant.webhook_secret)
    await client.call("POST", f"/webhook/set/{_path(instance.name)}", "webhook/set", body)


async def instance_status(hub: Hub, instance: Instance) -> InstanceInfo:
    client = EvolutionClient.for_instance(hub, instance)
    answer = await client.call("GET", f"/instance/connectionState/{_path(instance.name)}", "instance/connectionState")
    try:
        return wire.parse_connection_state(answer)
    except ValueError as exc:
        raise PermanentError(f"evolution {exc}") from None


async def instance_qr(hub: Hub, instance: Instance) -> QrCode:
    client = EvolutionClient.for_instance(hub, instance)
    answer = await client.call("GET", f"/instance/connect/{_path(instance.name)}", "instance/connect")
    try:
        return wire.parse_connect_response(answer)
    except ValueError as exc:
        raise PermanentError(client.scrub(f"evolution instance/connect: {exc}")) from None


async def delete_instance(hub: Hub, instance: Instance) -> None:
    client = EvolutionClient.for_instance(hub, instance)
    await client.call("DELETE", f"/instance/delete/{_path(instance.name)}", "instance/delete", missing_ok=True)
