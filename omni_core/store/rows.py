"""Row <-> entity conversion shared by the store dialects (same columns in SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from omni_core.entities import Instance, Tenant, TenantWebhook
from omni_core.model import Message
from omni_core.store.base import Job, Lease, NewJob, TraceRecord

json_encode = msgspec.json.Encoder().encode
_message_decoder = msgspec.json.Decoder(Message)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_dict(raw: str | bytes) -> dict[str, Any]:
    return _dict_decoder.decode(raw)


JOB_COLUMNS = (
    "id, seq, tenant_id, kind, lane, message_id, status, attempts, max_attempts, run_at, "
    "lease_owner, lease_until, last_error, payload, created_at, updated_at"
)


JOB_COLUMNS_J = ", ".join("j." + c.strip() for c in JOB_COLUMNS.split(","))


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        seq=row[1],
        tenant=row[2],
        kind=row[3],
        lane=row[4],
        message_id=row[5],
        status=row[6],
        attempts=row[7],
        max_attempts=row[8],
        run_at=row[9],
        lease_owner=row[10],
        lease_until=row[11],
        last_error=row[12],
        payload=decode_dict(row[13]),
        created_at=row[14],
        updated_at=row[15],
    )


def replay_of(old: Job, new_id: str, now_epoch: float) -> NewJob:
    """A dead job's replay: same kind, attempts budget and payload, a lane of its own, due now."""
    return NewJob(
        id=new_id,
        kind=old.kind,
        lane=f"{old.kind}\x1f{new_id}",
        max_attempts=old.max_attempts,
        run_at=now_epoch,
        payload=old.payload,
    )


def leased_job(
    new: NewJob, seq: int, tenant: str, message_id: str, now: str, lease: Lease, message: Message | None = None
) -> Job:
    """The Job for a job that was stored already leased (direct dispatch, a route job's hand-off)."""
    return Job(
        id=new.id,
        seq=seq,
        tenant=tenant,
        kind=new.kind,
        lane=new.lane,
        message_id=message_id,
        status="running",
        attempts=1,
        max_attempts=new.max_attempts,
        run_at=new.run_at,
        lease_owner=lease.owner,
        lease_until=lease.until,
        last_error=None,
        payload=new.payload,
        created_at=now,
        updated_at=now,
        message=message,
    )


def message_from_row(body: bytes, status: str, external_id: str | None) -> Message:
    msg = _message_decoder.decode(body)
    msg.status = status  # type: ignore[assignment]
    msg.external_id = external_id
    return msg


def tenant_from_row(row: Sequence[Any]) -> Tenant:
    return Tenant(
        id=row[0],
        name=row[1],
        config=decode_dict(row[2]),
        webhook_secret=row[3],
        created_at=row[4],
        updated_at=row[5],
        webhook_secret_previous=row[6],
        previous_valid_until=row[7],
    )


TENANT_COLUMNS = (
    "id, name, config, webhook_secret, created_at, updated_at, webhook_secret_previous, webhook_secret_previous_until"
)
INSTANCE_COLUMNS = (
    "id, tenant_id, name, channel, config, state, state_reason, qrcode_base64, qrcode_code, pairing_code, "
    "profile, created_at, updated_at"
)


def instance_from_row(row: Sequence[Any]) -> Instance:
    return Instance(
        id=row[0],
        tenant=row[1],
        name=row[2],
        channel=row[3],
        config=decode_dict(row[4]),
        state=row[5],
        state_reason=row[6],
        qrcode_base64=row[7],
        qrcode_code=row[8],
        pairing_code=row[9],
        profile=decode_dict(row[10]),
        created_at=row[11],
        updated_at=row[12],
    )


