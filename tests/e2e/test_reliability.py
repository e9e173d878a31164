"""Nothing lost, nothing twice: outages, dead jobs, crashes and per-chat order."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from typing import Any

from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import message, post_webhook, setup_tenant, wait_status, wait_until
from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.hub_process import HubProcess


def test_hive_down_for_a_while_then_up(hub_factory: HubFactory, hive: FakeHive, evolution: FakeEvolution) -> None:
    hub = hub_factory(OMNI_RETRY_MAX_ATTEMPTS="50", OMNI_RETRY_MAX_SECONDS="0.2")
    tenant = setup_tenant(hub)
    hive.set_down(True)
    accepted = post_webhook(hub, tenant, evo.upsert("acme-sales", "alô?")).json()
    time.sleep(1.5)  # several failed attempts meanwhile
    assert evolution.sends() == []  # no error text ever reaches the user
    failed_attempts = message(hub, accepted["id"])["attempts"]
    assert len(failed_attempts) >= 2 and all(a["outcome"] == "retry" for a in failed_attempts)
    hive.set_down(False)
    evolution.wait_for(1, timeout=10)
    time.sleep(0.5)
    assert evolution.sent_texts() == [{"number": "5511988880001", "text": "echo: alô?"}]
    assert hive.processed_keys() == [accepted["id"]]
    assert message(hub, accepted["id"])["status"] == "forwarded"


def test_dead_after_the_last_attempt_then_retry_by_api(
    hub_factory: HubFactory, hive: FakeHive, evolution: FakeEvolution
) -> None:
    hub = hub_factory(OMNI_RETRY_MAX_ATTEMPTS="3")
    tenant = setup_tenant(hub)
    hive.fail_next(3, 503)
    accepted = post_webhook(hub, tenant, evo.upsert("acme-sales", "vai morrer")).json()
    dead = wait_status(hub, accepted["id"], "dead")
    [job] = dead["jobs"]
    assert job["status"] == "dead" and job["attempts"] == 3 and "503" in job["last_error"]
    assert [a["outcome"] for a in dead["attempts"]] == ["retry", "retry", "dead"]
    assert evolution.sends() == []

    # A tenant may retry its own dead job; the job runs again from scratch.
    r = hub.client(tenant["api_key"]).post(f"/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["job"]["status"] == "queued"
    wait_status(hub, accepted["id"], "forwarded")
    evolution.wait_for(1, timeout=10)
    assert hub.admin.post(f"/jobs/{job['id']}/retry").status_code == 409  # not dead any more
    assert hub.admin.post("/jobs/job_nope/retry").status_code == 404


def test_client_errors_fail_at_once(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    hive.fail_next(1, 400)
    accepted = post_webhook(hub, tenant, evo.upsert("acme-sales", "pedido ruim")).json()
    failed = wait_status(hub, accepted["id"], "failed")
    assert failed["jobs"][0]["attempts"] == 1 and failed["jobs"][0]["status"] == "dead"
    assert evolution.sends() == []


def test_sigkill_after_200_acks_loses_nothing_and_sends_once(
    hub_factory: HubFactory, hive: FakeHive, evolution: FakeEvolution
) -> None:
    # A short lease: on PostgreSQL the restarted hub takes over the dead one's jobs when their
    # leases expire (SQLite's single owner releases them at once).
    hub = hub_factory(OMNI_LEASE_SECONDS="2")
    tenant = setup_tenant(hub)
    # The crash lands while agent calls are in flight and before any reply was sent: a send in
    # flight at a crash is the one thing allowed to repeat, and this test wants none of those.
    hive.set_latency(8.0)
    ids = []
    for i in range(200):
        r = post_webhook(hub, tenant, evo.upsert("acme-sales", f"mensagem {i}", phone=f"55119{i % 20:08d}"))
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        ids.append(r.json()["id"])
    hub.kill()
    assert evolution.sends() == [], "a reply went out before the crash: the test's premise does not hold"
    hive.set_latency(0.0)
    hub.start()
    evolution.wait_for(200, timeout=60)
    time.sleep(1.0)  # anything extra would show up now
    assert sorted(set(hive.processed_keys())) == sorted(ids)
    assert len(hive.processed_keys()) == 200  # retried calls reused their Idempotency-Key
    texts = [t["text"] for t in evolution.sent_texts()]
    assert sorted(texts) == sorted(f"echo: mensagem {i}" for i in range(200))


def test_per_chat_order_with_20_chats_in_parallel(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    rng = random.Random(7)
    hive.responder = None
    hive.set_latency(0.02)
    per_chat = 10
    phones = [f"55118{c:08d}" for c in range(20)]

    def send_chat(phone: str) -> None:
        for n in range(per_chat):
            r = post_webhook(hub, tenant, evo.upsert("acme-sales", f"{phone}#{n}", phone=phone))
            assert r.status_code == 200
            time.sleep(rng.random() * 0.01)

    threads = [threading.Thread(target=send_chat, args=(p,)) for p in phones]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evolution.wait_for(20 * per_chat, timeout=60)
    agent_order: dict[str, list[int]] = defaultdict(list)
    for body in hive.processed():
        phone, n = body["message"]["content"]["text"].split("#")
        agent_order[phone].append(int(n))
    delivered_order: dict[str, list[int]] = defaultdict(list)
    for sent in evolution.sent_texts():
        phone, n = sent["text"].removeprefix("echo: ").split("#")
        assert sent["number"] == phone
        delivered_order[phone].append(int(n))
    for phone in phones:
        assert agent_order[phone] == list(range(per_chat)), phone
        assert delivered_order[phone] == list(range(per_chat)), phone


def test_slow_agent_for_one_chat_does_not_block_others(
    hub: HubProcess, hive: FakeHive, evolution: FakeEvolution
) -> None:
    tenant = setup_tenant(hub)

    async def responder(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        text = req["message"]["content"]["text"]
        if text == "slow":
            await asyncio.sleep(4)
        return 200, {"reply": f"ok {text}"}

    hive.responder = responder
    post_webhook(hub, tenant, evo.upsert("acme-sales", "slow", phone="5511000000001"))
    wait_until(lambda: len(hive.requests) == 1, what="the slow request to reach hive")
    started = time.monotonic()
    post_webhook(hub, tenant, evo.upsert("acme-sales", "fast", phone="5511000000002"))
    wait_until(lambda: any(t["text"] == "ok fast" for t in evolution.sent_texts()), what="the fast reply")
    assert time.monotonic() - started < 2.0
    assert not any(t["text"] == "ok slow" for t in evolution.sent_texts())
