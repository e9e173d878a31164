"""The history fast path answers exactly what the Litestar route answers, or leaves the request to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omni_core.api.history_route import HistoryFastPath
from omni_core.app import HubApp, create_app
from omni_core.auth import hash_key
from omni_core.config import Settings
from omni_core.entities import Tenant
from tests.core.test_store import NOW, job_for, msg

ADMIN = "admin-key-0123456789abcdef"
KEY_T1 = "tenant-one-key-0123456789"
KEY_T2 = "tenant-two-key-0123456789"


class Recording(HistoryFastPath):
    """The fast path, remembering which requests it answered itself."""

    answered: list[str]

    async def handle(self, scope: Any, send: Any) -> bool:
        done = await super().handle(scope, send)
        if done:
            self.answered.append(scope["path"] + "?" + scope["query_string"].decode())
        return done


@contextlib.asynccontextmanager
async def running(app: HubApp) -> AsyncIterator[None]:
    """The app's lifespan on this event loop (the store is then usable from the test too)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    asgi: Any = app  # driven with plain dicts, as a server would
    task = asyncio.create_task(
        asgi({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


@pytest.fixture
async def hub_app(tmp_path: Path) -> AsyncIterator[tuple[HubApp, httpx.AsyncClient]]:
    settings = Settings(sqlite_path=str(tmp_path / "omni.db"), api_key=ADMIN, workers=0, hive_enabled=False, api_port=0)
    app = create_app(settings)
    asgi: Any = app
    transport = httpx.ASGITransport(app=asgi)
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        store = app.state.hub.store
        for n, key in ((1, KEY_T1), (2, KEY_T2)):
            tenant = Tenant(id=f"t{n}", name=f"T{n}", webhook_secret=f"s{n}", created_at=NOW, updated_at=NOW)
            await store.create_tenant(tenant, hash_key(key))
        for i in range(12):
            m = msg(tenant="t1", chat=f"c{i % 3}", external_id=f"e{i}", text=f"hello {i}")
            if i % 4 == 0:
                m.direction = "outbound"
            if i == 5:
                m.content.metadata = {"api_token": "hidden", "note": "kept"}  # redacted in both answers
            await store.insert_message(m, job_for(m), NOW)
        assert app.history is not None
        recording = Recording(app.state.hub, app.state)
        recording.answered = []
        app.history = recording
        yield app, client


PLAIN = [
    ("t1", "", ADMIN),
    ("t1", "limit=5", ADMIN),
    ("t1", "limit=500", KEY_T1),
    ("t1", "direction=inbound&limit=3", KEY_T1),
    ("t1", "chat_id=c1&instance=i1", ADMIN),
    ("t1", "since=2020-01-01T00:00:00Z&until=2099-01-01T00:00:00Z", ADMIN),
    ("t1", "instance=nowhere", ADMIN),
    ("t2", "", KEY_T2),
]
#: Requests the route answers with 200 that the fast path still leaves to Litestar.
READABLE = {"limit=%35", "limit=5&limit=6", "since=2020-01-01T00:00:00%2B01:00", "foo=1", "chat_id=c1+x", "t1/"}
LEFT_TO_LITESTAR = [
    ("t1", "limit=0", ADMIN),
    ("t1", "limit=501", ADMIN),
    ("t1", "limit=abc", ADMIN),
    ("t1", "limit=05", ADMIN),
    ("t1", "limit=%35", ADMIN),
    ("t1", "limit=5&limit=6", ADMIN),
    ("t1", "direction=sideways", ADMIN),
    ("t1", "cursor=not-a-cursor", ADMIN),
    ("t1", "since=yesterday", ADMIN),
    ("t1", "since=2020-01-01T00:00:00", ADMIN),
    ("t1", "since=2020-01-01T00:00:00%2B01:00", ADMIN),
    ("t1", "foo=1", ADMIN),
    ("t1", "limit=", ADMIN),
    ("t1", "chat_id=c1+x", ADMIN),
    ("t1", "", None),
    ("t1", "", "wrong-key-0123456789abcdef"),
    ("t1", "", KEY_T2),  # another tenant's history: 404 as if it did not exist
    ("t3", "", ADMIN),
    ("t1/", "", ADMIN),
    ("t%201", "", ADMIN),
]


async def answer(client: httpx.AsyncClient, tenant: str, query: str, key: str | None) -> tuple[Any, ...]:
    headers = {"x-api-key": key} if key is not None else {}
    r = await client.get(f"/messages/history/{tenant}" + (f"?{query}" if query else ""), headers=headers)
    return r.status_code, sorted(r.headers.multi_items()), r.content


async def test_plain_reads_are_answered_by_the_fast_path_with_the_same_bytes(
    hub_app: tuple[HubApp, httpx.AsyncClient],
) -> None:
    app, client = hub_app
    fast = app.history
    assert isinstance(fast, Recording)
    for tenant, query, key in PLAIN:
        app.history = fast
        quick = await answer(client, tenant, query, key)
        app.history = None
        slow = await answer(client, tenant, query, key)
        assert quick == slow, (tenant, query)
        assert quick[0] == 200
    assert len(fast.answered) == len(PLAIN)
    # Paging with the cursor the answer gave goes the fast way too, to the same next page.
    app.history = fast
    first = (await client.get("/messages/history/t1?limit=5", headers={"x-api-key": ADMIN})).json()
    cursor = first["next_cursor"]
    assert cursor
    query = f"limit=5&cursor={cursor}"
    quick = await answer(client, "t1", query, ADMIN)
    app.history = None
    assert quick == await answer(client, "t1", query, ADMIN)
    assert fast.answered[-1].endswith(query)
    redacted = [m for m in first["messages"] if m["content"].get("metadata")]
    assert all(m["content"]["metadata"].get("api_token") != "hidden" for m in redacted)


async def test_everything_else_is_answered_by_litestar_as_before(
    hub_app: tuple[HubApp, httpx.AsyncClient],
) -> None:
    app, client = hub_app
    fast = app.history
    assert isinstance(fast, Recording)
    seen: list[tuple[str, str, int]] = []
    for tenant, query, key in LEFT_TO_LITESTAR:
        app.history = fast
        with_fast = await answer(client, tenant, query, key)
        app.history = None
        without = await answer(client, tenant, query, key)
        assert with_fast == without, (tenant, query, key)
        # Encoded or unknown parameters are fine requests, merely not plain ones.
        readable = query in READABLE or tenant in READABLE
        seen.append((tenant, query, with_fast[0]))
        assert (with_fast[0] == 200) == readable, seen
    assert fast.answered == []
    # Other methods and paths never reach it.
    app.history = fast
    assert (await client.post("/messages/history/t1", headers={"x-api-key": ADMIN})).status_code == 405
    assert fast.answered == []
