"""Idempotency-Key on sends (POST /messages/send, outbound POST /messages/unified), over real HTTP
against the hub process, on both stores; the retention purge of expired keys and its failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from typing import Any

import asyncpg
import httpx
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import HubFactory
from tests.e2e.helpers import history, message, setup_tenant, wait_status, wait_until
from tests.fakes.evolution import FakeEvolution
from tests.hub_process import HubProcess

SEND = {"instance": "acme-sales", "to": "+55 11 96666-0000", "text": "Seu pedido saiu"}
REPLAYED = "idempotent-replayed"


def body(payload: dict[str, Any]) -> bytes:
    return msgspec.json.encode(payload)


def post(client: httpx.Client, path: str, content: bytes, key: str | bytes | None) -> httpx.Response:
    headers = {b"content-type": b"application/json"}
    if key is not None:
        # Bytes go on the wire as they are (httpx would refuse a str with non-ASCII characters).
        headers[b"idempotency-key"] = key.encode() if isinstance(key, str) else key
    return client.post(path, content=content, headers=headers)


def scalar(hub: HubProcess, sql: str) -> Any:
    """One value read straight from the hub's database (SQLite file or PostgreSQL)."""
    url = hub.env.get("AUTOMAGIK_OMNI_DATABASE_URL")
    if url is None:
        with contextlib.closing(
            sqlite3.connect(hub.env["AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH"], timeout=10, isolation_level=None)
        ) as db:
            row = db.execute(sql).fetchone()
            return row[0] if row else None

    async def fetch() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def counts(hub: HubProcess) -> tuple[int, int]:
    """(outbound messages, deliver jobs) in the store."""
    return (
        scalar(hub, "SELECT count(*) FROM messages WHERE direction = 'outbound'"),
        scalar(hub, "SELECT count(*) FROM jobs WHERE kind = 'deliver'"),
    )


