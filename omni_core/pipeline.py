"""The message pipeline: ingest (normalize, store, enqueue) and the work each job does (route, deliver).

Ingest is the only synchronous part of a webhook: it commits the message and its job in one
transaction and returns. Everything that talks to the outside world runs later from the
durable queue (:mod:`omni_core.worker`), so a slow or dead peer never holds up a webhook.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from omni_core.entities import Instance, Tenant, strip_secrets
from omni_core.errors import ApiError, ExternalError, PermanentError, TransientError
from omni_core.hub import IngestResult, RouteContext, session_id_for
from omni_core.ids import new_id
from omni_core.model import (
    AgentReply,
    Chat,
    Content,
    DeliveryReceipt,
    Ignored,
    InstanceUpdate,
    Media,
    Message,
    MessageChange,
    MessageStatus,
    Sender,
    StatusUpdate,
    iso,
    utcnow,
)
from omni_core.retry import RetryPolicy
from omni_core.store.base import Job, NewJob, Store, TraceRecord

if TYPE_CHECKING:
    import pluggy

    from omni_core.config import Settings
    from omni_core.hub import Hub

log = structlog.get_logger("omni.pipeline")

HISTORY_CONTEXT = 10


def lane_for(kind: str, tenant: str, instance: str, chat_id: str) -> str:
    """Jobs sharing a lane run one at a time, in order: one lane per kind of work per chat."""
    return f"{kind}\x1f{tenant}\x1f{instance}\x1f{chat_id}"


def routable(message: Message) -> bool:
    """Only what people send reaches an agent: never our own messages, never other bots' (no loops)."""
    return message.direction == "inbound" and not message.sender.is_self and not message.sender.is_bot


def reply_messages(source: Message, reply: AgentReply, channel: str) -> list[Message]:
    """Outbound messages for an agent's reply parts, addressed to the chat the message came from."""
    out = []
    stamp = iso(utcnow())
    for part in reply.parts:
        media = [Media(**_media_fields(m)) for m in part.media]
        content_type = _content_type(part.text, media)
        out.append(
            Message(
                id=new_id("msg"),
                source=channel,
                tenant=source.tenant,
                instance=source.instance,
                direction="outbound",
                chat=Chat(
                    id=source.chat.id, type=source.chat.type, thread_id=source.chat.thread_id, name=source.chat.name
                ),
                sender=Sender(id=source.instance, name=None, is_bot=True, is_self=True),
                content=Content(
                    type=content_type,
                    text=part.text,
                    media=media,
                    # Channels that thread or quote replies (Discord's message_reference, Slack
                    # threads, interaction follow-ups) find the message being answered here.
                    metadata={"in_reply_to": source.id, "in_reply_to_external_id": source.external_id},
                ),
                timestamp=stamp,
                reply_to=None,
                status="queued",
            )
        )
    return out


def _media_fields(m: Media) -> dict[str, Any]:
    return {"url": m.url, "mime_type": m.mime_type, "size": m.size, "filename": m.filename, "caption": m.caption}


