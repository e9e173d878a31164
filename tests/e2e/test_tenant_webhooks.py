"""Tenant webhooks: Standard Webhooks signatures, durable retries, replay, rotation, auto-disable,
and the unified message endpoint."""

from __future__ import annotations

import time
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import post_webhook, setup_tenant, wait_status, wait_until
from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.fakes.receiver import FakeReceiver
from tests.hub_process import HubProcess

FAST = {
    "OMNI_WEBHOOK_ALLOW_PRIVATE": "true",
    "OMNI_WEBHOOK_RETRY_SCHEDULE": "0.3,0.6,1",
    "OMNI_WEBHOOK_TIMEOUT_SECONDS": "2",
}


def subscribe(hub: HubProcess, tenant: dict[str, Any], url: str, events: list[str]) -> dict[str, Any]:
    r = hub.client(tenant["api_key"]).post(f"/tenants/{tenant['id']}/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    assert created["secret"].startswith("whsec_")
    return created


def verified(secret: str, request: Any) -> dict[str, Any]:
    body: dict[str, Any] = Webhook(secret).verify(request.raw, request.headers)
    return body


def deliveries(hub: HubProcess, tenant: str, **params: Any) -> list[dict[str, Any]]:
    r = hub.admin.get(f"/tenants/{tenant}/deliveries", params=params)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["deliveries"]
    return found


def test_events_are_signed_and_carry_the_unified_message(
    hub_factory: HubFactory, receiver: FakeReceiver, evolution: FakeEvolution, hive: FakeHive
) -> None:
    hub = hub_factory(**FAST)
    tenant = setup_tenant(hub)
    sub = subscribe(hub, tenant, f"{receiver.url}/acme", ["message.inbound", "message.outbound", "message.status"])
    assert "secret" not in hub.admin.get(f"/tenants/acme/webhooks/{sub['id']}").json()
    inbound = post_webhook(hub, tenant, evo.upsert("acme-sales", "oi, tudo bem?")).json()
    receiver.wait_for(3, timeout=15)  # inbound, the reply (outbound), the reply's status (sent)
    bodies = [verified(sub["secret"], r) for r in receiver.delivered()]
    by_type = {b["type"]: b for b in bodies}
    assert set(by_type) == {"message.inbound", "message.outbound", "message.status"}
    assert by_type["message.inbound"]["data"]["id"] == inbound["id"]
    assert by_type["message.inbound"]["data"]["content"]["text"] == "oi, tudo bem?"
    assert by_type["message.outbound"]["data"]["content"]["text"] == "echo: oi, tudo bem?"
    assert by_type["message.status"]["data"]["status"] == "sent"
    assert by_type["message.status"]["data"]["external_id"] == evolution.sent_message_ids()[0]
    headers = receiver.delivered()[0].headers
    assert headers["webhook-id"].startswith("evt_") and headers["webhook-signature"].startswith("v1,")
    # A tampered body or the wrong secret does not verify.
    request = receiver.delivered()[0]
    try:
        Webhook("whsec_" + "A" * 43 + "=").verify(request.raw, request.headers)
        raise AssertionError("verified with a wrong secret")
    except WebhookVerificationError:
        pass
    ok = wait_until(
        lambda: len(found := deliveries(hub, "acme", status="succeeded")) == 3 and found, what="3 successes"
    )
    assert all(d["attempts"][0]["status_code"] == 204 for d in ok)


def test_failures_retry_on_schedule_survive_a_restart_and_recover(
    hub_factory: HubFactory, receiver: FakeReceiver, hive: FakeHive
) -> None:
    hub = hub_factory(**{**FAST, "OMNI_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1"})
    tenant = setup_tenant(hub)
    sub = subscribe(hub, tenant, f"{receiver.url}/acme", ["message.inbound"])
    receiver.fail_next(2, 500)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "primeira"))
    wait_until(lambda: len(receiver.requests) >= 1, what="the first attempt")
    hub.kill()  # mid-schedule: the next attempt is due in ~1 s and must still happen
    hub.start()
    receiver.wait_for(1, timeout=20)
    [delivery] = wait_until(lambda: [d for d in deliveries(hub, "acme") if d["status"] == "succeeded"], what="success")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 204]
    assert all(a["latency_ms"] is not None for a in delivery["attempts"])
    verified(sub["secret"], receiver.delivered()[0])
    # Every attempt carried the same webhook-id, so the receiver can deduplicate.
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def test_timeouts_then_dead_then_replay(hub_factory: HubFactory, receiver: FakeReceiver, hive: FakeHive) -> None:
    hub = hub_factory(**{**FAST, "OMNI_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2", "OMNI_WEBHOOK_TIMEOUT_SECONDS": "0.5"})
    tenant = setup_tenant(hub)
    sub = subscribe(hub, tenant, f"{receiver.url}/acme", ["message.inbound"])
    receiver.latency = 1.5  # longer than the hub waits
    post_webhook(hub, tenant, evo.upsert("acme-sales", "lento"))
    dead = wait_until(lambda: deliveries(hub, "acme", status="failed"), timeout=20, what="the delivery to die")
    assert [a["outcome"] for a in dead[0]["attempts"]] == ["retry", "retry", "dead"]
    assert "timed out" in dead[0]["last_error"]
    receiver.latency = 0.0
    r = hub.client(tenant["api_key"]).post(f"/deliveries/{dead[0]['id']}/replay")
    assert r.status_code == 202, r.text
    receiver.wait_for(1, timeout=10)
    verified(sub["secret"], receiver.delivered()[0])
    assert receiver.delivered()[0].headers["webhook-id"] == dead[0]["event_id"]
    assert hub.admin.post("/deliveries/dlv_nope/replay").status_code == 404