def test_a_retry_replays_the_first_answer(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    first = post(client, "/messages/send", body(SEND), "order-42-shipped")
    assert first.status_code == 202, first.text
    assert REPLAYED not in first.headers
    wait_status(hub, first.json()["id"], "sent")

    retry = post(client, "/messages/send", body(SEND), "order-42-shipped")
    assert retry.status_code == 202, retry.text
    assert retry.headers[REPLAYED] == "true"
    # The answer as first given, "queued" included: the message itself says where it is now.
    assert retry.json() == first.json() == {"id": first.json()["id"], "status": "queued", "parts": [first.json()["id"]]}
    assert message(hub, first.json()["id"])["status"] == "sent"
    time.sleep(0.3)  # a second send, had there been one, would have gone out by now
    assert evolution.sent_texts() == [{"number": "5511966660000", "text": "Seu pedido saiu"}]
    assert counts(hub) == (1, 1)
    assert scalar(hub, "SELECT count(*) FROM idempotency_keys") == 1


def test_a_split_send_replays_every_part(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    long_text = {**SEND, "text": ("Linha longa. " * 400).strip()}  # over WhatsApp's 4,096 characters
    first = post(client, "/messages/send", body(long_text), "long-1")
    assert first.status_code == 202 and len(first.json()["parts"]) == 2
    retry = post(client, "/messages/send", body(long_text), "long-1")
    assert retry.headers[REPLAYED] == "true" and retry.json() == first.json()
    evolution.wait_for(2, timeout=10)
    time.sleep(0.3)
    assert len(evolution.sent_texts()) == 2
    assert counts(hub) == (2, 2)


def test_a_key_reused_for_another_request_is_refused(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    assert post(client, "/messages/send", body(SEND), "k-1").status_code == 202
    others = [
        ("/messages/send", body({**SEND, "text": "Outro texto"})),
        # The fingerprint is the JSON value: one more field is another request ...
        ("/messages/send", body({**SEND, "split": False})),
        # ... and the endpoint is part of it.
        (
            "/messages/unified",
            body(
                {
                    "direction": "outbound",
                    "instance": "acme-sales",
                    "chat": {"id": "5511966660000@s.whatsapp.net"},
                    "content": {"text": "Seu pedido saiu"},
                }
            ),
        ),
    ]
    for path, content in others:
        r = post(client, path, content, "k-1")
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "idempotency_key_reused"
        assert "'k-1'" in r.json()["error"]["message"] and "different request" in r.json()["error"]["message"]
        assert REPLAYED not in r.headers
    evolution.wait_for(1, timeout=10)
    assert counts(hub) == (1, 1)


def test_the_same_json_spaced_or_ordered_otherwise_is_a_retry(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    first = post(client, "/messages/send", body(SEND), "k-json")
    assert first.status_code == 202, first.text
    reordered = json.dumps(dict(reversed(list(SEND.items()))), indent=2, ensure_ascii=True).encode()
    retry = post(client, "/messages/send", reordered, "k-json")
    assert retry.status_code == 202 and retry.headers[REPLAYED] == "true" and retry.json() == first.json()
    evolution.wait_for(1, timeout=10)
    assert counts(hub) == (1, 1)


def test_keys_are_per_tenant(hub: HubProcess, evolution: FakeEvolution) -> None:
    acme = setup_tenant(hub)
    globex = setup_tenant(hub, "globex", "globex-sales")
    a = post(hub.client(acme["api_key"]), "/messages/send", body(SEND), "shared-key")
    b = post(hub.client(globex["api_key"]), "/messages/send", body({**SEND, "instance": "globex-sales"}), "shared-key")
    assert a.status_code == b.status_code == 202
    assert REPLAYED not in b.headers and a.json()["id"] != b.json()["id"]
    wait_status(hub, a.json()["id"], "sent")
    wait_status(hub, b.json()["id"], "sent")
    assert len(evolution.sent_texts()) == 2
    # The admin key sends in the instance's tenant: its key space is that tenant's.
    admin = post(hub.admin, "/messages/send", body({**SEND, "instance": "globex-sales"}), "shared-key")
    assert admin.status_code == 202 and admin.json() == b.json() and admin.headers[REPLAYED] == "true"


def test_unified_outbound_takes_a_key_and_inbound_ignores_it(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    outbound = body(
        {
            "direction": "outbound",
            "instance": "acme-sales",
            "chat": {"id": "5511966660000@s.whatsapp.net"},
            "content": {"text": "Pelo formato unificado"},
        }
    )
    first = post(client, "/messages/unified", outbound, "unified-1")
    retry = post(client, "/messages/unified", outbound, "unified-1")
    assert first.status_code == retry.status_code == 202
    assert retry.headers[REPLAYED] == "true" and retry.json() == first.json()
    assert post(client, "/messages/unified", outbound, "bad key").status_code == 400

    inbound = body(
        {
            "direction": "inbound",
            "source": "my-crm",
            "instance": "crm-1",
            "chat": {"id": "c-1"},
            "sender": {"id": "u-1"},
            "content": {"text": "oi"},
        }
    )
    # Inbound messages dedup on external_id: the header, even a malformed one, plays no part.
    one = post(client, "/messages/unified", inbound, "bad key")
    two = post(client, "/messages/unified", inbound, "bad key")
    assert one.status_code == two.status_code == 202 and one.json()["id"] != two.json()["id"]
    assert REPLAYED not in two.headers
    wait_status(hub, first.json()["id"], "sent")
    assert len(evolution.sent_texts()) == 1


VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
#: What can reach the hub inside a header value: spaces and tabs between other characters, and
#: bytes above 0x7F (HTTP clients refuse control characters and leading or trailing spaces).
NOT_VISIBLE = st.sampled_from([b" ", b"\t"]) | st.integers(0x80, 0xFF).map(lambda b: bytes([b]))
BAD_KEYS = (
    st.just(b"")
    | st.text(VISIBLE, min_size=256, max_size=400).map(str.encode)
    | st.builds(
        lambda head, bad, tail: head.encode() + bad + tail.encode(),
        st.text(VISIBLE, min_size=1, max_size=120),
        NOT_VISIBLE,
        st.text(VISIBLE, min_size=1, max_size=120),
    )
)


def test_malformed_keys_are_refused(hub: HubProcess) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(key=BAD_KEYS)
    def refused(key: bytes) -> None:
        r = post(client, "/messages/send", body(SEND), key)
        assert r.status_code == 400, (key, r.text)
        assert r.json()["error"]["code"] == "invalid_idempotency_key"
        assert "Idempotency-Key" in r.json()["error"]["message"]

    refused()
    two = client.post("/messages/send", json=SEND, headers=[("idempotency-key", "a"), ("idempotency-key", "b")])
    assert two.status_code == 400 and two.json()["error"]["code"] == "invalid_idempotency_key"
    assert history(hub, "acme") == []


def test_keys_at_the_limits_are_accepted(hub: HubProcess) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    punctuation = "".join(chr(c) for c in range(0x21, 0x7F) if not chr(c).isalnum())
    for key in ("x", "k" * 255, punctuation, '"8e03978e-40d5-43e8-bc93-6894a57f9324"'):
        first = post(client, "/messages/send", body(SEND), key)
        again = post(client, "/messages/send", body(SEND), key)
        assert first.status_code == again.status_code == 202, (key, first.text)
        assert again.headers[REPLAYED] == "true" and again.json() == first.json()
    assert len(history(hub, "acme")) == 4


async def test_racing_identical_sends_create_one_message(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = await asyncio.to_thread(setup_tenant, hub)
    headers = {"x-api-key": tenant["api_key"], "idempotency-key": "race-1", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=hub.url, headers=headers, timeout=20) as client:
        answers = await asyncio.gather(*(client.post("/messages/send", content=body(SEND)) for _ in range(20)))
    assert {r.status_code for r in answers} == {202}
    assert len({r.content for r in answers}) == 1  # every caller got the same answer
    assert sorted(r.headers.get(REPLAYED, "-") for r in answers) == ["-"] + ["true"] * 19
    await evolution.wait_for_async(1, timeout=10)
    await asyncio.sleep(0.3)
    assert len(evolution.sent_texts()) == 1
    assert await asyncio.to_thread(counts, hub) == (1, 1)


def test_an_expired_key_sends_again_before_any_purge(hub_factory: HubFactory, evolution: FakeEvolution) -> None:
    hub = hub_factory(OMNI_IDEMPOTENCY_TTL_SECONDS="1")  # the purge runs at start-up, then hourly
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    first = post(client, "/messages/send", body(SEND), "daily-report")
    assert post(client, "/messages/send", body(SEND), "daily-report").headers[REPLAYED] == "true"
    time.sleep(1.2)
    again = post(client, "/messages/send", body(SEND), "daily-report")
    assert again.status_code == 202 and REPLAYED not in again.headers
    assert again.json()["id"] != first.json()["id"]
    evolution.wait_for(2, timeout=10)
    assert counts(hub) == (2, 2)
    assert scalar(hub, "SELECT count(*) FROM idempotency_keys") == 1  # replaced, not added


def purge_failures(hub: HubProcess) -> list[dict[str, Any]]:
    found = []
    for line in hub.logs().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "purge_failed":
                found.append(entry)
    return found


def test_expired_keys_are_purged_and_a_failing_purge_is_logged(
    hub_factory: HubFactory, evolution: FakeEvolution
) -> None:
    hub = hub_factory(OMNI_IDEMPOTENCY_TTL_SECONDS="1", OMNI_PURGE_INTERVAL_SECONDS="0.3")
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    first = post(client, "/messages/send", body(SEND), "nightly")
    assert first.status_code == 202
    # Take the table away under the running hub: every purge round now fails.
    scalar(hub, "ALTER TABLE idempotency_keys RENAME TO idempotency_keys_away")
    try:
        failures = wait_until(lambda: purge_failures(hub)[1:], timeout=10, what="two failed purge rounds")
        assert failures[0]["level"] == "warning"
        assert "idempotency_keys" in failures[0]["error"]
        assert scalar(hub, "SELECT count(*) FROM idempotency_keys_away") == 1  # nothing purged meanwhile
    finally:
        scalar(hub, "ALTER TABLE idempotency_keys_away RENAME TO idempotency_keys")
    # The loop kept going: a later round purges the expired key ...
    wait_until(lambda: scalar(hub, "SELECT count(*) FROM idempotency_keys") == 0, timeout=10, what="the key's purge")
    # ... and the key, gone, sends again.
    again = post(client, "/messages/send", body(SEND), "nightly")
    assert again.status_code == 202 and REPLAYED not in again.headers
    assert again.json()["id"] != first.json()["id"]
    evolution.wait_for(2, timeout=10)
