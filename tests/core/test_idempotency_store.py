"""Idempotency keys in the stores (SQLite and PostgreSQL): stored with the send, replayed, scoped
per tenant, expired, purged, and one winner when sends with one key race."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from omni_core.entities import Tenant
from omni_core.ids import new_id
from omni_core.model import Chat, Content, Message, Sender
from omni_core.pipeline import lane_for
from omni_core.store.base import IdempotencyKey, NewJob, Store, StoredKey
from omni_core.store.postgres import PostgresStore
from omni_core.store.sqlite import SqliteStore
from tests.pg import acreate_database, adrop_database

T0 = "2026-01-01T00:00:00.000Z"
T1 = "2026-01-01T00:00:10.000Z"
T2 = "2026-01-01T00:00:20.000Z"
#: Cut-off of a TTL under which nothing stored at T0 or later has expired.
LIVE = "2025-12-31T00:00:00.000Z"


class Opened(msgspec.Struct):
    store: Store
    #: The PostgreSQL database's URL (None on SQLite), for a second connection of the test's own.
    url: str | None


@pytest.fixture(params=["sqlite", "postgres"])
async def opened(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opened]:
    url = None
    if request.param == "sqlite":
        s: Store = SqliteStore(str(tmp_path / "hub.db"))
    else:
        url = await acreate_database()
        s = PostgresStore(url, pool_size=25)
    try:
        await s.open()
        for tenant in ("t1", "t2"):
            await s.create_tenant(
                Tenant(id=tenant, name=tenant, webhook_secret="s", created_at=T0, updated_at=T0), "h" + tenant
            )
        yield Opened(s, url)
        await s.close()
    finally:
        if url is not None:
            await adrop_database(url)


def send(tenant: str = "t1", text: str = "hi") -> list[tuple[Message, list[NewJob]]]:
    message = Message(
        id=new_id("msg"),
        source="whatsapp",
        tenant=tenant,
        instance="i1",
        direction="outbound",
        chat=Chat(id="5511999990000@s.whatsapp.net"),
        sender=Sender(id="i1", is_self=True, is_bot=True),
        content=Content(text=text),
        timestamp=T0,
        status="queued",
    )
    job = NewJob(
        id=new_id("job"),
        kind="deliver",
        lane=lane_for("deliver", tenant, "i1", message.chat.id),
        max_attempts=3,
        run_at=time.time(),
    )
    return [(message, [job])]


def key_for(
    items: list[tuple[Message, list[NewJob]]], key: str = "k1", fingerprint: str = "f1", expired_before: str = LIVE
) -> IdempotencyKey:
    ids = [m.id for m, _ in items]
    response = {"id": ids[0], "status": "queued", "parts": ids}
    return IdempotencyKey(key=key, fingerprint=fingerprint, response=response, expired_before=expired_before)


async def stored_ids(store: Store, items: list[tuple[Message, list[NewJob]]]) -> list[str]:
    """Which of the items' messages the store holds, with a job each."""
    found = []
    for message, _ in items:
        if await store.get_message(message.id) is not None:
            assert [j.kind for j in await store.jobs_for_message(message.id)] == ["deliver"]
            found.append(message.id)
    return found


async def test_a_retry_gets_the_first_answer_and_writes_nothing(opened: Opened) -> None:
    store = opened.store
    first, retry = send(), send()
    assert await store.insert_outbound(first, T0, key_for(first)) is None
    replay = await store.insert_outbound(retry, T1, key_for(retry))
    assert replay == StoredKey(fingerprint="f1", response=key_for(first).response)
    assert await stored_ids(store, first) == [first[0][0].id]
    assert await stored_ids(store, retry) == []
    assert await store.jobs_for_message(retry[0][0].id) == []


async def test_a_reused_key_returns_the_first_fingerprint(opened: Opened) -> None:
    store = opened.store
    first, other = send(), send(text="something else")
    await store.insert_outbound(first, T0, key_for(first))
    replay = await store.insert_outbound(other, T1, key_for(other, fingerprint="f2"))
    assert replay is not None and replay.fingerprint == "f1"
    assert await stored_ids(store, other) == []


async def test_keys_are_scoped_per_tenant(opened: Opened) -> None:
    store = opened.store
    a, b = send("t1"), send("t2")
    assert await store.insert_outbound(a, T0, key_for(a)) is None
    assert await store.insert_outbound(b, T0, key_for(b)) is None
    assert await stored_ids(store, a) + await stored_ids(store, b) == [a[0][0].id, b[0][0].id]


