"""The small public API that plugins use: everything a plugin may call on the core lives here.

A :class:`Hub` is created once per process and handed to every hook and injected into plugin
route handlers (parameter ``hub: Hub``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec

from omni_core.entities import Instance, Tenant
from omni_core.errors import ApiError
from omni_core.model import Message

if TYPE_CHECKING:
    import pluggy
    from litestar import Request

    from omni_core.config import Settings
    from omni_core.pipeline import Pipeline
    from omni_core.store.base import Store
    from omni_core.worker import WorkerPool


class RouteContext(msgspec.Struct, kw_only=True):
    """What an agent backend gets besides the message itself."""

    session_id: str
    tenant: dict[str, Any]
    history: list[Message]
    #: W3C trace context of the hub's agent-call span (OpenTelemetry on), to send as ``traceparent``.
    traceparent: str | None = None


class IngestResult(msgspec.Struct, kw_only=True):
    """Outcome of :meth:`Hub.ingest` for one webhook; ``body()`` is the HTTP answer."""

    status: Literal["accepted", "duplicate", "ignored", "updated"]
    id: str | None = None
    reason: str | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.id is not None:
            out["id"] = self.id
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def session_id_for(tenant: str, instance: str, chat_id: str) -> str:
    """Stable agent session id per (tenant, instance, chat)."""
    digest = hashlib.sha256(f"{tenant}\x1f{instance}\x1f{chat_id}".encode()).hexdigest()
    return f"ses_{digest[:32]}"


class Hub:
    """Facade over the store, the pipeline and shared clients."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        pm: pluggy.PluginManager,
        http: httpx.AsyncClient,
        pipeline: Pipeline,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pm = pm
        #: Shared outbound HTTP client (connection pooling); plugins should use it, not their own.
        self.http = http
        self.pipeline = pipeline
        #: The in-process worker pool (None when this process runs no workers).
        self.workers: WorkerPool | None = None

    # --- request helpers for plugin webhook handlers -------------------------------------------
    async def read_json(self, request: Request[Any, Any, Any]) -> Any:
        """The request body parsed as JSON; 413 when over the limit, 400 when not valid JSON."""
        body = await request.body()
        if len(body) > self.settings.max_body_bytes:
            raise ApiError(413, "body_too_large", f"request body exceeds {self.settings.max_body_bytes} bytes")
        return self.parse_json(body)

    @staticmethod
    def parse_json(body: bytes) -> Any:
        """``body`` parsed as JSON; 400 naming the problem when empty or malformed."""
        if not body:
            raise ApiError(400, "empty_body", "request body is empty; expected a JSON object")
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None

    async def tenant_for_webhook(self, tenant_id: str) -> Tenant:
        tenant = await self.store.get_tenant(tenant_id)
        if tenant is None:
            raise ApiError(404, "unknown_tenant", f"no tenant with id {tenant_id!r}")
        return tenant

    async def instance_by_name(self, channel: str, name: str) -> Instance | None:
        return await self.store.get_instance_by_name(channel, name)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self.store.get_tenant(tenant_id)

    async def instances_for_channel(self, channel: str) -> Sequence[Instance]:
        """Every instance of ``channel`` (cached): for matching inbound events by app/team/bot id."""
        return await self.store.channel_instances(channel)

    @staticmethod
    def check_webhook_token(
        tenant: Tenant, headers: Mapping[str, str], query: Mapping[str, Any], header: str = "x-omni-webhook-token"
    ) -> None:
        """401 unless the request carries the tenant's webhook secret (header or ``?token=``).

        During a rotation's overlap the previous secret is accepted too. Compared in constant time
        against every secret in use, without stopping at a match, so timing reveals neither secret.
        """
        provided = headers.get(header) or query.get("token")
        if isinstance(provided, list):
            provided = provided[0] if provided else None
        in_use = tenant.webhook_secrets_in_use(time.time())
        if not provided or not in_use:
            raise ApiError(401, "missing_webhook_token", f"webhook token required in header {header} or ?token=")
        token = str(provided).encode()
        matched = False
        for secret in in_use:
            matched |= hmac.compare_digest(token, secret.encode())
        if not matched:
            raise ApiError(401, "invalid_webhook_token", "webhook token does not match this tenant")

    # --- the pipeline ---------------------------------------------------------------------------
    async def ingest(self, channel: str, tenant: Tenant, payload: Any, instance_name: str | None) -> IngestResult:
        """Normalize one raw event (``omni_normalize`` hook), store it and enqueue its work durably.

        Returns only after the commit, so a 2xx answer built from the result is never a lie.
        """
        return await self.pipeline.ingest(channel, tenant, payload, instance_name)

    async def get_message(self, message_id: str) -> Message | None:
        return await self.store.get_message(message_id)

    async def recent_messages(self, tenant: str, instance: str, chat_id: str, limit: int = 10) -> Sequence[Message]:
        return await self.store.recent_messages(tenant, instance, chat_id, limit)
