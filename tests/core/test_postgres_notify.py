"""PostgreSQL's omni_jobs notification: sent when an insert stored jobs, not for an empty insert."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from omni_core.ids import new_id
from omni_core.store.base import NewJob, Store
from omni_core.store.postgres import PostgresStore
from tests.core.test_store import NOW, job_for, msg


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_jobs_notify_only_when_jobs_were_stored(store: Store) -> None:
    assert isinstance(store, PostgresStore)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(store.dsn)
    try:
        await listener.add_listener("omni_jobs", lambda *args: heard.put_nowait(args[2]))

        async def notified() -> bool:
            try:
                await asyncio.wait_for(heard.get(), 0.5)
            except TimeoutError:
                return False
            while not heard.empty():
                heard.get_nowait()
            return True

        out = msg()
        out.direction = "outbound"
        deliver = NewJob(id=new_id("job"), kind="deliver", lane="d", max_attempts=3, run_at=0)
        await store.insert_message(out, deliver, NOW)
        assert await notified()  # a new message's job: the dispatchers wake
        [job] = await store.claim_jobs("w", 10, time.time(), 30)
        # A delivery finished with no status-event jobs inserts nothing: nobody is woken.
        assert await store.finish_deliver(job, "WA-1", "sent", NOW)
        assert not await notified()
        m = msg()
        await store.insert_message(m, job_for(m), NOW)
        assert await notified()
    finally:
        await listener.close()
