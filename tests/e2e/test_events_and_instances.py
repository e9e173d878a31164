"""Every Evolution event kind through the real endpoint, and the instance lifecycle on Evolution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests import evolution_payloads as evo
from tests.e2e.helpers import history, post_webhook, setup_tenant
from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.hub_process import HubProcess

MEDIA = {"url": "https://mmg.whatsapp.test/v/t62/abc.enc", "fileLength": "52340", "mediaKey": "a2V5"}


def _stored(hub: HubProcess, message_id: str) -> dict[str, Any]:
    r = hub.admin.get(f"/messages/{message_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_every_upsert_kind_normalizes(hub: HubProcess, hive: FakeHive) -> None:
    tenant = setup_tenant(hub)
    hive.responder = lambda req: (200, {})
    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        (
            evo.upsert(
                "acme-sales",
                message={"imageMessage": {**MEDIA, "mimetype": "image/jpeg", "caption": "foto do defeito"}},
                message_type="imageMessage",
            ),
            lambda m: (
                m["content"]["type"] == "image"
                and m["content"]["text"] == "foto do defeito"
                and m["content"]["media"][0]["mime_type"] == "image/jpeg"
                and m["content"]["media"][0]["size"] == 52340
            ),
        ),
        (
            evo.upsert(
                "acme-sales",
                message={"audioMessage": {**MEDIA, "mimetype": "audio/ogg; codecs=opus", "ptt": True, "seconds": 7}},
                message_type="audioMessage",
            ),
            lambda m: m["content"]["type"] == "audio" and m["content"]["metadata"].get("ptt") is True,
        ),
        (
            evo.upsert(
                "acme-sales",
                message={
                    "documentMessage": {
                        **MEDIA,
                        "mimetype": "application/pdf",
                        "fileName": "boleto.pdf",
                        "caption": "boleto",
                    }
                },
                message_type="documentMessage",
            ),
            lambda m: m["content"]["type"] == "document" and m["content"]["media"][0]["filename"] == "boleto.pdf",
        ),
        (
            evo.upsert(
                "acme-sales",
                message={"stickerMessage": {**MEDIA, "mimetype": "image/webp"}},
                message_type="stickerMessage",
            ),
            lambda m: m["content"]["type"] == "sticker",
        ),
        (
            evo.upsert(
                "acme-sales",
                message={"locationMessage": {"degreesLatitude": -23.55, "degreesLongitude": -46.63, "name": "Loja"}},
                message_type="locationMessage",
            ),
            lambda m: m["content"]["type"] == "location",
        ),
        (
            evo.upsert(
                "acme-sales",
                message={"contactMessage": {"displayName": "Ana", "vcard": "BEGIN:VCARD\nFN:Ana\nEND:VCARD"}},
                message_type="contactMessage",
            ),
            lambda m: m["content"]["type"] == "contact",
        ),
        (
            evo.upsert(
                "acme-sales",
                message={"reactionMessage": {"key": {"id": "3AREACTEDTO0000000"}, "text": "👍"}},
                message_type="reactionMessage",
            ),
            lambda m: m["content"]["type"] == "reaction" and m["content"]["text"] == "👍",
        ),
        (
            evo.upsert(
                "acme-sales", message={"pollCreationMessageV3": {"name": "?"}}, message_type="pollCreationMessageV3"
            ),
            lambda m: m["content"]["type"] == "unsupported",
        ),
        (
            evo.upsert("acme-sales", "bom dia grupo", group="120363000000000001@g.us", phone="5511955550000"),
            lambda m: (
                m["chat"] == {"id": "120363000000000001@g.us", "type": "group", "thread_id": None, "name": None}
                and m["sender"]["id"] == "5511955550000@s.whatsapp.net"
            ),
        ),
        (
            evo.upsert(
                "acme-sales",
                "pode ser às 10h?",
                context_info={
                    "stanzaId": "3AQUOTED00000000000",
                    "participant": evo.OWNER,
                    "quotedMessage": {"conversation": "que horas?"},
                },
            ),
            lambda m: m["reply_to"] == "3AQUOTED00000000000",
        ),
    ]
    for payload, check in cases:
        r = post_webhook(hub, tenant, payload)
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        stored = _stored(hub, r.json()["id"])
        assert check(stored), stored
        assert stored["source"] == "whatsapp" and stored["tenant"] == "acme" and stored["instance"] == "acme-sales"
        assert stored["external_id"] == payload["data"]["key"]["id"]


def test_lid_sender_resolves_to_the_phone(hub: HubProcess, hive: FakeHive) -> None:
    tenant = setup_tenant(hub)
    payload = evo.upsert("acme-sales", "oi pelo lid")
    payload["data"]["key"].update(
        {"remoteJid": "98765432109876@lid", "remoteJidAlt": "5511944443333@s.whatsapp.net", "addressingMode": "lid"}
    )
    r = post_webhook(hub, tenant, payload)
    stored = _stored(hub, r.json()["id"])
    assert stored["chat"]["id"] == "5511944443333@s.whatsapp.net"


def test_connection_and_qr_events_update_the_instance(hub: HubProcess) -> None:
    tenant = setup_tenant(hub)
    instance_id = tenant["instance"]["id"]
    r = post_webhook(hub, tenant, evo.qrcode_updated("acme-sales", code="2@fresh-code"))
    assert r.json()["status"] == "updated"
    r = post_webhook(hub, tenant, evo.connection_update("acme-sales", "close", 401))
    assert r.json()["status"] == "updated"
    listed = {i["id"]: i for i in hub.admin.get("/instances").json()["instances"]}
    assert listed[instance_id]["state"] == "close"
    assert "401" in (listed[instance_id]["state_reason"] or "")
    post_webhook(hub, tenant, evo.connection_update("acme-sales", "open", 200))
    listed = {i["id"]: i for i in hub.admin.get("/instances").json()["instances"]}
    assert listed[instance_id]["state"] == "open"


def test_other_events_are_ignored(hub: HubProcess) -> None:
    tenant = setup_tenant(hub)
    r = post_webhook(hub, tenant, evo.envelope("presence.update", "acme-sales", {"id": "x", "presences": {}}))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = post_webhook(hub, tenant, evo.status_update("acme-sales", "3AUNKNOWN000000000", "READ"))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert history(hub, "acme") == []


def test_instance_lifecycle_on_evolution(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = hub.create_tenant("acme")
    r = hub.admin.post(
        "/instances/create",
        json={
            "instanceName": "acme-sales",
            "tenant": "acme",
            "qrcode": True,
            "evolution": {"api_key": "per-instance-key-123"},
        },
    )
    # The per-instance key is not the fake's key: Evolution answers 401 and the hub says so clearly.
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "channel_error"
    assert "per-instance-key-123" not in r.text

    r = hub.admin.post("/instances/create", json={"instanceName": "acme-sales", "tenant": "acme", "qrcode": True})
    assert r.status_code == 201, r.text
    created = r.json()
    failed_call, call = evolution.requests_to("/instance/create")
    assert failed_call.status == 401
    assert call.body["instanceName"] == "acme-sales" and call.body["qrcode"] is True
    assert call.body["webhook"] == {
        "url": f"{hub.url}/webhooks/evolution/acme",
        "events": ["MESSAGES_UPSERT", "MESSAGES_UPDATE", "SEND_MESSAGE", "CONNECTION_UPDATE", "QRCODE_UPDATED"],
        "headers": {"x-omni-webhook-token": tenant["webhook_secret"]},
        "byEvents": False,
        "base64": False,
    }
    assert created["qr"]["qrcode_base64"].startswith("data:image/png;base64,")
    assert "instance_token" in created["config"]["evolution"]
    assert created["config"]["evolution"]["instance_token"] == "***"  # write-only secret

    assert hub.admin.post("/instances/create", json={"instanceName": "acme-sales", "tenant": "acme"}).status_code == 409

    got = hub.admin.get(f"/instances/{created['id']}").json()
    assert got["live"]["status"] == "ok" and got["name"] == "acme-sales"
    by_name = hub.admin.get("/instances/acme-sales").json()
    assert by_name["id"] == created["id"]

    qr = hub.admin.get(f"/instances/qr/{created['id']}").json()
    assert set(qr) == {"status", "qrcode_base64", "code", "pairing_code"}
    assert qr["qrcode_base64"].startswith("data:image/png;base64,") and qr["code"]

    r = hub.admin.delete(f"/instances/{created['id']}")
    assert r.status_code == 200
    assert not evolution.has_instance("acme-sales")
    assert hub.admin.get(f"/instances/{created['id']}").status_code == 404


def test_deleting_a_tenant_removes_its_instances_on_evolution(hub: HubProcess, evolution: FakeEvolution) -> None:
    tenant = setup_tenant(hub)
    assert evolution.has_instance("acme-sales")
    _error = hub.client(tenant["api_key"]).delete("/tenants/acme")
    assert _error.status_code == 403  # only the admin deletes tenants
    r = hub.admin.delete("/tenants/acme")
    assert r.status_code == 200 and r.json()["instances_not_removed"] == []
    assert not evolution.has_instance("acme-sales")
    assert hub.admin.get("/tenants/acme").status_code == 404
    assert hub.admin.get("/instances").json()["instances"] == []