INSERT_MESSAGE = (
    "INSERT INTO messages (id, tenant_id, instance, source, direction, external_id, chat_id, status,"
    " timestamp, created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def message_row(message: Message, now: str) -> tuple[Any, ...]:
    return (
        message.id,
        message.tenant,
        message.instance,
        message.source,
        message.direction,
        message.external_id,
        message.chat.id,
        message.status,
        message.timestamp,
        now,
        now,
        json_encode(message),
    )


def instance_row(i: Instance) -> tuple[Any, ...]:
    return (
        i.id,
        i.tenant,
        i.name,
        i.channel,
        json_encode(i.config),
        i.state,
        i.state_reason,
        i.qrcode_base64,
        i.qrcode_code,
        i.pairing_code,
        json_encode(i.profile),
        i.created_at,
        i.updated_at,
    )


WEBHOOK_COLUMNS = (
    "id, tenant_id, url, events, secret, enabled, description, secret_previous, previous_valid_until,"
    " failing_since, disabled_reason, created_at, updated_at"
)


def webhook_from_row(row: Sequence[Any]) -> TenantWebhook:
    return TenantWebhook(
        id=row[0],
        tenant=row[1],
        url=row[2],
        events=list(msgspec.json.decode(row[3])),
        secret=row[4],
        enabled=bool(row[5]),
        description=row[6],
        secret_previous=row[7],
        previous_valid_until=row[8],
        failing_since=row[9],
        disabled_reason=row[10],
        created_at=row[11],
        updated_at=row[12],
    )


def webhook_row(w: TenantWebhook) -> tuple[Any, ...]:
    return (
        w.id,
        w.tenant,
        w.url,
        json_encode(w.events).decode(),
        w.secret,
        1 if w.enabled else 0,
        w.description,
        w.secret_previous,
        w.previous_valid_until,
        w.failing_since,
        w.disabled_reason,
        w.created_at,
        w.updated_at,
    )


def trace_from_row(r: Sequence[Any]) -> TraceRecord:
    """Columns: tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome, status_code, error."""
    return TraceRecord(
        tenant=r[0],
        message_id=r[1],
        job_id=r[2],
        stage=r[3],
        plugin=r[4],
        attempt=r[5],
        at=r[6],
        duration_ms=r[7],
        outcome=r[8],
        status_code=r[9],
        error=r[10],
    )


TRACE_COLUMNS = "tenant_id, message_id, job_id, stage, plugin, attempt, at, duration_ms, outcome, status_code, error"
INSERT_TRACE = f"INSERT INTO traces ({TRACE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def trace_row(r: TraceRecord, message_id: str | None = None) -> tuple[Any, ...]:
    return (
        r.tenant,
        message_id if message_id is not None else r.message_id,
        r.job_id,
        r.stage,
        r.plugin,
        r.attempt,
        r.at,
        r.duration_ms,
        r.outcome,
        r.status_code,
        r.error,
    )


def ingest_trace_rows(traces: Sequence[TraceRecord], outcome_id: str, accepted: bool) -> list[tuple[Any, ...]]:
    """Trace rows for a message insert: all against the stored id; dedup says what happened."""
    return stamp_ingest_rows([trace_row(t) for t in traces], outcome_id, accepted)


def stamp_ingest_rows(rows: Sequence[tuple[Any, ...]], outcome_id: str, accepted: bool) -> list[tuple[Any, ...]]:
    """:func:`trace_row` rows of a message insert set against the stored id (a duplicate's rows
    go to the message stored first), with the ``deduplicated`` row's outcome filled in."""
    stamped = []
    for row in rows:
        if row[3] == "deduplicated":
            stamped.append((row[0], outcome_id, *row[2:8], "new" if accepted else "duplicate", *row[9:]))
        else:
            stamped.append((row[0], outcome_id, *row[2:]))
    return stamped


def where(conditions: Sequence[tuple[str, str, Any]], mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """A WHERE body from (column, operator, value) triples, skipping None values.

    ``mark(n)`` renders the n-th (1-based) placeholder in the dialect: ``?`` or ``$n``.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for column, op, value in conditions:
        if value is not None:
            params.append(value)
            clauses.append(f"{column} {op} {mark(len(params))}")
    return " AND ".join(clauses) or "TRUE", params


def trace_conditions(
    tenant: str | None, message_id: str | None, outcome: str | None, since: str | None, until: str | None
) -> list[tuple[str, str, Any]]:
    return [
        ("tenant_id", "=", tenant),
        ("message_id", "=", message_id),
        ("outcome", "=", outcome),
        ("at", ">=", since),
        ("at", "<", until),
    ]
