"""PostgreSQL ingest group commit (omni_core.store.postgres_ingest): batches, failures, close.

What a batch answers (dedup, jobs, trace rows, chat order) is covered on both stores in
test_store.py; these tests pin what is PostgreSQL's own: how messages are grouped into
statements, that one bad message fails only itself, and that nothing queued is lost at close.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from omni_core.store.base import Store, TraceRecord
from omni_core.store.postgres import PostgresStore
from omni_core.store.postgres_ingest import IngestBatcher, PendingIngest, batch_arguments
from omni_core.store.rows import message_row
from tests.core.test_store import NOW, job_for, msg
from tests.pg import acreate_database, adrop_database
from tests.store_fixtures import seed_tenants

on_postgres = pytest.mark.parametrize("store", ["postgres"], indirect=True)


def _batcher(store: Store) -> IngestBatcher:
    assert isinstance(store, PostgresStore)
    return store._require_ingest()


@on_postgres
async def test_webhooks_arriving_together_share_one_statement(store: Store) -> None:
    batcher = _batcher(store)
    before = batcher.statements
    messages = [msg(chat=f"c{i % 7}", external_id=f"E{i}") for i in range(40)]
    outs = await asyncio.gather(*(store.insert_message(m, job_for(m), NOW) for m in messages))
    assert all(o.accepted for o in outs) and [o.id for o in outs] == [m.id for m in messages]
    # All forty were queued in one pass of the event loop: one statement stored them.
    assert batcher.statements - before == 1
    claimed = await store.claim_jobs("w", 100, time.time(), 30)
    assert sorted(str(j.message_id) for j in claimed) == sorted(m.id for m in messages[:7])  # lane heads


@on_postgres
async def test_two_copies_of_a_webhook_never_share_a_statement(store: Store) -> None:
    batcher = _batcher(store)
    before = batcher.statements
    first, copy, other = msg(external_id="TWICE"), msg(external_id="TWICE"), msg(external_id="ONCE")
    outs = await asyncio.gather(*(store.insert_message(m, job_for(m), NOW) for m in (first, copy, other)))
    assert [o.accepted for o in outs] == [True, False, True]
    assert outs[1].id == first.id
    assert batcher.statements - before == 2  # the copy went in the next statement
    assert await store.get_message(copy.id) is None


@on_postgres
async def test_a_message_the_database_refuses_fails_alone(store: Store) -> None:
    batcher = _batcher(store)
    good = [msg(external_id=f"G{i}") for i in range(5)]
    bad = msg(chat="nul\x00byte", external_id="BAD")  # PostgreSQL text cannot hold a NUL character
    results = await asyncio.gather(
        *(store.insert_message(m, job_for(m), NOW) for m in [*good[:2], bad, *good[2:]]), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and results[2] is errors[0]
    for m in good:
        assert await store.get_message(m.id) is not None
    assert await store.get_message(bad.id) is None
    assert batcher.statements >= 6  # the failed batch, then each message alone


@on_postgres
async def test_a_caller_that_gave_up_before_its_batch_left_stores_nothing(store: Store) -> None:
    kept, dropped = msg(external_id="KEPT"), msg(external_id="DROPPED")
    batcher = _batcher(store)
    traces = [TraceRecord(tenant="t1", stage="received", outcome="ok", at=NOW)]
    stay = batcher.submit(message_row(kept, NOW), [job_for(kept)], traces)
    gone = batcher.submit(message_row(dropped, NOW), [job_for(dropped)], traces)
    gone.cancel()
    assert await stay == (kept.id, True)
    assert await store.get_message(dropped.id) is None
    assert [t.stage for t in await store.traces_for_message(kept.id)] == ["received"]


async def test_closing_the_store_stores_what_was_queued_first() -> None:
    url = await acreate_database()  # its own store: this test closes it
    try:
        s = PostgresStore(url, pool_size=3)
        await s.open()
        await seed_tenants(s)
        messages = [msg(external_id=f"Q{i}") for i in range(30)]
        pending = [asyncio.ensure_future(s.insert_message(m, job_for(m), NOW)) for m in messages]
        await asyncio.sleep(0)  # queued in the batcher, not yet sent
        await s.close()
        assert all(p.done() and p.result().accepted for p in pending)
        await s.open()
        try:
            for m in messages:
                assert await s.get_message(m.id) is not None
        finally:
            await s.close()
    finally:
        await adrop_database(url)


def test_batch_arguments_are_column_arrays_with_each_row_s_position() -> None:
    loop = asyncio.new_event_loop()
    try:
        a, b = msg(external_id="A"), msg(external_id="B")
        trace = TraceRecord(tenant="t1", stage="received", outcome="ok", at=NOW)
        batch = [
            PendingIngest(message_row(a, NOW), [job_for(a), job_for(a)], [trace], loop.create_future()),
            PendingIngest(message_row(b, NOW), [], [trace, trace], loop.create_future()),
        ]
        args = batch_arguments(batch)
    finally:
        loop.close()
    assert len(args) == 30
    assert args[0] == [a.id, b.id] and args[5] == ["A", "B"]
    assert args[12] == [1, 1]  # both jobs belong to the first message
    assert args[18] == ["{}", "{}"]  # payloads as JSON text
    assert args[19] == [1, 2, 2]  # trace rows: one of the first message, two of the second
    assert batch[0].key == ("t1", "i1", "A")


class _DownPool:
    """A pool whose database is unreachable: every statement fails with a connection error."""

    def __init__(self) -> None:
        self.statements = 0

    async def fetch(self, *_: object) -> list[object]:
        self.statements += 1
        raise ConnectionRefusedError("connection refused")


async def test_an_unreachable_database_fails_the_batch_once_not_message_by_message() -> None:
    """Retrying each message alone is for a message the database refuses; when the database is
    down it would only multiply the wait, so the whole batch fails at once with the error."""
    pool = _DownPool()
    batcher = IngestBatcher(pool, unavailable=lambda exc: isinstance(exc, ConnectionRefusedError))
    messages = [msg(external_id=f"D{i}") for i in range(4)]
    futures = [batcher.submit(message_row(m, NOW), [job_for(m)], []) for m in messages]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert pool.statements == 1
    await batcher.drain()