async def test_an_expired_key_is_replaced_before_any_purge(opened: Opened) -> None:
    store = opened.store
    first, later, retry = send(), send(), send()
    await store.insert_outbound(first, T0, key_for(first))
    # At T1 with a TTL that makes T0 too old: the key counts as absent and now names `later`.
    assert await store.insert_outbound(later, T1, key_for(later, fingerprint="f2", expired_before=T1)) is None
    replay = await store.insert_outbound(retry, T2, key_for(retry, expired_before=T1))
    assert replay == StoredKey(fingerprint="f2", response=key_for(later).response)
    assert await stored_ids(store, first + later + retry) == [first[0][0].id, later[0][0].id]


async def test_the_purge_deletes_expired_keys_only(opened: Opened) -> None:
    store = opened.store
    old, fresh = send(), send()
    await store.insert_outbound(old, T0, key_for(old, key="old"))
    await store.insert_outbound(fresh, T2, key_for(fresh, key="fresh"))
    counts = await store.purge(T0, T0, {}, keys_before=T1)
    assert counts["idempotency_keys"] == 1
    # The messages stay (history retention is the tenant's own); only the key went.
    assert await stored_ids(store, old) == [old[0][0].id]
    again, retry = send(), send()
    assert await store.insert_outbound(again, T2, key_for(again, key="old")) is None
    assert await store.insert_outbound(retry, T2, key_for(retry, key="fresh")) is not None
    assert (await store.purge(T0, T0, {}))["idempotency_keys"] == 0  # no cut-off: keys kept


async def test_a_failed_send_leaves_no_key(opened: Opened) -> None:
    store = opened.store
    taken = send()
    await store.insert_outbound(taken, T0)
    clash = send()
    clash[0][0].id = taken[0][0].id  # the message insert fails on its primary key
    with pytest.raises(Exception, match=r"(?i)unique|primary|duplicate"):
        await store.insert_outbound(clash, T0, key_for(clash))
    retry = send()
    assert await store.insert_outbound(retry, T1, key_for(retry)) is None  # the key was not kept
    assert await stored_ids(store, retry) == [retry[0][0].id]


async def test_deleting_a_tenant_forgets_its_keys(opened: Opened) -> None:
    store = opened.store
    first = send()
    await store.insert_outbound(first, T0, key_for(first))
    assert await store.delete_tenant("t1")
    await store.create_tenant(Tenant(id="t1", name="t1", webhook_secret="s", created_at=T1, updated_at=T1), "ht1b")
    again = send()
    assert await store.insert_outbound(again, T1, key_for(again)) is None


async def test_racing_sends_with_one_key_store_one(opened: Opened) -> None:
    store = opened.store
    sends = [send() for _ in range(20)]
    results = await asyncio.gather(*(store.insert_outbound(s, T0, key_for(s)) for s in sends))
    winners = [s for s, r in zip(sends, results, strict=True) if r is None]
    assert len(winners) == 1
    response = key_for(winners[0]).response
    assert all(r == StoredKey(fingerprint="f1", response=response) for r in results if r is not None)
    stored = [await stored_ids(store, s) for s in sends]
    assert [ids for ids in stored if ids] == [[winners[0][0][0].id]]


# PostgreSQL only: SQLite's single writer never runs two writes at once.
@pytest.mark.parametrize("opened", ["postgres"], indirect=True)
async def test_postgres_loser_waits_for_an_uncommitted_winner_then_replays_it(opened: Opened) -> None:
    assert opened.url is not None
    winner = await asyncpg.connect(opened.url)
    try:
        tx = winner.transaction()
        await tx.start()
        await winner.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, response, created_at)"
            " VALUES ('t1', 'k1', 'f-winner', '{\"id\": \"msg_winner\"}', $1)",
            T0,
        )
        loser = send()
        attempt = asyncio.create_task(opened.store.insert_outbound(loser, T0, key_for(loser)))
        await asyncio.sleep(0.5)
        assert not attempt.done()  # blocked on the unique index by the open transaction
        await tx.commit()
        replay = await asyncio.wait_for(attempt, 10)
    finally:
        await winner.close()
    assert replay == StoredKey(fingerprint="f-winner", response={"id": "msg_winner"})
    assert await stored_ids(opened.store, loser) == []


# PostgreSQL only: SQLite's single writer never runs two writes at once.
@pytest.mark.parametrize("opened", ["postgres"], indirect=True)
async def test_postgres_loser_inserts_when_the_winner_rolls_back(opened: Opened) -> None:
    assert opened.url is not None
    winner = await asyncpg.connect(opened.url)
    try:
        tx = winner.transaction()
        await tx.start()
        await winner.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, response, created_at)"
            " VALUES ('t1', 'k1', 'f-winner', '{}', $1)",
            T0,
        )
        loser = send()
        attempt = asyncio.create_task(opened.store.insert_outbound(loser, T0, key_for(loser)))
        await asyncio.sleep(0.5)
        assert not attempt.done()
        await tx.rollback()
        assert await asyncio.wait_for(attempt, 10) is None
    finally:
        await winner.close()
    assert await stored_ids(opened.store, loser) == [loser[0][0].id]