def _content_type(text: str | None, media: Sequence[Media]) -> Any:
    if not media:
        return "text"
    major = media[0].mime_type.split("/", 1)[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(major, "document")


class Pipeline:
    def __init__(self, settings: Settings, store: Store, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.store = store
        self.pm = pm
        self.policy = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
        )
        self.hub: Hub | None = None
        #: Called after a job is committed so the worker pool wakes at once instead of polling.
        self.on_enqueue: Callable[[], None] = lambda: None

    # --- ingest ---------------------------------------------------------------------------------
    async def ingest(self, channel: str, tenant: Tenant, payload: Any, instance_name: str | None) -> IngestResult:
        instance = await self._known_instance(channel, tenant, instance_name)
        try:
            events = self.pm.hook.omni_normalize(channel=channel, tenant=tenant, instance=instance, payload=payload)
        except ValueError as exc:
            raise ApiError(400, "invalid_payload", str(exc)) from None
        if events is None:
            raise ApiError(404, "unknown_channel", f"no plugin normalizes channel {channel!r}")
        if instance is None and instance_name is not None and any(not isinstance(e, Ignored) for e in events):
            instance = await self._register_instance(channel, tenant, instance_name)
        results = [await self._store_event(channel, tenant, instance, event) for event in events]
        if not results:
            return IngestResult(status="ignored", reason="no events in payload")
        # A webhook carries one event in practice; when several, the first message decides the answer.
        for result in results:
            if result.status in ("accepted", "duplicate"):
                return result
        return results[0]

    async def _known_instance(self, channel: str, tenant: Tenant, name: str | None) -> Instance | None:
        if name is None:
            return None
        instance = await self.store.get_instance_by_name(channel, name)
        if instance is not None and instance.tenant != tenant.id:
            # Another tenant's instance: answer exactly as if it did not exist.
            raise ApiError(404, "unknown_instance", f"no {channel} instance named {name!r} for this tenant")
        return instance

    async def _register_instance(self, channel: str, tenant: Tenant, name: str) -> Instance:
        """An instance created on the channel's server outside the hub.

        The request carried the tenant's webhook secret, so it is the tenant's: register it so
        its messages are kept (only once it sends something the hub keeps).
        """
        now = iso(utcnow())
        created = Instance(
            id=new_id("ins"),
            tenant=tenant.id,
            name=name,
            channel=channel,
            state="unknown",
            created_at=now,
            updated_at=now,
        )
        if not await self.store.create_instance(created):
            raced = await self.store.get_instance_by_name(channel, name)
            if raced is None or raced.tenant != tenant.id:
                raise ApiError(404, "unknown_instance", f"no {channel} instance named {name!r} for this tenant")
            return raced
        log.info("instance_registered_from_webhook", tenant=tenant.id, instance=name, channel=channel)
        return created

    async def _store_event(self, channel: str, tenant: Tenant, instance: Instance | None, event: Any) -> IngestResult:
        now = iso(utcnow())
        if isinstance(event, Message):
            if event.tenant != tenant.id:
                raise ApiError(400, "invalid_payload", "normalized message names another tenant")
            job = None
            if routable(event):
                event.status = "queued"
                job = NewJob(
                    id=new_id("job"),
                    kind="route",
                    lane=lane_for("route", event.tenant, event.instance, event.chat.id),
                    max_attempts=self.policy.max_attempts,
                    run_at=time.time(),
                )
            elif event.status in ("received", "queued", "processing"):
                event.status = "sent"  # our own message, sent from the phone or another client
            outcome = await self.store.insert_message(event, job, now)
            if outcome.accepted and job is not None:
                self.on_enqueue()
            return IngestResult(status="accepted" if outcome.accepted else "duplicate", id=outcome.id)
        if isinstance(event, StatusUpdate):
            if instance is None:
                return IngestResult(status="ignored", reason="status update without an instance")
            message_id = await self.store.apply_status(tenant.id, instance.name, event.external_id, event.status, now)
            if message_id is None:
                return IngestResult(status="ignored", reason="status update for an unknown message")
            return IngestResult(status="updated", id=message_id)
        if isinstance(event, InstanceUpdate):
            if instance is None:
                return IngestResult(status="ignored", reason="instance update without an instance")
            await self._apply_instance_update(instance, event, now)
            return IngestResult(status="updated", id=instance.id)
        if isinstance(event, MessageChange):
            if instance is None:
                return IngestResult(status="ignored", reason="message change without an instance")
            changed = await self.store.record_change(tenant.id, instance.name, event, now)
            if changed is None:
                return IngestResult(status="ignored", reason="change to an unknown message")
            return IngestResult(status="updated", id=changed)
        if isinstance(event, Ignored):
            return IngestResult(status="ignored", reason=event.reason)
        raise ApiError(400, "invalid_payload", f"plugin produced an unknown event type {type(event).__name__}")

    async def _apply_instance_update(self, instance: Instance, update: InstanceUpdate, now: str) -> None:
        if update.state is not None:
            instance.state = update.state
            instance.state_reason = update.reason
            if update.state == "open":
                instance.qrcode_base64 = instance.qrcode_code = instance.pairing_code = None
        if update.qrcode_base64 is not None or update.qrcode_code is not None:
            instance.qrcode_base64 = update.qrcode_base64
            instance.qrcode_code = update.qrcode_code
            instance.pairing_code = update.pairing_code
        if update.profile:
            instance.profile = {**instance.profile, **update.profile}
        instance.updated_at = now
        await self.store.update_instance(instance)

    # --- outbound through the queue ---------------------------------------------------------------
    async def enqueue_outbound(self, message: Message) -> str:
        job = NewJob(
            id=new_id("job"),
            kind="deliver",
            lane=lane_for("deliver", message.tenant, message.instance, message.chat.id),
            max_attempts=self.policy.max_attempts,
            run_at=time.time(),
        )
        outcome = await self.store.insert_message(message, job, iso(utcnow()))
        if outcome.accepted:
            self.on_enqueue()
        return outcome.id

    async def retry_dead_job(self, job_id: str) -> Job | None:
        job = await self.store.requeue_dead(job_id, time.time(), iso(utcnow()))
        if job is not None:
            self.on_enqueue()
        return job

    # --- running one job --------------------------------------------------------------------------
    async def run_job(self, job: Job) -> None:
        """Run one leased job to an outcome: done, retry later, or dead. Never raises."""
        started = time.perf_counter()
        stage = "agent_request" if job.kind == "route" else "deliver"
        plugin: str | None = None
        bound = log.bind(job_id=job.id, message_id=job.message_id, tenant=job.tenant, kind=job.kind)
        try:
            if job.kind == "route":
                plugin = await self._route(job)
            else:
                plugin = await self._deliver(job)
        except Exception as exc:
            await self._failed(job, exc, stage, plugin, started, bound)
            return
        finally:
            self.on_enqueue()  # the lane's next job (if any) is runnable now
        await self._trace(job, stage, "ok", plugin, started, None, None)

    async def _route(self, job: Job) -> str | None:
        message, tenant = await self._load(job)
        if not routable(message):
            await self.store.finish_route(job, message.status, [], iso(utcnow()))
            return None
        history = await self.store.recent_messages(
            message.tenant, message.instance, message.chat.id, HISTORY_CONTEXT + 1
        )
        context = RouteContext(
            session_id=session_id_for(message.tenant, message.instance, message.chat.id),
            tenant={"id": tenant.id, "name": tenant.name, "config": strip_secrets(tenant.config)},
            history=[m for m in history if m.id != message.id][-HISTORY_CONTEXT:],
        )
        pending = self.pm.hook.omni_route(hub=self.hub, tenant=tenant, message=message, context=context)
        if pending is None:
            # No agent backend is enabled for this tenant: the message is kept, nothing forwarded.
            await self.store.finish_route(job, "received", [], iso(utcnow()))
            return None
        reply: AgentReply = await pending
        replies = reply_messages(message, reply, message.source)
        jobs = [
            (
                m,
                NewJob(
                    id=new_id("job"),
                    kind="deliver",
                    lane=lane_for("deliver", m.tenant, m.instance, m.chat.id),
                    max_attempts=self.policy.max_attempts,
                    run_at=time.time(),
                ),
            )
            for m in replies
        ]
        await self.store.finish_route(job, "forwarded", jobs, iso(utcnow()))
        return reply.backend

    async def _deliver(self, job: Job) -> str | None:
        message, tenant = await self._load(job)
        instance = await self.store.find_instance(tenant.id, message.instance)
        if instance is None:
            raise PermanentError(f"instance {message.instance!r} no longer exists")
        pending = self.pm.hook.omni_deliver(hub=self.hub, instance=instance, message=message)
        if pending is None:
            raise PermanentError(f"no plugin delivers on channel {instance.channel!r}")
        receipt: DeliveryReceipt = await pending
        await self.store.finish_deliver(job, receipt.external_id, receipt.status, iso(utcnow()))
        return instance.channel

    async def _load(self, job: Job) -> tuple[Message, Tenant]:
        if job.message_id is None:
            raise PermanentError("job has no message")
        message = await self.store.get_message(job.message_id)
        if message is None:
            raise PermanentError(f"message {job.message_id} no longer exists")
        tenant = await self.store.get_tenant(message.tenant)
        if tenant is None:
            raise PermanentError(f"tenant {message.tenant} no longer exists")
        return message, tenant

    async def _failed(
        self, job: Job, exc: BaseException, stage: str, plugin: str | None, started: float, bound: Any
    ) -> None:
        error, status_code, retry_after, permanent = describe_failure(exc)
        now = iso(utcnow())
        if permanent or self.policy.exhausted(job.attempts, job.max_attempts):
            message_status: MessageStatus = "failed" if permanent else "dead"
            await self.store.bury(job, error, message_status, now)
            bound.warning("job_dead", error=error, attempts=job.attempts, permanent=permanent)
            await self._trace(job, stage, "dead", plugin, started, status_code, error)
            return
        delay = self.policy.delay(job.attempts, retry_after)
        await self.store.retry_later(job, error, time.time() + delay, now)
        bound.info("job_retry", error=error, attempt=job.attempts, delay_s=round(delay, 3))
        await self._trace(job, stage, "retry", plugin, started, status_code, error)

    async def _trace(
        self,
        job: Job,
        stage: str,
        outcome: str,
        plugin: str | None,
        started: float,
        status_code: int | None,
        error: str | None,
    ) -> None:
        try:
            await self.store.add_traces(
                [
                    TraceRecord(
                        tenant=job.tenant,
                        message_id=job.message_id,
                        job_id=job.id,
                        stage=stage,
                        plugin=plugin,
                        attempt=job.attempts,
                        at=iso(utcnow()),
                        duration_ms=round((time.perf_counter() - started) * 1000, 3),
                        outcome=outcome,
                        status_code=status_code,
                        error=error,
                    )
                ]
            )
        except Exception:  # traces are diagnostics; never let them fail a job
            log.exception("trace_write_failed", job_id=job.id)


def describe_failure(exc: BaseException) -> tuple[str, int | None, float | None, bool]:
    """(error text, status code, retry-after, permanent?) for a failed attempt.

    Unknown exceptions count as transient: a bug or a blip should not lose a message.
    """
    if isinstance(exc, ExternalError):
        return exc.message, exc.status_code, exc.retry_after, isinstance(exc, PermanentError)
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout: {type(exc).__name__}", None, None, False
    if isinstance(exc, httpx.TransportError):
        return f"connection error: {type(exc).__name__}", None, None, False
    if isinstance(exc, TransientError):  # pragma: no cover - covered by ExternalError above
        return str(exc), None, None, False
    return f"unexpected error: {type(exc).__name__}: {exc}", None, None, False
