"""The Litestar application: wires settings, store, plugins, pipeline and workers together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any, cast

import pluggy
import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import HTTPScope, LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from omni_core.api import instances, messages, observability, system, tenants, webhooks
from omni_core.api.common import (
    api_error_handler,
    http_error_handler,
    internal_error_handler,
    provide_hub,
    provide_principal,
)
from omni_core.api.history_route import PREFIX as HISTORY_PREFIX
from omni_core.api.history_route import HistoryFastPath
from omni_core.auth import ADMIN_KEY_FILE, Authenticator, announce_admin_key, resolve_admin_key
from omni_core.config import Settings
from omni_core.errors import ApiError
from omni_core.http_client import make_http_client
from omni_core.hub import Hub
from omni_core.otel import Telemetry
from omni_core.pipeline import Pipeline
from omni_core.plugins import make_plugin_manager
from omni_core.retention import purge_loop
from omni_core.store.base import Store
from omni_core.store.factory import make_store
from omni_core.webhook_route import WebhookDispatcher, WebhookRoute
from omni_core.worker import WorkerPool

log = structlog.get_logger("omni.app")

CORE_ROUTES: list[Any] = [
    system.health,
    system.list_plugins,
    system.retry_job,
    tenants.create_tenant,
    tenants.list_tenants,
    tenants.get_tenant,
    tenants.patch_tenant,
    tenants.delete_tenant,
    tenants.rotate_api_key,
    tenants.rotate_webhook_secret,
    instances.create_instance,
    instances.list_instances,
    instances.get_instance,
    instances.patch_instance,
    instances.get_qr,
    instances.delete_instance,
    messages.send_message,
    messages.unified_message,
    messages.get_message,
    messages.history,
    webhooks.create_webhook,
    webhooks.list_webhooks,
    webhooks.get_webhook,
    webhooks.patch_webhook,
    webhooks.delete_webhook,
    webhooks.list_deliveries,
    webhooks.replay_delivery,
    observability.list_traces,
    observability.message_trace,
    observability.metrics,
    observability.ready,
]


async def _maybe_await(results: list[Any]) -> None:
    for result in results:
        if result is not None:
            await result


class HubApp(Litestar):
    """The hub's Litestar app, with channel webhooks dispatched before Litestar's own stack.

    Webhooks are the hottest path; :class:`WebhookDispatcher` answers them as plain ASGI. Every
    other request (the REST API, health, metrics) goes through Litestar as usual.
    """

    webhooks: WebhookDispatcher | None = None
    #: Plain history reads answered before Litestar's stack (omni_core.api.history_route).
    history: HistoryFastPath | None = None

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] == ScopeType.HTTP and self.webhooks is not None:
            http_scope = cast("HTTPScope", scope)
            mount = self.webhooks.find(http_scope["path"])
            if mount is not None:
                await self.webhooks.handle(mount, http_scope, cast("Receive", receive), cast("Send", send))
                return
        if scope["type"] == ScopeType.HTTP and self.history is not None:
            http_scope = cast("HTTPScope", scope)
            if http_scope["path"].startswith(HISTORY_PREFIX) and await self.history.handle(
                http_scope, cast("Send", send)
            ):
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    pm: pluggy.PluginManager | None = None,
    store: Store | None = None,
    start_workers: bool | None = None,
) -> HubApp:
    """Build the hub. Nothing touches the disk or network until the app starts (lifespan)."""
    pm = pm or make_plugin_manager(disabled=settings.plugins_disabled)
    # OMNI_WORKERS=0 makes an API-only process: it accepts and stores, others do the work.
    start_workers = settings.workers > 0 if start_workers is None else start_workers
    store = store or make_store(settings)
    pipeline = Pipeline(settings, store, pm)
    pipeline.telemetry = Telemetry.from_env()
    http = make_http_client(settings)
    hub = Hub(settings, store, pm, http, pipeline)
    pipeline.hub = hub
    workers = WorkerPool(
        store,
        pipeline,
        concurrency=max(1, settings.workers),
        tenant_concurrency=settings.tenant_concurrency,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval_seconds,
    )
    hub.workers = workers if start_workers else None
    pipeline.dispatcher = workers if start_workers else None
    pipeline.on_enqueue = workers.notify
    store.subscribe_jobs(workers.notify)  # work enqueued by other replicas

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await store.open()
        admin_key, generated = resolve_admin_key(settings.api_key, settings.data_dir)
        if generated:
            announce_admin_key(admin_key, settings.data_dir / ADMIN_KEY_FILE)
        app.state.authenticator = Authenticator(admin_key, store)
        await _maybe_await(pm.hook.omni_startup(hub=hub))
        if start_workers:
            await workers.start()
        purger = asyncio.create_task(purge_loop(hub), name="omni-purge")
        # Everything allocated so far lives as long as the process: keep the collector off it.
        gc.collect()
        gc.freeze()
        log.info("hub_started", host=settings.api_host, port=settings.api_port, plugins=len(pm.get_plugins()))
        try:
            yield
        finally:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            if start_workers:
                await workers.stop()
            await _maybe_await(pm.hook.omni_shutdown(hub=hub))
            await http.aclose()
            await store.close()
            pipeline.telemetry.shutdown()
            log.info("hub_stopped")

    plugin_routes = [handler for group in pm.hook.omni_routes(hub=hub) for handler in (group or [])]
    webhooks = WebhookDispatcher(hub, [r for r in plugin_routes if isinstance(r, WebhookRoute)])
    plugin_routes = [r for r in plugin_routes if not isinstance(r, WebhookRoute)]
    app = HubApp(
        route_handlers=[*CORE_ROUTES, *plugin_routes],
        dependencies={
            "hub": Provide(provide_hub, sync_to_thread=False),
            "principal": Provide(provide_principal),
        },
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        # Logging is the hub's (omni_core.logs): Litestar's default configuration would put a
        # plain-text, unscrubbed handler for every library's INFO records on the root logger.
        logging_config=None,
        debug=False,
    )
    app.state.hub = hub
    app.webhooks = webhooks
    app.history = HistoryFastPath(hub, app.state)
    return app
