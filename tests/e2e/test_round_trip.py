"""WhatsApp (Evolution) in -> Hive -> reply out through Evolution, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from tests import evolution_payloads as evo
from tests.conftest import HIVE_KEY, HubFactory
from tests.e2e.helpers import history, message, post_webhook, setup_tenant, wait_status, wait_until
from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.hub_process import HubProcess


def test_inbound_is_forwarded_and_the_reply_delivered(
    hub: HubProcess, hive: FakeHive, evolution: FakeEvolution
) -> None:
    tenant = setup_tenant(hub, greeting="oi", hive={"preferred_agent": "sales", "api_key": HIVE_KEY})
    r = post_webhook(hub, tenant, evo.upsert("acme-sales", "Qual o horário?", phone="5511988880001"))
    assert r.status_code == 200
    assert r.json()["status"] == "accepted"
    inbound_id = r.json()["id"]

    evolution.wait_for(1, timeout=10)
    [request] = hive.processed_requests()
    assert request.headers["authorization"] == f"Bearer {HIVE_KEY}"
    assert request.headers["idempotency-key"] == inbound_id
    body = request.body
    assert body["tenant"] == "acme"
    assert body["message"]["id"] == inbound_id
    assert body["message"]["content"]["text"] == "Qual o horário?"
    assert body["message"]["chat"]["id"] == "5511988880001@s.whatsapp.net"
    assert body["routing_hints"]["preferred_agent"] == "sales"
    assert body["routing_hints"]["session_id"].startswith("ses_")
    assert body["context"]["tenant"]["name"] == "Acme"
    assert body["context"]["tenant"]["config"]["greeting"] == "oi"
    assert "api_key" not in body["context"]["tenant"]["config"].get("hive", {})
    assert body["context"]["history"] == []

    # The exact Evolution v2 sendText body.
    assert evolution.sent_texts() == [{"number": "5511988880001", "text": "echo: Qual o horário?"}]
    assert evolution.sends()[0].headers["apikey"]

    inbound = wait_status(hub, inbound_id, "forwarded")
    assert inbound["direction"] == "inbound"
    replies = [m for m in history(hub, "acme", direction="outbound")]
    assert len(replies) == 1
    reply = wait_status(hub, replies[0]["id"], "sent")
    assert reply["external_id"] == evolution.sent_message_ids()[0]
    assert reply["chat"]["id"] == "5511988880001@s.whatsapp.net"

    # Delivery receipts move the reply forward, never backwards.
    for status in ("READ", "DELIVERY_ACK"):
        r = post_webhook(hub, tenant, evo.status_update("acme-sales", reply["external_id"], status))
        assert r.status_code == 200 and r.json()["status"] == "updated"
    assert message(hub, reply["id"])["status"] == "read"

    # The second message of the chat carries the first exchange as context.
    post_webhook(hub, tenant, evo.upsert("acme-sales", "E amanhã?", phone="5511988880001"))
    hive.wait_for(2, timeout=10)
    second = hive.processed()[1]
    assert [m["content"]["text"] for m in second["context"]["history"]] == ["Qual o horário?", "echo: Qual o horário?"]
    assert second["routing_hints"]["session_id"] == body["routing_hints"]["session_id"]


def test_duplicate_webhook_is_accepted_once(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    payload = evo.upsert("acme-sales", "uma vez só")
    first = post_webhook(hub, tenant, payload).json()
    second = post_webhook(hub, tenant, payload).json()
    assert first["status"] == "accepted"
    assert second == {"status": "duplicate", "id": first["id"]}
    evolution.wait_for(1, timeout=10)
    time.sleep(0.3)
    assert len(hive.processed()) == 1 and len(evolution.sent_texts()) == 1
    assert len(history(hub, "acme", direction="inbound")) == 1


def test_own_messages_are_stored_but_never_forwarded(hub: HubProcess, hive: FakeHive) -> None:
    tenant = setup_tenant(hub)
    from_phone = post_webhook(hub, tenant, evo.upsert("acme-sales", "respondi pelo celular", from_me=True)).json()
    via_api = post_webhook(
        hub, tenant, evo.upsert("acme-sales", "enviado por outro sistema", from_me=True, event="send.message")
    ).json()
    assert from_phone["status"] == "accepted" and via_api["status"] == "accepted"
    time.sleep(0.5)
    assert hive.requests == []
    stored = {m["id"]: m for m in history(hub, "acme")}
    for mid in (from_phone["id"], via_api["id"]):
        assert stored[mid]["direction"] == "outbound"
        assert stored[mid]["sender"]["is_self"] is True
        assert stored[mid]["status"] == "sent"


def test_hive_disabled_stores_and_forwards_nothing(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(hive_enabled=False)
    tenant = setup_tenant(hub)
    accepted = post_webhook(hub, tenant, evo.upsert("acme-sales", "alguém aí?")).json()
    wait_status(hub, accepted["id"], "received")
    assert hive.requests == []
    # ... unless the tenant turns it on for itself.
    assert hub.admin.patch("/tenants/acme", json={"config": {"hive": {"enabled": True}}}).status_code == 200
    second = post_webhook(hub, tenant, evo.upsert("acme-sales", "e agora?")).json()
    wait_status(hub, second["id"], "forwarded")
    assert hive.processed_keys() == [second["id"]]


def test_every_reply_shape_is_delivered_in_order(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    hive.responder = lambda req: (
        200,
        {
            "messages": [
                {"text": "Primeira parte"},
                {"text": "Segunda parte", "media": [{"url": "https://cdn.test/a.jpg", "mime_type": "image/jpeg"}]},
                {"text": "Terceira parte"},
            ]
        },
    )
    post_webhook(hub, tenant, evo.upsert("acme-sales", "manda tudo", phone="5511977770000"))
    evolution.wait_for(3, timeout=10)
    sends = evolution.sends()
    assert [s.path.split("/")[2] for s in sends] == ["sendText", "sendMedia", "sendText"]
    assert sends[0].body == {"number": "5511977770000", "text": "Primeira parte"}
    assert sends[1].body["media"] == "https://cdn.test/a.jpg" and sends[1].body["mediatype"] == "image"
    assert sends[1].body["caption"] == "Segunda parte"
    assert sends[2].body == {"number": "5511977770000", "text": "Terceira parte"}


def test_empty_and_accepted_replies_send_nothing(hub: HubProcess, hive: FakeHive, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    answers: Iterator[tuple[int, Any]] = iter([(200, {}), (202, None)])
    hive.responder = lambda req: next(answers)
    a = post_webhook(hub, tenant, evo.upsert("acme-sales", "um")).json()
    b = post_webhook(hub, tenant, evo.upsert("acme-sales", "dois")).json()
    wait_status(hub, a["id"], "forwarded")
    wait_status(hub, b["id"], "forwarded")
    time.sleep(0.2)
    assert evolution.sends() == []


def test_messages_send_api_delivers_and_tracks_status(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    client = hub.client(tenant["api_key"])
    r = client.post(
        "/messages/send", json={"instance": "acme-sales", "to": "+55 11 96666-0000", "text": "Seu pedido saiu"}
    )
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    sent = wait_status(hub, r.json()["id"], "sent")
    assert evolution.sent_texts() == [{"number": "5511966660000", "text": "Seu pedido saiu"}]
    assert sent["external_id"] == evolution.sent_message_ids()[0]
    assert sent["attempts"][0]["outcome"] == "ok"
    assert sent["jobs"][0]["status"] == "done"

    # A reply with media and a quoted message.
    r = client.post(
        "/messages/send",
        json={
            "instance": "acme-sales",
            "to": "5511966660000",
            "text": "A nota fiscal",
            "media": [{"url": "https://cdn.test/nf.pdf", "mime_type": "application/pdf", "filename": "nf.pdf"}],
            "reply_to": "3AAAAAAAAAAAAAAAAAAA",
        },
    )
    assert r.status_code == 202
    wait_status(hub, r.json()["id"], "sent")
    [media] = evolution.sent_media()
    assert media["mediatype"] == "document" and media["fileName"] == "nf.pdf" and media["caption"] == "A nota fiscal"

    # Evolution echoes API sends as send.message: the hub knows it already.
    echo = post_webhook(
        hub,
        tenant,
        evo.upsert("acme-sales", "Seu pedido saiu", kid=sent["external_id"], from_me=True, event="send.message"),
    )
    assert echo.json() == {"status": "duplicate", "id": sent["id"]}


def test_history_filters_and_pages(hub: HubProcess, hive: FakeHive) -> None:
    tenant = setup_tenant(hub)
    hive.responder = lambda req: (200, {})
    ids = [
        post_webhook(hub, tenant, evo.upsert("acme-sales", f"m{i}", phone=f"551190000000{i % 2}")).json()["id"]
        for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = hub.admin.get("/messages/history/acme", params=params).json()
        seen += [m["id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    chat0 = history(hub, "acme", chat_id="5511900000000@s.whatsapp.net")
    assert [m["id"] for m in chat0] == [ids[i] for i in (6, 4, 2, 0)]
    assert history(hub, "acme", direction="outbound") == []
    assert history(hub, "acme", since="2999-01-01T00:00:00Z") == []
    for bad in ({"limit": 0}, {"limit": 501}, {"cursor": "???"}, {"direction": "sideways"}, {"since": "yesterday"}):
        r = hub.admin.get("/messages/history/acme", params=bad)
        assert r.status_code == 400, (bad, r.text)
        assert "error" in r.json()


def test_tenantless_webhook_url_finds_the_tenant_by_instance(hub: HubProcess, hive: FakeHive) -> None:
    tenant = setup_tenant(hub)
    r = post_webhook(hub, None, evo.upsert("acme-sales", "sem tenant na URL"), token=tenant["webhook_secret"])
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    wait_until(lambda: hive.processed_keys() == [r.json()["id"]], what="hive to get the message")
