"""The forms the hot SQLite writes take on their way to the writer process and back.

A write and its arguments are pickled into the writer process's socket, and its result pickled
back (:mod:`omni_core.store.sqlite_writer_process`). Pickle handles a msgspec Struct through its
generic reduce protocol, ~5x slower than a tuple of the same fields: for a frame of 25 ingest
writes, ~11 us per webhook each way with the jobs and trace records as Structs against ~2 us as
tuples, on each side of the socket. So the writes on every message's path (ingest, claim, the end
of a route job) take and return plain tuples, built and read back here on the hub's side.
The write functions stay usable on the writer thread (``OMNI_SQLITE_WRITER=thread``) unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omni_core.store.base import InsertOutcome, Job, NewJob
from omni_core.store.rows import message_from_row

#: A NewJob's fields in order: id, kind, lane, max_attempts, run_at, payload.
NewJobWire = tuple[str, str, str, int, float, dict[str, Any]]
#: A Job's fields in order, without its message (see :func:`job_wire`).
JobWire = tuple[Any, ...]
#: A claimed job and, when it has one, its message as stored: (body, status, external_id).
ClaimedWire = tuple[JobWire, tuple[bytes, str, str | None] | None]
#: What inserting a message did: (accepted, the stored message's id, the job leased at once or None).
InsertWire = tuple[bool, str, JobWire | None]


def new_job_wire(job: NewJob) -> NewJobWire:
    return (job.id, job.kind, job.lane, job.max_attempts, job.run_at, job.payload)


def new_jobs_wire(jobs: Sequence[NewJob]) -> list[NewJobWire]:
    return [(j.id, j.kind, j.lane, j.max_attempts, j.run_at, j.payload) for j in jobs]


def new_job_from_wire(w: NewJobWire) -> NewJob:
    return NewJob(id=w[0], kind=w[1], lane=w[2], max_attempts=w[3], run_at=w[4], payload=w[5])  # type: ignore[arg-type]


def job_wire(job: Job) -> JobWire:
    """Every field of ``job`` but its message, which never travels back: the caller has its own."""
    return (
        job.id,
        job.seq,
        job.tenant,
        job.kind,
        job.lane,
        job.message_id,
        job.status,
        job.attempts,
        job.max_attempts,
        job.run_at,
        job.lease_owner,
        job.lease_until,
        job.last_error,
        job.payload,
        job.created_at,
        job.updated_at,
    )


def job_from_wire(w: JobWire) -> Job:
    return Job(
        id=w[0],
        seq=w[1],
        tenant=w[2],
        kind=w[3],
        lane=w[4],
        message_id=w[5],
        status=w[6],
        attempts=w[7],
        max_attempts=w[8],
        run_at=w[9],
        lease_owner=w[10],
        lease_until=w[11],
        last_error=w[12],
        payload=w[13],
        created_at=w[14],
        updated_at=w[15],
    )


def insert_outcome_from_wire(w: InsertWire) -> InsertOutcome:
    accepted, message_id, leased = w
    return InsertOutcome(accepted=accepted, id=message_id, leased=None if leased is None else job_from_wire(leased))


def claimed_from_wire(claimed: Sequence[ClaimedWire]) -> list[Job]:
    """The claimed jobs, each with its message decoded here (a Message Struct is the slowest
    thing to pickle; its stored JSON body travels as bytes)."""
    jobs = []
    for w, stored in claimed:
        job = job_from_wire(w)
        if stored is not None:
            job.message = message_from_row(*stored)
        jobs.append(job)
    return jobs
