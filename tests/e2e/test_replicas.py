"""Several hub processes on one PostgreSQL database share the work: once each, in order per chat."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

import httpx
import pytest

from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import setup_tenant
from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.hub_process import HubProcess

CHATS = 20
PER_CHAT = 100
LEASE = "2"


def _replicas(hub_factory: HubFactory, database_urls: Callable[[], str], count: int) -> list[HubProcess]:
    url = database_urls()
    return [hub_factory(AUTOMAGIK_OMNI_DATABASE_URL=url, OMNI_LEASE_SECONDS=LEASE) for _ in range(count)]


def _send_all(replicas: list[HubProcess], tenant: dict[str, object], on_sent: Callable[[int], None]) -> None:
    """Each chat sends its messages one after another, chats in parallel, spread over the replicas
    like a load balancer that moves on to the next replica when one does not answer."""
    sent = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def chat(c: int) -> None:
        nonlocal sent
        phone = f"55117{c:08d}"
        with httpx.Client(timeout=10) as client:
            for n in range(PER_CHAT):
                payload = evo.upsert("acme-sales", f"{phone}#{n}", phone=phone)
                for attempt in range(len(replicas) * 2):
                    target = replicas[(c + n + attempt) % len(replicas)]
                    try:
                        r = client.post(
                            f"{target.url}/webhooks/evolution/acme",
                            json=payload,
                            headers={"x-omni-webhook-token": str(tenant["webhook_secret"])},
                        )
                    except httpx.TransportError:
                        continue
                    assert r.status_code == 200, r.text
                    assert r.json()["status"] in ("accepted", "duplicate")
                    break
                else:
                    raise AssertionError("no replica accepted the webhook")
                with lock:
                    sent += 1
                    on_sent(sent)

    def run(c: int) -> None:
        try:
            chat(c)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(CHATS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _check_order(hive: FakeHive) -> None:
    first_seen: dict[str, list[int]] = defaultdict(list)
    for body in hive.processed():
        phone, n = body["message"]["content"]["text"].split("#")
        first_seen[phone].append(int(n))
    assert len(first_seen) == CHATS
    for phone, order in first_seen.items():
        assert order == list(range(PER_CHAT)), phone


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_three_replicas_forward_each_message_once_in_order(
    hub_factory: HubFactory, database_urls: Callable[[], str], hive: FakeHive, evolution: FakeEvolution
) -> None:
    replicas = _replicas(hub_factory, database_urls, 3)
    tenant = setup_tenant(replicas[0])
    _send_all(replicas, tenant, on_sent=lambda n: None)
    evolution.wait_for(CHATS * PER_CHAT, timeout=120)
    assert len(hive.processed_keys()) == CHATS * PER_CHAT
    assert hive.duplicates == 0
    assert len(evolution.sent_texts()) == CHATS * PER_CHAT
    _check_order(hive)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_replica_killed_halfway_loses_nothing(
    hub_factory: HubFactory, database_urls: Callable[[], str], hive: FakeHive, evolution: FakeEvolution
) -> None:
    replicas = _replicas(hub_factory, database_urls, 3)
    tenant = setup_tenant(replicas[0])
    hive.set_latency(0.05)  # keep work in flight on every replica when the kill lands
    victim = replicas[1]

    def kill_halfway(sent: int) -> None:
        if sent == CHATS * PER_CHAT // 2:
            victim.kill()

    _send_all(replicas, tenant, on_sent=kill_halfway)
    assert victim.proc is not None and victim.proc.returncode is not None
    evolution.wait_for(lambda: len({t["text"] for t in evolution.sent_texts()}) >= CHATS * PER_CHAT, timeout=180)
    # Every message reached the agent, each processed once (a retried in-flight call reuses its
    # Idempotency-Key, so the agent does not process it again) and in order per chat.
    assert len(hive.processed_keys()) == CHATS * PER_CHAT
    _check_order(hive)
    # Each reply was delivered; only a send in flight on the killed replica may repeat.
    texts = [t["text"] for t in evolution.sent_texts()]
    assert len(set(texts)) == CHATS * PER_CHAT
    assert len(texts) - len(set(texts)) <= 50  # at most the victim's in-flight deliveries
