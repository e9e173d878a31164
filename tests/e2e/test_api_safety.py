"""Bad input gets a clear 4xx naming the problem; tenants never see each other."""

from __future__ import annotations

import httpx

from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import post_webhook, setup_tenant
from tests.hub_process import HubProcess


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["message"]
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


def test_webhook_auth_and_bad_bodies(hub: HubProcess) -> None:
    tenant = setup_tenant(hub)
    good = evo.upsert("acme-sales", "oi")
    _error(post_webhook(hub, tenant, good, token="whsec_wrong"), 401, "invalid_webhook_token")
    r = httpx.post(f"{hub.url}/webhooks/evolution/acme", json=good, timeout=5)
    _error(r, 401, "missing_webhook_token")
    r = httpx.post(f"{hub.url}/webhooks/evolution/acme?token={tenant['webhook_secret']}", json=good, timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    _error(post_webhook(hub, {"id": "ghost", "webhook_secret": "x"}, good), 404, "unknown_tenant")
    _error(post_webhook(hub, tenant, None, raw=b'{"event": "messages.upsert", '), 400, "malformed_json")
    _error(post_webhook(hub, tenant, None, raw=b""), 400)
    _error(post_webhook(hub, tenant, [1, 2, 3]), 400)
    _error(post_webhook(hub, tenant, {"instance": "acme-sales", "data": {}}), 400)
    broken = evo.upsert("acme-sales", "sem id")
    del broken["data"]["key"]["id"]
    err = _error(post_webhook(hub, tenant, broken), 400)
    assert "id" in err["message"]
    wrong_type = evo.upsert("acme-sales", "x")
    wrong_type["data"]["key"] = "not-an-object"
    _error(post_webhook(hub, tenant, wrong_type), 400)
    _error(post_webhook(hub, None, evo.upsert("nobody-here", "x"), token="whatever"), 404, "unknown_instance")


def test_body_over_the_limit_is_413(hub_factory: HubFactory) -> None:
    hub = hub_factory(OMNI_MAX_BODY_BYTES="4096")
    tenant = setup_tenant(hub)
    big = evo.upsert("acme-sales", "x" * 10_000)
    _error(post_webhook(hub, tenant, big), 413)
    _error(hub.admin.post("/tenants", json={"name": "y" * 10_000}), 413)


def test_api_keys_and_validation(hub: HubProcess) -> None:
    _error(httpx.get(f"{hub.url}/tenants", timeout=5), 401, "missing_api_key")
    _error(httpx.get(f"{hub.url}/tenants", headers={"x-api-key": "nope"}, timeout=5), 401, "invalid_api_key")
    _error(hub.admin.post("/tenants", json={"name": 42}), 400, "invalid_request")
    _error(hub.admin.post("/tenants", json={"name": "ok", "id": "bad id!"}), 400, "invalid_request")
    _error(
        hub.admin.post("/tenants", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "malformed_json",
    )
    hub.create_tenant("acme")
    _error(hub.admin.post("/tenants", json={"name": "again", "id": "acme"}), 409, "tenant_exists")
    _error(hub.admin.post("/messages/send", json={"instance": "x", "to": "1"}), 400)
    _error(hub.admin.post("/messages/send", json={"instance": 5, "to": "1", "text": "t"}), 400, "invalid_request")
    _error(
        hub.admin.post("/messages/send", json={"instance": "ghost", "to": "5511999990000", "text": "t"}),
        404,
        "unknown_instance",
    )
    _error(hub.admin.get("/messages/msg_nope"), 404, "unknown_message")
    _error(hub.admin.get("/no/such/route"), 404)
    _error(
        hub.admin.post("/instances/create", json={"instanceName": "x", "tenant": "acme", "channel": "fax"}),
        400,
        "unknown_channel",
    )
    _error(hub.admin.post("/instances/create", json={"tenant": "acme"}), 400, "invalid_request")


def test_recipient_is_validated(hub: HubProcess) -> None:
    setup_tenant(hub)
    r = hub.admin.post("/messages/send", json={"instance": "acme-sales", "to": "not a number", "text": "hi"})
    _error(r, 400, "invalid_recipient")


def test_tenants_are_isolated(hub: HubProcess) -> None:
    a = setup_tenant(hub, "alpha", "alpha-wa")
    b = setup_tenant(hub, "beta", "beta-wa")
    a_client, b_client = hub.client(a["api_key"]), hub.client(b["api_key"])
    b_msg = post_webhook(hub, b, evo.upsert("beta-wa", "segredo do beta")).json()["id"]

    assert a_client.get("/tenants/alpha").status_code == 200
    _error(a_client.get("/tenants"), 403, "admin_only")
    _error(a_client.get("/plugins"), 403, "admin_only")
    _error(a_client.post("/tenants", json={"name": "x"}), 403)
    _error(a_client.get("/tenants/beta"), 404, "unknown_tenant")
    _error(a_client.patch("/tenants/beta", json={"name": "pwned"}), 404)
    _error(a_client.delete("/tenants/beta"), 403, "admin_only")
    _error(a_client.get(f"/messages/{b_msg}"), 404, "unknown_message")
    _error(a_client.get("/messages/history/beta"), 404, "unknown_tenant")
    _error(a_client.get(f"/instances/{b['instance']['id']}"), 404, "unknown_instance")
    _error(a_client.get("/instances/beta-wa"), 404)
    _error(a_client.get("/instances/qr/beta-wa"), 404)
    _error(a_client.delete("/instances/beta-wa"), 404)
    _error(a_client.post("/messages/send", json={"instance": "beta-wa", "to": "5511999990000", "text": "x"}), 404)
    _error(
        a_client.post(
            "/messages/send", json={"instance": "alpha-wa", "tenant": "beta", "to": "5511999990000", "text": "x"}
        ),
        404,
    )
    _error(a_client.post("/instances/create", json={"instanceName": "sneaky", "tenant": "beta"}), 404)
    assert [i["name"] for i in a_client.get("/instances").json()["instances"]] == ["alpha-wa"]
    # A webhook signed with alpha's secret cannot post into beta, nor into beta's instance.
    _error(post_webhook(hub, b, evo.upsert("beta-wa", "x"), token=a["webhook_secret"]), 401)
    _error(post_webhook(hub, a, evo.upsert("beta-wa", "x")), 404, "unknown_instance")
    assert b_client.get(f"/messages/{b_msg}").status_code == 200
    assert [m["id"] for m in b_client.get("/messages/history/beta?direction=inbound").json()["messages"]] == [b_msg]
    assert a_client.get("/messages/history/alpha").json()["messages"] == []
    # Secrets never come back.
    for client, tid in ((a_client, "alpha"), (hub.admin, "beta")):
        body = client.get(f"/tenants/{tid}").text
        assert "whsec_" not in body and "omni_" not in body


def test_core_runs_without_plugins(hub_factory: HubFactory) -> None:
    hub = hub_factory(OMNI_PLUGINS_DISABLED="*")
    assert hub.admin.get("/health").json()["status"] == "ok"
    assert hub.admin.get("/plugins").json() == {"plugins": []}
    hub.create_tenant("solo")
    _error(httpx.post(f"{hub.url}/webhooks/evolution/solo", json={}, timeout=5), 404)
    _error(hub.admin.post("/instances/create", json={"instanceName": "x", "tenant": "solo"}), 400, "unknown_channel")


def test_health_reports_the_queue(hub: HubProcess) -> None:
    body = httpx.get(f"{hub.url}/health", timeout=5).json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["queue"]["depth"] == 0