def test_rotation_keeps_both_secrets_valid_during_the_overlap(
    hub_factory: HubFactory, receiver: FakeReceiver, hive: FakeHive
) -> None:
    hub = hub_factory(**FAST)
    tenant = setup_tenant(hub)
    sub = subscribe(hub, tenant, f"{receiver.url}/acme", ["message.inbound"])
    r = hub.client(tenant["api_key"]).patch(f"/tenants/acme/webhooks/{sub['id']}", json={"rotate_secret": True})
    assert r.status_code == 200
    new_secret = r.json()["secret"]
    assert new_secret != sub["secret"] and r.json()["rotation_overlap_until"]
    post_webhook(hub, tenant, evo.upsert("acme-sales", "depois da rotação"))
    receiver.wait_for(1, timeout=10)
    request = receiver.delivered()[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verified(sub["secret"], request)
    verified(new_secret, request)


def test_a_failing_webhook_is_disabled_and_the_tenant_told(
    hub_factory: HubFactory, receiver: FakeReceiver, hive: FakeHive
) -> None:
    hub = hub_factory(**{**FAST, "OMNI_WEBHOOK_DISABLE_AFTER_SECONDS": "1"})
    tenant = setup_tenant(hub)
    bad = subscribe(hub, tenant, f"{receiver.url}/broken", ["message.inbound"])
    watcher = subscribe(hub, tenant, f"{receiver.url}/ops", ["webhook.disabled"])
    receiver.status_for_path["/broken"] = 503
    post_webhook(hub, tenant, evo.upsert("acme-sales", "um"))
    time.sleep(1.2)
    post_webhook(hub, tenant, evo.upsert("acme-sales", "dois"))
    receiver.wait_for(1, timeout=15)
    [notice] = receiver.delivered("/ops")
    body = verified(watcher["secret"], notice)
    assert body["type"] == "webhook.disabled" and body["data"]["id"] == bad["id"]
    state = hub.admin.get(f"/tenants/acme/webhooks/{bad['id']}").json()
    assert state["enabled"] is False and "failing" in state["disabled_reason"]
    # Re-enabling clears the failure state.
    r = hub.admin.patch(f"/tenants/acme/webhooks/{bad['id']}", json={"enabled": True})
    assert r.json()["enabled"] is True and r.json()["disabled_reason"] is None


def test_one_slow_endpoint_does_not_delay_another(
    hub_factory: HubFactory, receiver: FakeReceiver, hive: FakeHive
) -> None:
    hub = hub_factory(**{**FAST, "OMNI_WEBHOOK_TIMEOUT_SECONDS": "5"})
    tenant = setup_tenant(hub)
    subscribe(hub, tenant, f"{receiver.url}/slow", ["message.inbound"])
    subscribe(hub, tenant, f"{receiver.url}/fast", ["message.inbound"])

    # Only /slow answers slowly (3 s per delivery); /fast must not wait behind it.
    original = receiver.latency_for
    receiver.latency_for = lambda request: 3.0 if request.path == "/slow" else 0.0  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        for n in range(5):
            post_webhook(hub, tenant, evo.upsert("acme-sales", f"m{n}", phone=f"5511000000{n:03d}"))
        wait_until(lambda: len(receiver.delivered("/fast")) == 5, timeout=10, what="the fast endpoint")
        assert time.monotonic() - started < 2.5
    finally:
        receiver.latency_for = original  # type: ignore[method-assign]


def test_private_addresses_are_refused_by_default(hub_factory: HubFactory) -> None:
    hub = hub_factory()
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    for url in ("http://127.0.0.1:9/x", "http://10.0.0.5/hook", "http://localhost/hook"):
        r = client.post("/tenants/acme/webhooks", json={"url": url, "events": ["message.inbound"]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_webhook_url", url
    for body in (
        {"url": "ftp://example.com/x", "events": ["message.inbound"]},
        {"url": "https://example.com/x", "events": ["message.sideways"]},
        {"url": "https://example.com/x", "events": []},
        {"url": "https://example.com/x", "events": ["message.inbound"], "secret": "not-whsec"},
    ):
        r = client.post("/tenants/acme/webhooks", json=body)
        assert r.status_code == 400, body
    other = hub.create_tenant("other")
    r = hub.client(other["api_key"]).get("/tenants/acme/webhooks")
    assert r.status_code == 404


def test_unified_inbound_from_a_custom_channel_is_stored_deduplicated_and_routed(
    hub_factory: HubFactory, receiver: FakeReceiver, hive: FakeHive
) -> None:
    hub = hub_factory(**FAST)
    tenant = hub.create_tenant("acme")
    sub = subscribe(hub, tenant, f"{receiver.url}/acme", ["message.outbound"])
    client = hub.client(tenant["api_key"])
    message = {
        "direction": "inbound",
        "source": "webchat",
        "instance": "site",
        "external_id": "web-1",
        "chat": {"id": "visitor-42"},
        "sender": {"id": "visitor-42", "name": "Ana"},
        "content": {"type": "text", "text": "Vocês entregam no sábado?"},
    }
    first = client.post("/messages/unified", json=message)
    assert first.status_code == 202 and first.json()["status"] == "queued"
    again = client.post("/messages/unified", json=message)
    assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "status": "duplicate"}
    wait_until(lambda: hive.processed_keys() == [first.json()["id"]], what="the agent to get it")
    # The reply goes back to the custom channel through the tenant's webhook.
    receiver.wait_for(1, timeout=10)
    reply = verified(sub["secret"], receiver.delivered()[0])["data"]
    assert reply["content"]["text"] == "echo: Vocês entregam no sábado?"
    assert reply["chat"]["id"] == "visitor-42" and reply["source"] == "webchat"
    wait_status(hub, reply["id"], "sent")
    bad = client.post("/messages/unified", json={**message, "source": None, "external_id": "web-2"})
    assert bad.status_code == 400


def test_unified_outbound_sends_on_the_instance_channel_and_splits(
    hub_factory: HubFactory, evolution: FakeEvolution
) -> None:
    hub = hub_factory(**FAST)
    tenant = setup_tenant(hub)
    long_text = ("Esta é uma frase do nosso catálogo de produtos. " * 200).strip()  # ~9,800 characters
    r = hub.client(tenant["api_key"]).post(
        "/messages/unified",
        json={
            "direction": "outbound",
            "instance": "acme-sales",
            "chat": {"id": "5511977776666@s.whatsapp.net"},
            "content": {"text": long_text},
        },
    )
    assert r.status_code == 202, r.text
    parts = r.json()["parts"]
    assert len(parts) == 3
    evolution.wait_for(3, timeout=10)
    texts = [t["text"] for t in evolution.sent_texts()]
    assert all(len(t) <= 4096 for t in texts)
    assert " ".join(texts).split() == long_text.split()
    assert {t["number"] for t in evolution.sent_texts()} == {"5511977776666"}
    # The per-message override turns splitting off (the channel then gets one long text).
    r = hub.client(tenant["api_key"]).post(
        "/messages/send", json={"instance": "acme-sales", "to": "5511977776666", "text": long_text, "split": False}
    )
    assert len(r.json()["parts"]) == 1


def test_unknown_fields_and_types_are_rejected_clearly(hub: HubProcess) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    r = client.post(
        "/messages/unified", json={"direction": "sideways", "instance": "x", "chat": {"id": "c"}, "content": {}}
    )
    assert r.status_code == 400 and "direction" in r.json()["error"]["message"]
    r = client.post("/messages/unified", content=b"[1,2", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


def test_deliveries_page_with_a_cursor_and_filter_by_webhook(hub_factory: HubFactory, receiver: FakeReceiver) -> None:
    hub = hub_factory(hive_enabled=False, **FAST)
    tenant = setup_tenant(hub)
    first = subscribe(hub, tenant, f"{receiver.url}/a", ["message.inbound"])
    subscribe(hub, tenant, f"{receiver.url}/b", ["message.inbound"])
    for n in range(5):
        post_webhook(hub, tenant, evo.upsert("acme-sales", f"mensagem {n}"))
    wait_until(lambda: len(deliveries(hub, "acme", status="succeeded", limit=20)) == 10, what="10 deliveries")

    seen: list[dict[str, Any]] = []
    pages = []
    params: dict[str, Any] = {"webhook_id": first["id"], "limit": 2}
    while True:
        r = hub.admin.get("/tenants/acme/deliveries", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(len(page["deliveries"]))
        seen += page["deliveries"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert pages == [2, 2, 1]
    assert {d["webhook_id"] for d in seen} == {first["id"]}
    assert len({d["id"] for d in seen}) == 5
    created = [d["created_at"] for d in seen]
    assert created == sorted(created, reverse=True)  # newest first, across pages

    everything = hub.admin.get("/tenants/acme/deliveries", params={"limit": 10}).json()
    assert len(everything["deliveries"]) == 10 and everything["next_cursor"] is None
    for bad in ("nope", "ZGx2Ong", "bXNnXzEy"):  # garbage, "dlv:x", another API's cursor
        r = hub.admin.get("/tenants/acme/deliveries", params={"cursor": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor", (bad, r.text)
