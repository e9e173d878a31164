"""The message pipeline: ingest (normalize, store, enqueue) and the work each job does (route, deliver).

Ingest is the only synchronous part of a webhook: it commits the message and its job in one
transaction and returns. Everything that talks to the outside world runs later from the
durable queue (:mod:`omni_core.worker`), so a slow or dead peer never holds up a webhook.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import httpx
import msgspec
import structlog

from omni_core.entities import Instance, Tenant, strip_secrets
from omni_core.errors import ApiError, ExternalError, PermanentError, TransientError
from omni_core.events import (
    INSTANCE_STATUS,
    JOB_DEAD,
    MESSAGE_STATUS,
    delivery_jobs,
    message_event_jobs,
    status_event_jobs,
)
from omni_core.hub import IngestResult, RouteContext, session_id_for
from omni_core.ids import id_time, new_id
from omni_core.metrics import Metrics
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
    iso_ms,
    now_iso,
    shareable,
)
from omni_core.otel import Telemetry
from omni_core.outbound import split_enabled, split_outbound
from omni_core.pacing import MAX_RATE_LIMIT_DEFERRALS, Pacer, limits_for
from omni_core.retry import RetryPolicy
from omni_core.sanitize import scrub_text
from omni_core.store.base import Finished, IdempotencyKey, Job, Lease, NewJob, Store, StoredKey, TraceRecord
from omni_core.webhook_delivery import WebhookSender

if TYPE_CHECKING:
    import pluggy

    from omni_core.config import Settings
    from omni_core.hub import Hub

log = structlog.get_logger("omni.pipeline")

HISTORY_CONTEXT = 10
#: The store update that completes a job once its outside call succeeded, given the attempt's
#: trace rows (written in the same transaction).
Finish = Callable[[Sequence[TraceRecord]], Awaitable["Finished | bool"]]


class Dispatcher(Protocol):
    """The local worker pool, as ingest sees it (direct dispatch of a new message's route job)."""

    def reserve(self, tenant: str) -> Lease | None: ...

    def run_leased(self, job: Job) -> None: ...

    def release(self, tenant: str) -> None: ...


class HandOff(NamedTuple):
    """The worker running a route job, ready to take the reply's deliver job straight away."""

    owner: str
    lease_seconds: float


class Enqueued(NamedTuple):
    """What a send came to: its answer, ``{"id": first part, "status": "queued", "parts": ids}``,
    and, when an earlier send with the same idempotency key is being replayed (nothing was
    enqueued now), that send's stored key (``response`` is then the stored answer)."""

    response: dict[str, Any]
    replay: StoredKey | None = None


def lane_for(kind: str, tenant: str, instance: str, chat_id: str) -> str:
    """Jobs sharing a lane run one at a time, in order: one lane per kind of work per chat."""
    return f"{kind}\x1f{tenant}\x1f{instance}\x1f{chat_id}"


def routable(message: Message) -> bool:
    """Only what people send reaches an agent: never our own messages, never other bots' (no loops)."""
    return message.direction == "inbound" and not message.sender.is_self and not message.sender.is_bot


def reply_messages(source: Message, reply: AgentReply, channel: str) -> list[Message]:
    """Outbound messages for an agent's reply parts, addressed to the chat the message came from."""
    out = []
    stamp = now_iso()
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
        #: This process's worker pool, when it runs one: a new message's route job may start on it
        #: directly (stored already leased) instead of waiting for a claim.
        self.dispatcher: Dispatcher | None = None
        self.webhooks = WebhookSender(self)
        self.pacer = Pacer()
        self.metrics = Metrics(tenant_label=settings.metrics_tenant_label)
        self.telemetry = Telemetry()

    # --- ingest ---------------------------------------------------------------------------------
    async def ingest(self, channel: str, tenant: Tenant, payload: Any, instance_name: str | None) -> IngestResult:
        with self.telemetry.span("omni.webhook", channel=channel, tenant=tenant.id) as traceparent:
            return await self._ingest(channel, tenant, payload, instance_name, traceparent)

    async def _ingest(
        self, channel: str, tenant: Tenant, payload: Any, instance_name: str | None, traceparent: str | None
    ) -> IngestResult:
        received_at = now_iso()
        began = time.perf_counter()
        instance = await self._known_instance(channel, tenant, instance_name)
        started = time.perf_counter()
        try:
            with self.telemetry.span("omni.normalize", channel=channel):
                events = self.pm.hook.omni_normalize(channel=channel, tenant=tenant, instance=instance, payload=payload)
        except ValueError as exc:
            raise ApiError(400, "invalid_payload", str(exc)) from None
        normalize_ms = round((time.perf_counter() - started) * 1000, 3)
        ingest = IngestTiming(received_at=received_at, normalize_ms=normalize_ms, traceparent=traceparent)
        if events is None:
            raise ApiError(404, "unknown_channel", f"no plugin normalizes channel {channel!r}")
        if instance is None and instance_name is not None and any(not isinstance(e, Ignored) for e in events):
            instance = await self.register_instance(channel, tenant, instance_name)
        results = [await self.store_event(channel, tenant, instance, event, ingest) for event in events]
        self.metrics.child(self.metrics.ack_latency, channel).observe(time.perf_counter() - began)
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

    async def register_instance(self, channel: str, tenant: Tenant, name: str, state: str = "unknown") -> Instance:
        """An instance created on the channel's server outside the hub.

        The request carried the tenant's webhook secret, so it is the tenant's: register it so
        its messages are kept (only once it sends something the hub keeps).
        """
        now = now_iso()
        created = Instance(
            id=new_id("ins"),
            tenant=tenant.id,
            name=name,
            channel=channel,
            state=state,
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

    async def store_event(
        self,
        channel: str,
        tenant: Tenant,
        instance: Instance | None,
        event: Any,
        ingest: IngestTiming | None = None,
    ) -> IngestResult:
        """Store one normalized event (a message, status, instance update, change) with its jobs."""
        now = now_iso()
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
                    payload={"traceparent": ingest.traceparent} if ingest and ingest.traceparent else {},
                )
            elif event.direction == "outbound" and event.status in ("received", "queued", "processing"):
                event.status = "sent"  # our own message, sent from the phone or another client
            events = message_event_jobs(
                await self.store.list_webhooks(tenant.id),
                event,
                self.webhook_attempts,
                ingest.traceparent if ingest else None,
            )
            traces = self._ingest_traces(tenant.id, channel, ingest or IngestTiming(received_at=now), now)
            # Direct dispatch needs serialized writes: on PostgreSQL two webhooks of one chat may
            # commit concurrently, neither seeing the other's job, and both would start at once.
            dispatcher = self.dispatcher if job is not None and self.store.serialized_writes else None
            lease = dispatcher.reserve(tenant.id) if dispatcher is not None else None
            try:
                outcome = await self.store.insert_message(event, job, now, events, traces, lease)
            except BaseException:
                if dispatcher is not None and lease is not None:
                    dispatcher.release(tenant.id)
                raise
            if dispatcher is not None and lease is not None:
                if outcome.leased is not None:
                    dispatcher.run_leased(outcome.leased)
                else:
                    dispatcher.release(tenant.id)  # a duplicate, or the chat has work queued
            if event.direction == "inbound":
                counter = self.metrics.received if outcome.accepted else self.metrics.duplicates
                self.metrics.child(counter, *self.metrics.labels(channel, tenant.id)).inc()
            if outcome.accepted and ((job is not None and outcome.leased is None) or events):
                self.on_enqueue()
            return IngestResult(status="accepted" if outcome.accepted else "duplicate", id=outcome.id)
        if isinstance(event, StatusUpdate):
            if instance is None:
                return IngestResult(status="ignored", reason="status update without an instance")
            webhooks = await self.store.list_webhooks(tenant.id)
            message_id = await self.store.apply_status(
                tenant.id,
                instance.name,
                event.external_id,
                event.status,
                now,
                # A partial of a module-level function, not a lambda: the write may be pickled.
                functools.partial(status_event_jobs, webhooks, max_attempts=self.webhook_attempts),
            )
            if any(w.wants(MESSAGE_STATUS) for w in webhooks):
                self.on_enqueue()  # a message.status delivery may have been queued
            if message_id is None:
                return IngestResult(status="ignored", reason="status update for an unknown message")
            await self._record(
                self._row(
                    tenant.id, "status_update", event.status, message_id=message_id, plugin=channel, error=event.error
                )
            )
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
        if update.state is not None:
            await self.emit(instance.tenant, INSTANCE_STATUS, instance.public())

    async def emit(self, tenant: str, event: str, data: Any, message_id: str | None = None) -> None:
        """Queue deliveries of a standalone event (one not tied to a message write)."""
        jobs = delivery_jobs(await self.store.list_webhooks(tenant), event, data, self.webhook_attempts)
        if jobs:
            await self.store.enqueue_jobs(tenant, message_id, jobs, now_iso())
            self.on_enqueue()

    @property
    def webhook_attempts(self) -> int:
        return len(self.settings.webhook_retry_schedule) + 1

    def _deliver_job(self, message: Message, traceparent: str | None = None) -> NewJob:
        return NewJob(
            id=new_id("job"),
            kind="deliver",
            lane=lane_for("deliver", message.tenant, message.instance, message.chat.id),
            max_attempts=self.policy.max_attempts,
            run_at=time.time(),
            payload={"traceparent": traceparent} if traceparent else {},
        )

    async def _outbound_items(
        self, messages: Sequence[Message], split: bool | None = None, traceparent: str | None = None
    ) -> list[tuple[Message, list[NewJob]]]:
        """Each outbound message (split into parts when the instance wants it) with its deliver job
        and its ``message.outbound`` deliveries."""
        items: list[tuple[Message, list[NewJob]]] = []
        for message in messages:
            instance = await self.store.get_instance_by_name(message.source, message.instance)
            config = instance.config if instance is not None else {}
            parts = split_outbound(message) if split_enabled(config, split) else [message]
            webhooks = await self.store.list_webhooks(message.tenant)
            for part in parts:
                items.append(
                    (
                        part,
                        # The route step's trace context: the delivery span joins the message's trace.
                        [
                            self._deliver_job(part, traceparent),
                            *message_event_jobs(webhooks, part, self.webhook_attempts, traceparent),
                        ],
                    )
                )
        return items

    # --- outbound through the queue ---------------------------------------------------------------
    async def enqueue_outbound(
        self, message: Message, split: bool | None = None, idempotency: tuple[str, str] | None = None
    ) -> Enqueued:
        """Store an outbound message (or its parts) with deliver jobs; ``parts`` lists the ids in
        sending order.

        ``idempotency`` is the client's (key, request fingerprint): the key is stored with the
        messages, and a key the tenant stored less than ``idempotency_ttl_seconds`` ago enqueues
        nothing and comes back as ``replay`` instead.
        """
        items = await self._outbound_items([message], split)
        ids = [m.id for m, _ in items]
        # The answer is built before the write: the key stores it in the same transaction.
        response: dict[str, Any] = {"id": ids[0], "status": "queued", "parts": ids}
        now_ms = time.time_ns() // 1_000_000
        key = None
        if idempotency is not None:
            expired_before = iso_ms(now_ms - self.settings.idempotency_ttl_seconds * 1000)
            key = IdempotencyKey(
                key=idempotency[0], fingerprint=idempotency[1], response=response, expired_before=expired_before
            )
        stored = await self.store.insert_outbound(items, iso_ms(now_ms), key)
        if stored is not None:
            return Enqueued(stored.response, stored)
        self.on_enqueue()
        return Enqueued(response)

    async def retry_dead_job(self, job_id: str) -> Job | None:
        job = await self.store.requeue_dead(job_id, time.time(), now_iso())
        if job is not None:
            self.on_enqueue()
        return job

    # --- running one job --------------------------------------------------------------------------
    async def run_job(self, job: Job, hand_off: HandOff | None = None) -> Job | None:
        """Run one leased job to an outcome: done, retry later, or dead. Never raises.

        Returns the job to run next on the same worker: the reply's deliver job, already leased
        to ``hand_off``, when a route job finished and the chat had no send pending (or None).
        """
        if job.kind == "webhook":
            try:
                await self.webhooks.run(job)
            finally:
                self.on_enqueue()
            return None
        started = time.perf_counter()
        stage = "agent_request" if job.kind == "route" else "deliver"
        plugin: str | None = None
        # Trace rows of this attempt, committed with its outcome (one write, not one per step).
        traces: list[TraceRecord] = []
        try:
            parent = job.payload.get("traceparent")
            span_name = "omni.route" if job.kind == "route" else "omni.deliver"
            with self.telemetry.span(span_name, parent=parent, job_id=job.id, message_id=job.message_id) as span:
                if job.kind == "route":
                    plugin, finish = await self._route(job, traces, span, hand_off)
                else:
                    plugin, finish = await self._deliver(job)
            traces.append(self._attempt_row(job, stage, "ok", plugin, started, None, None))
            done = await finish(traces if self.settings.tracing_enabled else ())
            self.pacer.forget(job.id)
            return done.next_job if isinstance(done, Finished) else None
        except Paced as paced:
            # Over a send rate: wait in the queue (not an attempt, not a failure).
            await self._record(*traces)
            await self.store.defer(job, time.time() + paced.seconds, now_iso())
        except Exception as exc:
            await self._record(*traces)
            bound = log.bind(job_id=job.id, message_id=job.message_id, tenant=job.tenant, kind=job.kind)
            await self._failed(job, exc, stage, plugin, started, bound)
        finally:
            self.on_enqueue()  # the lane's next job (if any) is runnable now
        return None

    async def _route(
        self, job: Job, traces: list[TraceRecord], traceparent: str | None = None, hand_off: HandOff | None = None
    ) -> tuple[str | None, Finish]:
        """Hand the message to the agent; returns the backend and the store update that completes the job."""
        message, tenant = await self._load(job)
        if not routable(message):
            return None, lambda rows: self.store.finish_route(job, message.status, [], now_iso(), rows)
        history = await self.store.recent_messages(
            message.tenant, message.instance, message.chat.id, HISTORY_CONTEXT + 1
        )
        context = RouteContext(
            session_id=session_id_for(message.tenant, message.instance, message.chat.id),
            tenant={"id": tenant.id, "name": tenant.name, "config": strip_secrets(tenant.config)},
            history=[shareable(m) for m in history if m.id != message.id][-HISTORY_CONTEXT:],
        )
        # The agent sees the message without channel secrets kept in its metadata.
        with self.telemetry.span("omni.agent", tenant=tenant.id, message_id=message.id) as agent_span:
            context.traceparent = agent_span
            pending = self.pm.hook.omni_route(hub=self.hub, tenant=tenant, message=shareable(message), context=context)
            if pending is None:
                # No agent backend is enabled for this tenant: the message is kept, nothing forwarded.
                traces.append(self._row(job.tenant, "routed", "no_backend", message_id=message.id, job=job))
                return None, lambda rows: self.store.finish_route(job, "received", [], now_iso(), rows)
            traces.append(self._row(job.tenant, "routed", "ok", message_id=message.id, job=job))
            called = time.perf_counter()
            try:
                reply: AgentReply = await pending
            except Exception:
                self.metrics.child(self.metrics.agent_latency, "unknown", "error").observe(time.perf_counter() - called)
                raise
        self.metrics.child(self.metrics.agent_latency, reply.backend, "ok").observe(time.perf_counter() - called)
        items = await self._outbound_items(reply_messages(message, reply, message.source), traceparent=traceparent)
        traces.append(self._row(job.tenant, "agent_response", f"replies:{len(items)}", job=job, plugin=reply.backend))

        def finish(rows: Sequence[TraceRecord]) -> Awaitable[Finished]:
            lease = Lease(hand_off.owner, time.time() + hand_off.lease_seconds) if hand_off else None
            return self.store.finish_route(job, "forwarded", items, now_iso(), rows, lease)

        return reply.backend, finish

    async def _deliver(self, job: Job) -> tuple[str | None, Finish]:
        """Send the message on its channel; returns the channel and the store update that completes the job."""
        message, tenant = await self._load(job)
        # By (channel, name): the cached lookup. A message's source is its instance's channel.
        instance = await self.store.get_instance_by_name(message.source, message.instance)
        if instance is None or instance.tenant != tenant.id:
            instance = await self.store.find_instance(tenant.id, message.instance)
        if instance is None:
            raise PermanentError(f"instance {message.instance!r} no longer exists")
        limits = limits_for(instance.channel, instance.config)
        wait = self.pacer.reserve(pace_key(job), message.chat.id, limits, job_id=job.id)
        if wait > 0:
            raise Paced(wait)
        pending = self.pm.hook.omni_deliver(hub=self.hub, instance=instance, message=message)
        if pending is None:
            if instance.state != "custom":
                raise PermanentError(f"no installed plugin delivers on channel {instance.channel!r}")
            # A custom channel (messages injected through /messages/unified): the tenant's own
            # system delivers it, from the message.outbound webhook event it already got.
            receipt = DeliveryReceipt(external_id=None, status="sent")
        else:
            receipt = await pending
        message.status = receipt.status
        if receipt.external_id is not None:
            message.external_id = receipt.external_id
        webhooks = await self.store.list_webhooks(message.tenant)
        events = status_event_jobs(webhooks, message, self.webhook_attempts)
        self.metrics.child(self.metrics.sent, *self.metrics.labels(instance.channel, message.tenant)).inc()
        answered = message.content.metadata.get("in_reply_to")
        arrived = id_time(answered) if isinstance(answered, str) else None
        if arrived is not None:
            self.metrics.child(self.metrics.end_to_end, instance.channel).observe(max(0.0, time.time() - arrived))
        return instance.channel, lambda rows: self.store.finish_deliver(
            job, receipt.external_id, receipt.status, now_iso(), events, rows
        )

    async def _load(self, job: Job) -> tuple[Message, Tenant]:
        if job.message_id is None:
            raise PermanentError("job has no message")
        # Usually loaded with the lease (claim or hand-off); read it only when it was not.
        message = job.message if job.message is not None else await self.store.get_message(job.message_id)
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
        now = now_iso()
        if job.kind == "deliver" and retry_after is not None and not permanent and isinstance(exc, ExternalError):
            # The platform said "too fast": pause that instance (or chat) and queue the message
            # again without spending an attempt, up to a bound.
            chat_id = job.lane.rsplit("\x1f", 1)[-1]
            self.pacer.pause(pace_key(job), chat_id, exc.scope, retry_after)
            if self.pacer.note_deferral(job.id) <= MAX_RATE_LIMIT_DEFERRALS:
                await self.trace_attempt(job, stage, "rate_limited", plugin, started, status_code, error)
                await self.store.defer(job, time.time() + retry_after, now)
                return
        if permanent or self.policy.exhausted(job.attempts, job.max_attempts):
            message_status: MessageStatus = "failed" if permanent else "dead"
            # The attempt's record first, then the state change: whoever sees the outcome sees its attempt.
            await self.trace_attempt(job, stage, "dead", plugin, started, status_code, error)
            reason = "permanent" if permanent else "exhausted"
            await self._record(self._row(job.tenant, message_status, reason, job=job, error=error))
            stored = await self.store.get_message(job.message_id) if job.message_id else None
            self.metrics.dead.labels(job.kind).inc()
            channel = stored.source if stored is not None else "unknown"
            self.metrics.failed.labels(*self.metrics.labels(channel, job.tenant), reason).inc()
            events = await self._dead_events(job, error, message_status, stored)
            await self.store.bury(job, error, message_status, now, events)
            bound.warning("job_dead", error=error, attempts=job.attempts, permanent=permanent)
            return
        delay = self.policy.delay(job.attempts, retry_after)
        await self.trace_attempt(job, stage, "retry", plugin, started, status_code, error)
        await self.store.retry_later(job, error, time.time() + delay, now)
        bound.info("job_retry", error=error, attempt=job.attempts, delay_s=round(delay, 3))

    async def _dead_events(
        self, job: Job, error: str, message_status: MessageStatus, stored: Message | None
    ) -> list[NewJob]:
        """``job.dead`` (and, for an outbound message, its final ``message.status``) deliveries;
        ``stored`` is the job's message as stored (None when it has none)."""
        webhooks = await self.store.list_webhooks(job.tenant)
        if not any(w.enabled for w in webhooks):
            return []
        message = shareable(stored) if stored is not None else None
        if message is not None and job.kind != "webhook":
            message.status = message_status
        dead = {**job.public(), "status": "dead", "last_error": error}
        events = delivery_jobs(webhooks, JOB_DEAD, {"job": dead, "message": message}, self.webhook_attempts)
        if message is not None and job.kind == "deliver":
            events += status_event_jobs(webhooks, message, self.webhook_attempts)
        return events

    async def trace_attempt(
        self,
        job: Job,
        stage: str,
        outcome: str,
        plugin: str | None,
        started: float,
        status_code: int | None,
        error: str | None,
    ) -> None:
        await self._record(self._attempt_row(job, stage, outcome, plugin, started, status_code, error))

    def _attempt_row(
        self,
        job: Job,
        stage: str,
        outcome: str,
        plugin: str | None,
        started: float,
        status_code: int | None,
        error: str | None,
    ) -> TraceRecord:
        """The trace row of one attempt (and its count in the metrics)."""
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        self.metrics.child(self.metrics.attempts, job.kind, outcome).inc()
        return self._row(
            job.tenant,
            stage,
            outcome,
            job=job,
            plugin=plugin,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error,
        )

    def _row(
        self,
        tenant: str,
        stage: str,
        outcome: str,
        *,
        message_id: str | None = None,
        job: Job | None = None,
        plugin: str | None = None,
        duration_ms: float | None = None,
        status_code: int | None = None,
        error: str | None = None,
        at: str | None = None,
    ) -> TraceRecord:
        """One trace row; error texts lose end-user data unless TRACE_INCLUDE_SENSITIVE is on."""
        if error is not None and not self.settings.trace_include_sensitive:
            error = scrub_text(error)
        return TraceRecord(
            tenant=tenant,
            message_id=message_id if message_id is not None else (job.message_id if job else None),
            job_id=job.id if job else None,
            stage=stage,
            plugin=plugin,
            attempt=job.attempts if job else None,
            at=at or now_iso(),
            duration_ms=duration_ms,
            outcome=outcome,
            status_code=status_code,
            error=error,
        )

    async def _record(self, *rows: TraceRecord) -> None:
        if not self.settings.tracing_enabled:
            return
        try:
            await self.store.add_traces(rows)
        except Exception:  # traces are diagnostics; never let them fail a job
            log.exception("trace_write_failed")

    def _ingest_traces(self, tenant: str, channel: str, ingest: IngestTiming, now: str) -> list[TraceRecord]:
        """received -> normalized -> deduplicated, written with the message (same transaction)."""
        if not self.settings.tracing_enabled:
            return []
        return [
            self._row(tenant, "received", "ok", plugin=channel, at=ingest.received_at),
            self._row(tenant, "normalized", "ok", plugin=channel, duration_ms=ingest.normalize_ms, at=now),
            # The store sets the outcome (new / duplicate) when it knows.
            self._row(tenant, "deduplicated", "pending", at=now),
        ]


class IngestTiming(msgspec.Struct, kw_only=True):
    received_at: str
    normalize_ms: float | None = None
    traceparent: str | None = None


class Paced(Exception):
    """A send must wait ``seconds`` for its chat's or instance's rate."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"paced for {seconds:.3f}s")
        self.seconds = seconds


def pace_key(job: Job) -> str:
    """The instance a deliver job sends on (tenant + instance name, from its lane)."""
    _, tenant, instance, _ = job.lane.split("\x1f", 3)
    return f"{tenant}/{instance}"


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
