"""The hooks a plugin can implement. Every hook is optional.

Plugins are ordinary packages that expose a module through the ``omni.plugins`` entry-point
group and decorate functions with :data:`omni_core.hookimpl`. The hub calls:

* ``omni_channels`` / ``omni_routes`` once at start-up, to learn what a plugin provides;
* ``omni_normalize`` on the ingest path, to turn a raw platform event into unified events;
* ``omni_route`` from the queue, to hand an inbound message to an agent backend;
* ``omni_deliver`` from the queue, to send an outbound message on a channel;
* ``omni_instance_*`` from the instances API, to manage the account on the channel's server;
* ``omni_tenant_secret_rotated`` from the tenants API, to hand a new webhook secret to the channel's server;
* ``omni_validate_tenant_config`` from the tenants API, to reject a bad value in a plugin's config section;
* ``omni_startup`` / ``omni_shutdown`` around the hub's life.

Hooks that do I/O follow one convention, because pluggy itself is synchronous: the
implementation returns ``None`` when the call is not for it (another channel, backend
disabled) and otherwise returns an *awaitable* that the hub awaits. They are
``firstresult`` hooks, so exactly one plugin answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from omni_core.entities import Instance, Tenant
    from omni_core.hub import Hub, RouteContext
    from omni_core.lifecycle import InstanceInfo, QrCode
    from omni_core.model import AgentReply, DeliveryReceipt, Message, NormalizedEvent

PROJECT = "omni"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def omni_channels() -> Sequence[str]:  # type: ignore[empty-body]
    """Names of the channels this plugin provides (``"whatsapp"``, ``"slack"`` ...)."""


@hookspec
def omni_routes(hub: Hub) -> Sequence[Any]:  # type: ignore[empty-body]
    """HTTP endpoints to mount: a channel's inbound webhooks.

    Return :func:`omni_core.webhook_route` objects for webhooks (the hub's hot path: plain
    ASGI with the body limit and error format applied by the core), or ordinary Litestar
    route handlers for anything else (they may declare ``hub: Hub``, which the core injects).
    Handlers stay thin: read and verify the request, call :meth:`Hub.ingest`, answer.
    """


@hookspec(firstresult=True)
def omni_normalize(
    channel: str, tenant: Tenant, instance: Instance | None, payload: Any
) -> Sequence[NormalizedEvent] | None:
    """Turn one raw platform event into unified events. Pure: no I/O.

    Return ``None`` when ``channel`` is not yours. Raise :class:`ValueError` when the
    payload is malformed; the hub answers 400 naming the problem.
    """


@hookspec(firstresult=True)
def omni_normalize_address(channel: str, address: str) -> str | None:
    """Canonical chat id for a user-supplied recipient (``"5511..."`` -> ``"5511...@s.whatsapp.net"``).

    Used by ``POST /messages/send`` so outbound messages land in the same chat (history,
    ordering) as inbound ones. Raise ``ValueError`` for an address the channel cannot use.
    """


@hookspec(firstresult=True)
def omni_route(hub: Hub, tenant: Tenant, message: Message, context: RouteContext) -> Awaitable[AgentReply] | None:
    """Hand an inbound message to an agent backend.

    Return ``None`` when this backend is not enabled for the tenant; otherwise an awaitable
    of :class:`AgentReply`. Raise :class:`TransientError` / :class:`PermanentError` on
    failure so the queue retries or gives up.
    """


@hookspec(firstresult=True)
def omni_deliver(hub: Hub, instance: Instance, message: Message) -> Awaitable[DeliveryReceipt] | None:
    """Send an outbound message on ``instance``'s channel; ``None`` when not your channel."""


@hookspec(firstresult=True)
def omni_instance_create(
    hub: Hub, tenant: Tenant, instance: Instance, options: dict[str, Any]
) -> Awaitable[InstanceInfo] | None:
    """Create the account on the channel's server (e.g. an Evolution instance) and point its webhooks at the hub."""


@hookspec(firstresult=True)
def omni_instance_status(hub: Hub, instance: Instance) -> Awaitable[InstanceInfo] | None:
    """Ask the channel's server for the live state of the instance."""


@hookspec(firstresult=True)
def omni_instance_qr(hub: Hub, instance: Instance) -> Awaitable[QrCode] | None:
    """Fetch a fresh QR / pairing code for linking the account."""


@hookspec(firstresult=True)
def omni_instance_delete(hub: Hub, instance: Instance) -> Awaitable[None] | None:
    """Remove the instance from the channel's server."""


@hookspec(firstresult=True)
def omni_tenant_secret_rotated(hub: Hub, tenant: Tenant, instance: Instance) -> Awaitable[None] | None:
    """Point ``instance``'s webhooks on the channel's server at ``tenant``'s new webhook secret.

    Called by ``POST /tenants/{id}/rotate-webhook-secret`` after the new secret is stored
    (``tenant.webhook_secret``), once per instance of the tenant, concurrently; ``None`` when not
    your channel or when the channel does not authenticate with that secret. Raise on failure:
    the hub logs it and lists the instance in ``instances_not_updated`` (the previous secret
    stays valid for the overlap the caller chose, so events keep arriving meanwhile).
    """


@hookspec
def omni_validate_tenant_config(config: Mapping[str, Any]) -> list[str] | None:
    """Problems with *your own* section of a tenant's config; ``None`` (or ``[]``) when it is fine.

    Called by ``POST /tenants`` and ``PATCH /tenants/{id}`` (when the body has ``config``) on the
    config about to be stored: after the merge patch, so it is the whole resulting config. Every
    plugin is called, one by one; when any reports a problem the hub answers
    ``400 invalid_config`` listing all of them and stores nothing.

    Pure and quick: no I/O, do not modify ``config``. Check only the keys you read, so the core
    never needs to know plugin keys. Each problem is one human-readable sentence naming the key,
    e.g. ``"hive.api_url must be an absolute http(s) URL with a host"``. Never put a value in it
    (it may be a secret or contain credentials); the hub masks secret-named values anyway. A
    validator that raises is logged and skipped: validation must not make tenants unwritable.
    """


@hookspec
def omni_startup(hub: Hub) -> Awaitable[None] | None:
    """Called once the store and queue are up (open clients, start gateway connections)."""


@hookspec
def omni_shutdown(hub: Hub) -> Awaitable[None] | None:
    """Called before the hub stops (close clients, stop background tasks)."""


@hookspec
def omni_health(hub: Hub) -> Awaitable[Mapping[str, Any]] | None:
    """The plugin's own readiness check for ``GET /health/ready``.

    Return an awaitable of ``{"status": "ok" | "error", ...details}`` (e.g. gateway connections
    up, a credential still valid); ``None`` when the plugin has nothing to check. Keep it quick:
    it runs on every readiness probe.
    """
