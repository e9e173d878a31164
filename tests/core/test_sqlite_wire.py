"""The tuple forms of jobs and trace rows that cross the SQLite writer process's socket."""

from __future__ import annotations

import pickle
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from omni_core.store.base import Job, NewJob, TraceRecord
from omni_core.store.rows import ingest_trace_rows, json_encode, message_from_row, stamp_ingest_rows, trace_row
from omni_core.store.sqlite_wire import (
    claimed_from_wire,
    insert_outcome_from_wire,
    job_from_wire,
    job_wire,
    new_job_from_wire,
    new_job_wire,
    new_jobs_wire,
)
from tests.core.test_store import msg

_text = st.text(max_size=12)
_maybe_text = st.none() | _text
_payload = st.dictionaries(_text, st.integers() | _text | st.none(), max_size=3)
_kinds = st.sampled_from(["route", "deliver", "webhook"])

new_jobs = st.builds(
    NewJob,
    id=_text,
    kind=_kinds,
    lane=_text,
    max_attempts=st.integers(1, 100),
    run_at=st.floats(allow_nan=False),
    payload=_payload,
)
jobs = st.builds(
    Job,
    id=_text,
    seq=st.integers(0, 2**62),
    tenant=_text,
    kind=_kinds,
    lane=_text,
    message_id=_maybe_text,
    status=st.sampled_from(["queued", "running", "done", "dead"]),
    attempts=st.integers(0, 100),
    max_attempts=st.integers(1, 100),
    run_at=st.floats(allow_nan=False),
    lease_owner=_maybe_text,
    lease_until=st.none() | st.floats(allow_nan=False),
    last_error=_maybe_text,
    payload=_payload,
    created_at=_text,
    updated_at=_text,
)


def _through_pickle(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


@given(new_jobs)
def test_a_new_job_survives_its_wire_form(job: NewJob) -> None:
    assert new_job_from_wire(_through_pickle(new_job_wire(job))) == job
    assert new_jobs_wire([job, job]) == [new_job_wire(job)] * 2


@given(jobs)
def test_a_job_survives_its_wire_form_without_its_message(job: Job) -> None:
    assert job_from_wire(_through_pickle(job_wire(job))) == job
    assert len(job_wire(job)) == len(Job.__struct_fields__) - 1  # every field but the message


@given(jobs)
def test_answers_become_the_store_results(job: Job) -> None:
    outcome = insert_outcome_from_wire(_through_pickle((True, "msg_1", job_wire(job))))
    assert outcome.accepted and outcome.id == "msg_1" and outcome.leased == job
    assert insert_outcome_from_wire((False, "msg_0", None)).leased is None
    claimed = claimed_from_wire(_through_pickle([(job_wire(job), None)]))
    assert claimed == [job] and claimed[0].message is None
    # A claimed job's message comes as its stored columns (body, status, external id) and is
    # decoded on this side into what the store would have read itself.
    message = msg(text="hello")
    stored = (json_encode(message), "processing", "ext-9")
    with_message = claimed_from_wire(_through_pickle([(job_wire(job), stored)]))
    assert with_message[0].message == message_from_row(*stored)
    assert with_message[0].message.status == "processing" and with_message[0].message.external_id == "ext-9"
    assert with_message[0].message.content.text == "hello"


@given(
    st.lists(
        st.builds(
            TraceRecord,
            tenant=_text,
            stage=st.sampled_from(["received", "normalized", "deduplicated"]),
            outcome=_text,
            at=_text,
            message_id=_maybe_text,
            plugin=_maybe_text,
            duration_ms=st.none() | st.floats(allow_nan=False),
        ),
        max_size=4,
    ),
    st.booleans(),
)
def test_ingest_rows_stamped_on_the_writer_side_match_the_records_stamped_before(
    traces: list[TraceRecord], accepted: bool
) -> None:
    expected = [
        trace_row(
            msgspec.structs.replace(t, outcome="new" if accepted else "duplicate") if t.stage == "deduplicated" else t,
            message_id="msg_stored",
        )
        for t in traces
    ]
    assert stamp_ingest_rows([trace_row(t) for t in traces], "msg_stored", accepted) == expected
    assert ingest_trace_rows(traces, "msg_stored", accepted) == expected
