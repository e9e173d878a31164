"""The stores (SQLite and PostgreSQL): dedup, lanes (per-chat order), leases, batching, dead-job retry."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omni_core.entities import Instance
from omni_core.ids import new_id
from omni_core.model import Chat, Content, Message, Sender, iso, utcnow
from omni_core.pipeline import lane_for
from omni_core.store.base import HistoryQuery, Lease, NewJob, Store, TraceRecord
from omni_core.store.postgres import INSERT_MESSAGE_PG, PostgresStore
from omni_core.store.rows import message_row
from omni_core.store.sqlite import SqliteStore, StoreLockedError
from tests.store_fixtures import seed_tenants
from tests.writer_ops import FileGate, wait_for_file

NOW = "2026-01-01T00:00:00.000Z"


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "hub.db"))
    await s.open()
    await seed_tenants(s)
    yield s
    await s.close()


def msg(tenant: str = "t1", chat: str = "c1", external_id: str | None = None, text: str = "hi") -> Message:
    return Message(
        id=new_id("msg"),
        source="whatsapp",
        tenant=tenant,
        instance="i1",
        direction="inbound",
        external_id=external_id,
        chat=Chat(id=chat),
        sender=Sender(id="u1"),
        content=Content(text=text),
        timestamp=iso(utcnow()),
        status="queued",
    )


def job_for(m: Message, run_at: float | None = None) -> NewJob:
    return NewJob(
        id=new_id("job"),
        kind="route",
        lane=lane_for("route", m.tenant, m.instance, m.chat.id),
        max_attempts=3,
        run_at=time.time() if run_at is None else run_at,
    )


async def test_dedup_on_external_id_is_per_tenant(store: Store) -> None:
    a = await store.insert_message(msg(external_id="X"), None, NOW)
    b = await store.insert_message(msg(external_id="X"), None, NOW)
    c = await store.insert_message(msg(tenant="t2", external_id="X"), None, NOW)
    assert a.accepted and not b.accepted and b.id == a.id
    assert c.accepted and c.id != a.id


async def test_duplicate_enqueues_no_second_job(store: Store) -> None:
    first = msg(external_id="E1")
    await store.insert_message(first, job_for(first), NOW)
    again = msg(external_id="E1")
    out = await store.insert_message(again, job_for(again), NOW)
    assert not out.accepted
    claimed = await store.claim_jobs("w", 10, time.time(), 30)
    assert [j.message_id for j in claimed] == [first.id]


async def test_only_the_head_of_a_lane_is_claimable(store: Store) -> None:
    chat_a = [msg(chat="a") for _ in range(3)]
    chat_b = [msg(chat="b") for _ in range(2)]
    for m in [*chat_a, *chat_b]:
        await store.insert_message(m, job_for(m), NOW)
    first = await store.claim_jobs("w", 10, time.time(), 30)
    assert sorted(str(j.message_id) for j in first) == sorted([chat_a[0].id, chat_b[0].id])
    assert await store.claim_jobs("w", 10, time.time(), 30) == []
    done = next(j for j in first if j.message_id == chat_a[0].id)
    assert await store.finish_route(done, "forwarded", [], NOW)
    nxt = await store.claim_jobs("w", 10, time.time(), 30)
    assert [j.message_id for j in nxt] == [chat_a[1].id]


async def test_a_lane_waits_for_its_head_in_backoff(store: Store) -> None:
    m1, m2 = msg(chat="a"), msg(chat="a")
    await store.insert_message(m1, job_for(m1), NOW)
    await store.insert_message(m2, job_for(m2), NOW)
    [j1] = await store.claim_jobs("w", 10, time.time(), 30)
    assert await store.retry_later(j1, "boom", time.time() + 60, NOW)
    # m2 must not overtake m1 while m1 waits for its retry.
    assert await store.claim_jobs("w", 10, time.time(), 30) == []


async def test_expired_lease_is_claimable_again(store: Store) -> None:
    m = msg()
    await store.insert_message(m, job_for(m), NOW)
    [j] = await store.claim_jobs("dead-worker", 10, time.time(), 0.01)
    await asyncio.sleep(0.05)
    [again] = await store.claim_jobs("w2", 10, time.time(), 30)
    assert again.id == j.id and again.attempts == 2
    # The first worker lost its lease: its late completion must not count.
    assert not await store.finish_route(j, "forwarded", [], NOW)
    assert await store.finish_route(again, "forwarded", [], NOW)


async def test_recover_leases_releases_other_owners(sqlite_store: SqliteStore) -> None:
    # Only the single-owner SQLite store may release leases at start-up; PostgreSQL waits for expiry.
    store = sqlite_store
    m = msg()
    await store.insert_message(m, job_for(m), NOW)
    await store.claim_jobs("oldhost:1:abc", 10, time.time(), 300)
    assert await store.recover_leases("newhost:2:") == 1
    assert len(await store.claim_jobs("newhost:2:x", 10, time.time(), 30)) == 1


async def test_bury_and_requeue_goes_to_back_of_lane(store: Store) -> None:
    m1, m2 = msg(chat="a"), msg(chat="a")
    await store.insert_message(m1, job_for(m1), NOW)
    [j1] = await store.claim_jobs("w", 10, time.time(), 30)
    assert await store.bury(j1, "agent said 400", "failed", NOW)
    await store.insert_message(m2, job_for(m2), NOW)
    fresh = await store.requeue_dead(j1.id, time.time(), NOW)
    assert fresh is not None and fresh.status == "queued" and fresh.attempts == 0
    order = []
    for _ in range(2):
        [j] = await store.claim_jobs("w", 10, time.time(), 30)
        order.append(j.message_id)
        await store.finish_route(j, "forwarded", [], NOW)
    assert order == [m2.id, m1.id]
    assert await store.requeue_dead(j1.id, time.time(), NOW) is None  # not dead any more


async def test_group_commit_isolates_a_failing_write(store: Store) -> None:
    good = [msg(external_id=f"g{i}") for i in range(20)]
    orphan = msg()
    bad_job = job_for(orphan)
    bad_job.max_attempts = None  # type: ignore[assignment]  # NOT NULL violation inside the batch
    results = await asyncio.gather(
        *[store.insert_message(m, job_for(m), NOW) for m in good[:10]],
        store.insert_message(orphan, bad_job, NOW),
        *[store.insert_message(m, job_for(m), NOW) for m in good[10:]],
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    for m in good:
        assert await store.get_message(m.id) is not None
    assert await store.get_message(orphan.id) is None


async def test_status_never_goes_backwards(store: Store) -> None:
    m = msg(external_id="OUT1")
    m.direction = "outbound"
    await store.insert_message(m, None, NOW)
    assert await store.apply_status("t1", "i1", "OUT1", "read", NOW) == m.id
    await store.apply_status("t1", "i1", "OUT1", "delivered", NOW)
    got = await store.get_message(m.id)
    assert got is not None and got.status == "read"
    assert await store.apply_status("t2", "i1", "OUT1", "read", NOW) is None


async def test_history_pages_newest_first(store: Store) -> None:
    ids = []
    for i in range(7):
        m = msg(text=str(i))
        ids.append(m.id)
        await store.insert_message(m, None, NOW)
    page1 = await store.history(HistoryQuery(tenant="t1", limit=3))
    assert [m.id for m in page1.messages] == ids[::-1][:3]
    page2 = await store.history(HistoryQuery(tenant="t1", limit=3, before_id=page1.next_before_id))
    page3 = await store.history(HistoryQuery(tenant="t1", limit=3, before_id=page2.next_before_id))
    assert [m.id for m in page2.messages + page3.messages] == ids[::-1][3:]
    assert page3.next_before_id is None
    assert (await store.history(HistoryQuery(tenant="t2"))).messages == []


def _outbound_with_deliver(store: Store, chat: str = "a") -> tuple[Message, NewJob]:
    out = msg(chat=chat)
    out.direction = "outbound"
    return out, NewJob(id=new_id("job"), kind="deliver", lane=f"d-{chat}", max_attempts=3, run_at=0)


async def test_finish_deliver_records_the_send_its_traces_and_its_event_jobs(store: Store) -> None:
    out, deliver = _outbound_with_deliver(store)
    await store.insert_message(out, deliver, NOW)
    [job] = await store.claim_jobs("w", 10, time.time(), 30)
    trace = TraceRecord(tenant="t1", stage="deliver", outcome="ok", at=NOW, message_id=out.id, job_id=job.id)
    events = [
        NewJob(id=new_id("job"), kind="webhook", lane=f"wh-{i}", max_attempts=5, run_at=0, payload={"n": i})
        for i in range(2)
    ]
    assert await store.finish_deliver(job, "WA-9", "sent", NOW, events, [trace])
    got = await store.get_message(out.id)
    assert got is not None and got.status == "sent" and got.external_id == "WA-9"
    assert [t.stage for t in await store.traces_for_message(out.id)] == ["deliver"]
    jobs = {j.id: j for j in await store.jobs_for_message(out.id)}
    assert jobs[job.id].status == "done" and jobs[job.id].lease_owner is None
    assert [(jobs[e.id].kind, jobs[e.id].status, jobs[e.id].payload) for e in events] == [
        ("webhook", "queued", {"n": 0}),
        ("webhook", "queued", {"n": 1}),
    ]
    # The same job finished again (its lease is gone): nothing more is written.
    assert not await store.finish_deliver(job, "WA-X", "read", NOW, events[:1], [trace])
    again = await store.get_message(out.id)
    assert again is not None and again.status == "sent" and again.external_id == "WA-9"
    assert len(await store.traces_for_message(out.id)) == 1
    assert len(await store.jobs_for_message(out.id)) == 3


async def test_finishing_a_webhook_delivery_leaves_its_message_alone(store: Store) -> None:
    out, deliver = _outbound_with_deliver(store)
    hook = NewJob(id=new_id("job"), kind="webhook", lane="wh", max_attempts=5, run_at=0)
    await store.insert_message(out, deliver, NOW, extra_jobs=[hook])
    claimed = {j.kind: j for j in await store.claim_jobs("w", 10, time.time(), 30)}
    extra = NewJob(id=new_id("job"), kind="webhook", lane="wh2", max_attempts=5, run_at=0)
    before = await store.get_message(out.id)
    assert await store.finish_deliver(claimed["webhook"], "WA-1", "sent", NOW, [extra])
    got = await store.get_message(out.id)
    assert before is not None and got is not None
    assert (got.status, got.external_id) == (before.status, None)
    assert extra.id not in {j.id for j in await store.jobs_for_message(out.id)}


async def test_finish_deliver_folds_in_an_early_echo(store: Store) -> None:
    out = msg(chat="a")
    out.direction = "outbound"
    await store.insert_message(out, NewJob(id=new_id("job"), kind="deliver", lane="d", max_attempts=3, run_at=0), NOW)
    [job] = await store.claim_jobs("w", 10, time.time(), 30)
    echo = msg(chat="a", external_id="WA1")
    echo.direction, echo.status = "outbound", "sent"
    await store.insert_message(echo, None, NOW)  # the platform's webhook beat our send's response
    assert await store.finish_deliver(job, "WA1", "sent", NOW)
    assert await store.get_message(echo.id) is None
    got = await store.get_message(out.id)
    assert got is not None and got.external_id == "WA1" and got.status == "sent"


async def test_second_process_cannot_open_the_same_file(sqlite_store: SqliteStore) -> None:
    other = SqliteStore(sqlite_store.path)
    with pytest.raises(StoreLockedError):
        await other.open()


async def test_delete_tenant_removes_its_data(store: Store) -> None:
    m = msg()
    await store.insert_message(m, job_for(m), NOW)
    await store.create_instance(
        Instance(id="ins_1", tenant="t1", name="i1", channel="whatsapp", created_at=NOW, updated_at=NOW)
    )
    assert await store.delete_tenant("t1")
    assert await store.get_message(m.id) is None
    assert await store.get_instance("ins_1") is None
    assert await store.claim_jobs("w", 10, time.time(), 30) == []


async def test_claim_keeps_each_tenant_within_its_share(store: Store) -> None:
    # Tenant t1 has 6 chats waiting and t2 has 2; with a share of 3, t1 gets 3 and t2 both.
    t1 = [msg(tenant="t1", chat=f"a{i}") for i in range(6)]
    t2 = [msg(tenant="t2", chat=f"b{i}") for i in range(2)]
    for m in [*t1, *t2]:
        await store.insert_message(m, job_for(m), NOW)
    claimed = await store.claim_jobs("w", 10, time.time(), 30, busy={}, tenant_cap=3)
    assert sorted(j.tenant for j in claimed) == ["t1", "t1", "t1", "t2", "t2"]
    # With t1 already running 3 here, it gets nothing more until one finishes.
    assert await store.claim_jobs("w", 10, time.time(), 30, busy={"t1": 3, "t2": 2}, tenant_cap=3) == []


async def test_concurrent_claims_never_lease_one_job_twice(store: Store) -> None:
    # Four claimers at once (on PostgreSQL each on its own connection, as replicas would be):
    # every job is leased exactly once, and each comes back with its message.
    messages = [msg(chat=f"c{i}") for i in range(40)]
    for m in messages:
        await store.insert_message(m, job_for(m), NOW)
    leased: list[str] = []
    for _ in range(10):
        rounds = await asyncio.gather(*(store.claim_jobs(f"w{i}", 7, time.time(), 30) for i in range(4)))
        got = [job for jobs in rounds for job in jobs]
        assert all(job.message is not None and job.message.id == job.message_id for job in got)
        assert all(job.status == "running" and job.attempts == 1 for job in got)
        leased += [job.id for job in got]
        if not got:
            break
    assert len(leased) == len(set(leased)) == len(messages)


def reply_to(source: Message, text: str = "answer") -> tuple[Message, list[NewJob]]:
    reply = msg(tenant=source.tenant, chat=source.chat.id, text=text)
    reply.direction, reply.status = "outbound", "queued"
    deliver = NewJob(
        id=new_id("job"),
        kind="deliver",
        lane=lane_for("deliver", reply.tenant, reply.instance, reply.chat.id),
        max_attempts=3,
        run_at=time.time(),
    )
    return reply, [deliver]


async def test_claim_loads_the_jobs_messages(store: Store) -> None:
    m = msg(text="loaded with the lease")
    await store.insert_message(m, job_for(m), NOW)
    [job] = await store.claim_jobs("w", 10, time.time(), 30)
    assert job.message is not None
    assert job.message.id == m.id and job.message.content.text == "loaded with the lease"
    assert job.message.status == "processing"
    assert "message" not in job.public()


async def test_finishing_a_route_job_hands_the_reply_to_the_same_worker(store: Store) -> None:
    m = msg()
    await store.insert_message(m, job_for(m), NOW)
    [route] = await store.claim_jobs("w", 10, time.time(), 30)
    reply, jobs = reply_to(m)
    until = time.time() + 30
    done = await store.finish_route(route, "forwarded", [(reply, jobs)], NOW, hand_off=Lease("w", until))
    assert done.ok and done.next_job is not None
    handed = done.next_job
    assert handed.id == jobs[0].id and handed.kind == "deliver" and handed.status == "running"
    assert handed.lease_owner == "w" and handed.lease_until == until and handed.attempts == 1
    assert handed.message is not None and handed.message.id == reply.id
    # Stored as leased: nobody else claims it, and the lease checks of finishing apply to it.
    assert await store.claim_jobs("other", 10, time.time(), 30) == []
    stored = await store.get_job(handed.id)
    assert stored is not None and stored.status == "running" and stored.lease_owner == "w"
    assert stored.seq == handed.seq
    got = await store.get_message(reply.id)
    assert got is not None and got.status == "processing"
    assert await store.finish_deliver(handed, "WA-1", "sent", NOW)
    sent = await store.get_message(reply.id)
    assert sent is not None and sent.status == "sent" and sent.external_id == "WA-1"


async def test_no_hand_off_while_the_chat_has_a_send_pending(store: Store) -> None:
    first, second = msg(), msg()
    await store.insert_message(first, job_for(first), NOW)
    await store.insert_message(second, job_for(second), NOW)
    [route1] = await store.claim_jobs("w", 10, time.time(), 30)
    reply1, jobs1 = reply_to(first)
    # No hand-off asked: the reply's send is queued for any worker.
    done1 = await store.finish_route(route1, "forwarded", [(reply1, jobs1)], NOW)
    assert done1.ok and done1.next_job is None
    claimed = await store.claim_jobs("w", 10, time.time(), 30)
    route2 = next(j for j in claimed if j.kind == "route")
    assert any(j.id == jobs1[0].id for j in claimed)  # the first send, running elsewhere
    reply2, jobs2 = reply_to(second)
    done2 = await store.finish_route(route2, "forwarded", [(reply2, jobs2)], NOW, hand_off=Lease("w", time.time() + 30))
    # The chat's earlier send still runs: handing this one over would overtake it.
    assert done2.ok and done2.next_job is None
    queued = await store.get_job(jobs2[0].id)
    assert queued is not None and queued.status == "queued"


async def test_a_lost_lease_hands_nothing_off_and_writes_nothing(store: Store) -> None:
    m = msg()
    await store.insert_message(m, job_for(m), NOW)
    [route] = await store.claim_jobs("dead-worker", 10, time.time(), 0.01)
    await asyncio.sleep(0.05)
    [again] = await store.claim_jobs("w2", 10, time.time(), 30)
    reply, jobs = reply_to(m)
    done = await store.finish_route(route, "forwarded", [(reply, jobs)], NOW, hand_off=Lease("dead-worker", 1e12))
    assert not done and done.next_job is None
    assert await store.get_message(reply.id) is None
    assert await store.get_job(jobs[0].id) is None
    assert again.id == route.id


async def test_finishing_writes_the_attempts_trace_rows_with_the_outcome(store: Store) -> None:
    m = msg()
    await store.insert_message(m, job_for(m), NOW)
    [route] = await store.claim_jobs("w", 10, time.time(), 30)
    rows = [
        TraceRecord(tenant="t1", stage=stage, outcome="ok", at=NOW, message_id=m.id, job_id=route.id)
        for stage in ("routed", "agent_response", "agent_request")
    ]
    assert await store.finish_route(route, "forwarded", [], NOW, traces=rows)
    assert [t.stage for t in await store.traces_for_message(m.id)] == ["routed", "agent_response", "agent_request"]
    # A finish that lost its lease leaves no trace rows either.
    assert not await store.finish_route(route, "forwarded", [], NOW, traces=rows)
    assert len(await store.traces_for_message(m.id)) == 3


async def test_a_new_message_can_be_stored_with_its_job_leased_to_a_worker(store: Store) -> None:
    m = msg(text="start me now")
    until = time.time() + 30
    out = await store.insert_message(m, job_for(m), NOW, lease=Lease("w", until))
    assert out.accepted and out.leased is not None
    job = out.leased
    assert job.status == "running" and job.lease_owner == "w" and job.lease_until == until and job.attempts == 1
    assert job.message is not None and job.message.content.text == "start me now"
    assert job.message.status == "processing"
    stored = await store.get_message(m.id)
    assert stored is not None and stored.status == "processing"
    assert await store.claim_jobs("other", 10, time.time(), 30) == []
    assert await store.finish_route(job, "forwarded", [], NOW)


async def test_a_leased_insert_queues_instead_behind_the_chats_pending_job(store: Store) -> None:
    first, second = msg(), msg()
    await store.insert_message(first, job_for(first), NOW)
    out = await store.insert_message(second, job_for(second), NOW, lease=Lease("w", time.time() + 30))
    assert out.accepted and out.leased is None
    stored = await store.get_message(second.id)
    assert stored is not None and stored.status == "queued"
    [head] = await store.claim_jobs("w", 10, time.time(), 30)
    assert head.message_id == first.id  # order kept: the second waits for the first


async def test_a_duplicate_with_a_lease_leases_nothing(store: Store) -> None:
    m = msg(external_id="DUP")
    await store.insert_message(m, job_for(m), NOW)
    [j] = await store.claim_jobs("w", 10, time.time(), 30)
    assert await store.finish_route(j, "forwarded", [], NOW)
    again = msg(external_id="DUP")
    out = await store.insert_message(again, job_for(again), NOW, lease=Lease("w", time.time() + 30))
    assert not out.accepted and out.leased is None and out.id == m.id


async def test_claims_take_finishing_work_oldest_first_across_kinds_before_routing(store: Store) -> None:
    m = msg()
    route = job_for(m)
    await store.insert_message(m, route, NOW)  # enqueued first, yet claimed last
    kinds: list[Any] = ["webhook", "deliver", "webhook", "deliver", "webhook"]
    finishing = [
        NewJob(id=new_id("job"), kind=kind, lane=f"{kind}\x1f{i}", max_attempts=3, run_at=time.time())
        for i, kind in enumerate(kinds)
    ]
    for job in finishing:
        await store.enqueue_jobs("t1", m.id, [job], NOW)
    first = await store.claim_jobs("w", 3, time.time(), 30)
    assert [j.id for j in first] == [j.id for j in finishing[:3]]
    rest = await store.claim_jobs("w", 10, time.time(), 30)
    assert [j.id for j in rest] == [finishing[3].id, finishing[4].id, route.id]


async def test_only_a_store_with_serialized_writes_is_offered_direct_dispatch(store: Store) -> None:
    # PostgreSQL commits concurrent ingests side by side: a lane check cannot see an uncommitted
    # job of the same chat, so the pipeline never stores new jobs leased there.
    assert store.serialized_writes is isinstance(store, SqliteStore)


async def test_webhooks_stored_together_keep_dedup_order_and_traces(store: Store) -> None:
    """Many inserts at once (one group-commit batch on SQLite, multi-row statements): the same
    answers as one at a time, including duplicates inside the batch and of stored messages."""
    stored_before = msg(external_id="OLD")
    await store.insert_message(stored_before, job_for(stored_before), NOW)
    [old_job] = await store.claim_jobs("w", 10, time.time(), 30)
    assert await store.finish_route(old_job, "forwarded", [], NOW)

    chats = ["a", "b", "a", "c", "a"]
    batch = [msg(chat=c, external_id=f"N{i}", text=f"m{i}") for i, c in enumerate(chats)]
    batch.insert(2, msg(chat="a", external_id="N0"))  # duplicates one earlier in the same batch
    batch.append(msg(chat="b", external_id="OLD"))  # duplicates a stored one
    batch.append(msg(chat="d"))  # no external id: never a duplicate

    def traces(m: Message) -> list[TraceRecord]:
        return [TraceRecord(tenant="t1", stage=s, outcome="ok", at=NOW) for s in ("received", "deduplicated")]

    leased = msg(chat="e")
    outs = await asyncio.gather(
        *(store.insert_message(m, job_for(m), NOW, traces=traces(m)) for m in batch),
        store.insert_message(leased, job_for(leased), NOW, lease=Lease("w", time.time() + 30)),
    )
    *plain, leased_out = outs
    accepted = [m for m, out in zip(batch, plain, strict=True) if out.accepted]
    # On PostgreSQL concurrent inserts commit in any order: either copy of N0 may come first.
    assert sorted(m.external_id or "" for m in accepted) == ["", "N0", "N1", "N2", "N3", "N4"]
    assert plain[0].id == plain[2].id and plain[0].accepted != plain[2].accepted
    if store.serialized_writes:  # SQLite: one batch, in submission order
        assert [m.content.text for m in accepted] == ["m0", "m1", "m2", "m3", "m4", "hi"]
    assert plain[-2].id == stored_before.id and not plain[-2].accepted
    assert leased_out.accepted and leased_out.leased is not None
    for m, out in zip(batch, plain, strict=True):
        assert [t.stage for t in await store.traces_for_message(out.id)][-2:] == ["received", "deduplicated"]
        if out.accepted:
            assert (await store.get_message(m.id)) is not None
    # One job per accepted message, each chat's jobs in arrival order.
    seen: list[str | None] = []
    while claimed := await store.claim_jobs("w", 50, time.time(), 30):
        for job in claimed:
            seen.append(job.message_id)
            assert await store.finish_route(job, "forwarded", [], NOW)
    assert sorted(str(s) for s in seen) == sorted(m.id for m in accepted)
    if store.serialized_writes:
        chat_a = [m.id for m in accepted if m.chat.id == "a"]
        assert [s for s in seen if s in chat_a] == chat_a


async def test_one_webhook_delivered_many_times_at_once_is_stored_once(store: Store) -> None:
    """The same message arriving on many connections at once (a sender's retries racing): one is
    accepted with one job; every other answer is a duplicate naming it, its trace rows on it. On
    PostgreSQL some inserts run while another commits the message (their statement cannot see it
    yet) and take the fallback path."""
    copies = [msg(external_id="RACE") for _ in range(24)]
    outs = await asyncio.gather(
        *(
            store.insert_message(
                m,
                job_for(m),
                NOW,
                traces=[
                    TraceRecord(tenant="t1", stage=s, outcome="pending", at=NOW) for s in ("received", "deduplicated")
                ],
            )
            for m in copies
        )
    )
    assert sum(out.accepted for out in outs) == 1
    [winner] = [m for m, out in zip(copies, outs, strict=True) if out.accepted]
    assert {out.id for out in outs} == {winner.id}
    dedup = [t.outcome for t in await store.traces_for_message(winner.id) if t.stage == "deduplicated"]
    assert sorted(dedup) == ["duplicate"] * 23 + ["new"]
    assert [j.message_id for j in await store.claim_jobs("w", 50, time.time(), 30)] == [winner.id]


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_postgres_a_duplicate_committed_while_the_insert_waits_is_found(store: Store) -> None:
    """PostgreSQL's one-statement ingest cannot see a copy another transaction commits while the
    statement waits on the unique index; it then takes the general path and answers duplicate."""
    assert isinstance(store, PostgresStore)
    first, second = msg(external_id="HELD"), msg(external_id="HELD")
    pool = store._require_pool()
    async with pool.acquire() as conn:
        holding = conn.transaction()
        await holding.start()
        await conn.execute(INSERT_MESSAGE_PG, *message_row(first, NOW))
        waiting = asyncio.create_task(store.insert_message(second, job_for(second), NOW))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # blocked on the held row
        await holding.commit()
    out = await asyncio.wait_for(waiting, 10)
    assert not out.accepted and out.id == first.id
    assert await store.claim_jobs("w", 10, time.time(), 30) == []


async def test_one_sqlite_batch_of_inserts_with_duplicates_answers_like_one_at_a_time(
    sqlite_store: SqliteStore,
) -> None:
    old = msg(external_id="OLD")
    await sqlite_store.insert_message(old, job_for(old), NOW)
    writer = sqlite_store._writer
    assert writer is not None
    gate = FileGate(Path(sqlite_store.path).parent)
    blocked = writer.write(wait_for_file, gate.path)  # the next writes queue up into one batch
    await asyncio.sleep(0.05)
    batch = [msg(external_id="A"), msg(external_id="OLD"), msg(external_id="A"), msg(external_id="B"), msg()]
    pending = [asyncio.ensure_future(sqlite_store.insert_message(m, job_for(m), NOW)) for m in batch]
    await asyncio.sleep(0.05)
    gate.open()
    assert await blocked is True
    outs = await asyncio.gather(*pending)
    assert [o.accepted for o in outs] == [True, False, False, True, True]
    assert [o.id for o in outs] == [batch[0].id, old.id, batch[0].id, batch[3].id, batch[4].id]
    assert await sqlite_store.get_message(batch[2].id) is None
    claimed = await sqlite_store.claim_jobs("w", 50, time.time(), 30)
    assert [j.message_id for j in claimed] == [old.id]  # one chat: the lane's head only


async def test_sqlite_indexes_serve_the_job_trace_lookup_and_drop_the_unused_one(sqlite_store: SqliteStore) -> None:
    # The statement traces_for_jobs runs (the deliveries listing): an index search, not a scan.
    plan = await sqlite_store._read(
        lambda db: db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM traces WHERE job_id IN (?, ?) ORDER BY id", ("job_a", "job_b")
        ).fetchall()
    )
    assert any(row[3].startswith("SEARCH traces USING") and "INDEX traces_job" in row[3] for row in plan), plan
    indexes = await sqlite_store._read(
        lambda db: {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    )
    assert "jobs_queued" not in indexes and "jobs_queued_kind" in indexes


async def test_recent_messages_are_the_chats_last_in_order(store: Store) -> None:
    """The agent's context: the newest ``limit`` messages of one chat of one tenant, oldest first."""
    sent = [msg(chat="c1", text=f"m{i}") for i in range(6)]
    for m in [*sent[:3], msg(chat="c2"), msg(tenant="t2", chat="c1"), *sent[3:]]:
        await store.insert_message(m, None, NOW)
    recent = await store.recent_messages("t1", "i1", "c1", 4)
    assert [m.content.text for m in recent] == ["m2", "m3", "m4", "m5"]
    assert [m.id for m in await store.recent_messages("t1", "i1", "c1", 10)] == [m.id for m in sent]
    assert await store.recent_messages("t1", "other-instance", "c1", 10) == []


async def test_point_reads_see_every_committed_write_at_once(sqlite_store: SqliteStore) -> None:
    """Point reads run on the event loop's own connection: each sees what the writer committed
    before it was called (read after write, no lag behind the reader thread)."""
    for i in range(20):
        m = msg(chat="c1", text=f"m{i}")
        await sqlite_store.insert_message(m, None, NOW)
        got = await sqlite_store.get_message(m.id)
        assert got is not None and got.content.text == f"m{i}"
        assert (await sqlite_store.recent_messages("t1", "i1", "c1", 1))[0].id == m.id


class _LockedFirst(sqlite3.Connection):
    """A real connection whose first ``locks`` statements meet a lock, as a point read can when
    another connection is recovering the WAL index."""

    locks = 0
    met = 0

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if type(self).met < type(self).locks:
            type(self).met += 1
            raise sqlite3.OperationalError("database is locked")
        return super().execute(sql, parameters)


async def test_a_point_read_that_meets_a_lock_is_retried_on_the_reader_thread(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    m = msg(text="kept")
    await sqlite_store.insert_message(m, None, NOW)
    _LockedFirst.locks, _LockedFirst.met = 1, 0
    locked = sqlite3.connect(str(tmp_path / "hub.db"), isolation_level=None, factory=_LockedFirst)
    previous, sqlite_store._point_reader = sqlite_store._point_reader, locked
    try:
        got = await sqlite_store.get_message(m.id)
        assert _LockedFirst.met == 1  # the point read met the lock ...
        assert got is not None and got.content.text == "kept"  # ... and the thread answered
        # Other errors are not locks: they surface as they are.
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await sqlite_store._point_one("SELECT * FROM no_such_table")
    finally:
        sqlite_store._point_reader = previous
        locked.close()
