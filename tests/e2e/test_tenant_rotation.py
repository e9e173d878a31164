"""Rotating a tenant's credentials: its API key, and its inbound webhook secret (with an overlap
during which the previous secret still works, and the new one handed to Evolution)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import post_webhook, setup_tenant, wait_until
from tests.fakes.evolution import FakeEvolution
from tests.hub_process import ADMIN_KEY, HubProcess

TOKEN_HEADER = "x-omni-webhook-token"


def call(hub: HubProcess, api_key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    with hub.client(api_key) as client:
        return client.request(method, path, **kw)


def rotate_secret(hub: HubProcess, api_key: str, tenant_id: str = "acme", **kw: Any) -> httpx.Response:
    return call(hub, api_key, "POST", f"/tenants/{tenant_id}/rotate-webhook-secret", **kw)


def webhook_of(evolution: FakeEvolution, name: str) -> dict[str, Any]:
    """The webhook the fake Evolution holds for instance ``name``."""
    instance = evolution.instance(name)
    assert instance is not None and instance["webhook"] is not None, name
    webhook: dict[str, Any] = instance["webhook"]
    return webhook


def inbound(hub: HubProcess, tenant: dict[str, Any], token: str, text: str = "oi") -> int:
    """Status of one Evolution webhook for ``tenant`` carrying ``token``."""
    return post_webhook(hub, tenant, evo.upsert("acme-sales", text), token=token).status_code


def test_rotate_api_key(hub_factory: HubFactory) -> None:
    hub = hub_factory(hive_enabled=False)
    acme = hub.create_tenant("acme")
    other = hub.create_tenant("other")
    old = acme["api_key"]

    r = call(hub, old, "POST", "/tenants/acme/rotate-api-key")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"id", "api_key"} and r.json()["id"] == "acme"
    new = r.json()["api_key"]
    assert new.startswith("omni_") and new != old
    # The old key stops working at once; the new one works.
    r = call(hub, old, "GET", "/tenants/acme")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert call(hub, new, "GET", "/tenants/acme").status_code == 200

    # A tenant cannot see, so cannot rotate, another tenant's key; nothing changes.
    r = call(hub, other["api_key"], "POST", "/tenants/acme/rotate-api-key")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_tenant"
    assert call(hub, new, "GET", "/tenants/acme").status_code == 200
    assert call(hub, old, "POST", "/tenants/acme/rotate-api-key").status_code == 401

    # The admin may rotate any tenant's key.
    r = hub.admin.post("/tenants/acme/rotate-api-key")
    assert r.status_code == 200, r.text
    assert call(hub, new, "GET", "/tenants/acme").status_code == 401
    assert call(hub, r.json()["api_key"], "GET", "/tenants/acme").status_code == 200
    assert call(hub, other["api_key"], "GET", "/tenants/other").status_code == 200
    assert hub.admin.post("/tenants/nope/rotate-api-key").status_code == 404
    # The key survives a restart (it is the stored hash, not a cache, that changed).
    hub.stop()
    hub.start()
    assert call(hub, r.json()["api_key"], "GET", "/tenants/acme").status_code == 200
    assert call(hub, new, "GET", "/tenants/acme").status_code == 401


def test_previous_webhook_secret_works_during_the_overlap_only(
    hub_factory: HubFactory, evolution: FakeEvolution
) -> None:
    hub = hub_factory(hive_enabled=False)
    tenant = setup_tenant(hub)
    old = tenant["webhook_secret"]
    assert inbound(hub, tenant, old) == 200

    before = time.time()
    r = rotate_secret(hub, tenant["api_key"], json={"overlap_seconds": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    new = body["webhook_secret"]
    assert new.startswith("whsec_") and new != old
    assert body["id"] == "acme" and body["instances_not_updated"] == []
    assert before + 2 <= body["previous_valid_until"] <= time.time() + 2

    # Evolution now sends the new secret: the instance's webhook was re-set as at creation.
    hook = webhook_of(evolution, "acme-sales")
    assert hook["headers"] == {TOKEN_HEADER: new}
    assert hook["url"] == f"{hub.url}/webhooks/evolution/acme" and hook["enabled"] is True
    assert "MESSAGES_UPSERT" in hook["events"]

    # Neither secret is ever shown again; the end of the overlap is.
    shown = hub.admin.get("/tenants/acme")
    assert old not in shown.text and new not in shown.text
    assert shown.json()["webhook_secret_overlap_until"] == body["previous_valid_until"]

    assert inbound(hub, tenant, new, "nova") == 200
    assert inbound(hub, tenant, old, "antiga, ainda valendo") == 200
    r = post_webhook(hub, tenant, evo.upsert("acme-sales", "?"), token="whsec_wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_webhook_token"

    time.sleep(max(0.0, body["previous_valid_until"] - time.time()) + 0.2)
    r = post_webhook(hub, tenant, evo.upsert("acme-sales", "antiga, expirada"), token=old)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_webhook_token"
    assert inbound(hub, tenant, new, "nova de novo") == 200
    # The ?token= form follows the same rules.
    url = f"{hub.url}/webhooks/evolution/acme"
    assert httpx.post(url, params={"token": new}, json=evo.upsert("acme-sales", "q")).status_code == 200
    assert httpx.post(url, params={"token": old}, json=evo.upsert("acme-sales", "q2")).status_code == 401


def test_overlap_zero_default_overlap_and_bad_bodies(hub_factory: HubFactory) -> None:
    hub = hub_factory(hive_enabled=False, OMNI_WEBHOOK_SECRET_OVERLAP_SECONDS="60")
    tenant = setup_tenant(hub)
    s0 = tenant["webhook_secret"]
    key = tenant["api_key"]

    for bad, field in [
        ({"overlap_seconds": -1}, "overlap_seconds"),
        ({"overlap_seconds": 604801}, "overlap_seconds"),
        ({"overlap_seconds": "10"}, "overlap_seconds"),
        ({"overlap_seconds": 1.5}, "overlap_seconds"),
        ({"overlap": 10}, "overlap"),
    ]:
        r = rotate_secret(hub, key, json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_request" and field in r.json()["error"]["message"], r.text
    r = rotate_secret(hub, key, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = rotate_secret(hub, key, json=[1])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    # None of those rotated anything.
    assert inbound(hub, tenant, s0) == 200

    r = rotate_secret(hub, key, json={"overlap_seconds": 0})
    assert r.status_code == 200 and r.json()["previous_valid_until"] is None
    s1 = r.json()["webhook_secret"]
    assert inbound(hub, tenant, s0) == 401
    assert inbound(hub, tenant, s1) == 200
    assert hub.admin.get("/tenants/acme").json()["webhook_secret_overlap_until"] is None

    # No body: the configured overlap; the previous secret is the one this rotation replaced.
    r = rotate_secret(hub, key)
    assert r.status_code == 200, r.text
    s2 = r.json()["webhook_secret"]
    assert 55 < r.json()["previous_valid_until"] - time.time() <= 60
    assert [inbound(hub, tenant, s) for s in (s0, s1, s2)] == [401, 200, 200]
    # An explicit null also means the default.
    r = rotate_secret(hub, key, json={"overlap_seconds": None})
    assert r.status_code == 200 and r.json()["previous_valid_until"] > time.time() + 55
    assert [inbound(hub, tenant, s) for s in (s1, s2, r.json()["webhook_secret"])] == [401, 200, 200]


def test_every_evolution_instance_gets_the_new_secret_and_failures_are_listed(
    hub_factory: HubFactory, evolution: FakeEvolution
) -> None:
    hub = hub_factory(hive_enabled=False)
    tenant = setup_tenant(hub)
    r = hub.admin.post("/instances/create", json={"instanceName": "acme-support", "tenant": "acme"})
    assert r.status_code == 201, r.text
    other = setup_tenant(hub, "other", "other-sales")
    evolution.clear_requests()

    r = rotate_secret(hub, ADMIN_KEY, json={"overlap_seconds": 600})
    assert r.status_code == 200, r.text
    new = r.json()["webhook_secret"]
    sets = evolution.requests_to("/webhook/set/", "POST")
    assert sorted(s.path for s in sets) == ["/webhook/set/acme-sales", "/webhook/set/acme-support"]
    assert all(s.status == 201 and s.body["webhook"]["headers"] == {TOKEN_HEADER: new} for s in sets)
    # Another tenant's instance is left alone.
    assert webhook_of(evolution, "other-sales")["headers"] == {TOKEN_HEADER: other["webhook_secret"]}

    # Evolution fails for one instance: the secret still rotates, and that instance is named.
    evolution.clear_requests()
    evolution.fail_next(1, 500, path="/webhook/set/acme-support")
    r = rotate_secret(hub, tenant["api_key"], json={"overlap_seconds": 600})
    assert r.status_code == 200, r.text
    newer = r.json()["webhook_secret"]
    assert r.json()["instances_not_updated"] == ["acme-support"]
    assert webhook_of(evolution, "acme-sales")["headers"] == {TOKEN_HEADER: newer}
    assert webhook_of(evolution, "acme-support")["headers"] == {TOKEN_HEADER: new}
    # acme-support still sends the previous secret, which the overlap keeps valid.
    assert inbound(hub, tenant, new) == 200 and inbound(hub, tenant, newer) == 200

    # An instance gone from Evolution (404) is reported the same way.
    evolution.remove_instance("acme-sales")
    r = rotate_secret(hub, tenant["api_key"], json={"overlap_seconds": 600})
    assert r.status_code == 200 and r.json()["instances_not_updated"] == ["acme-sales"]
    assert "tenant_secret_not_updated" in hub.logs()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_rotations_reach_every_replica_at_once(
    hub_factory: HubFactory, database_urls: Callable[[], str], evolution: FakeEvolution
) -> None:
    url = database_urls()
    a, b = (hub_factory(hive_enabled=False, AUTOMAGIK_OMNI_DATABASE_URL=url) for _ in range(2))
    tenant = setup_tenant(a)
    old_key, old_secret = tenant["api_key"], tenant["webhook_secret"]
    # Replica b caches the tenant and its key hash.
    assert call(b, old_key, "GET", "/tenants/acme").status_code == 200
    assert inbound(b, tenant, old_secret) == 200

    r = call(a, old_key, "POST", "/tenants/acme/rotate-api-key")
    assert r.status_code == 200, r.text
    new_key = r.json()["api_key"]
    # NOTIFY reaches b within milliseconds; the cache TTL (30 s) would be far longer.
    wait_until(lambda: call(b, old_key, "GET", "/tenants/acme").status_code == 401, timeout=2, what="old key 401")
    assert call(b, new_key, "GET", "/tenants/acme").status_code == 200

    r = rotate_secret(a, new_key, json={"overlap_seconds": 0})
    assert r.status_code == 200, r.text
    wait_until(lambda: inbound(b, tenant, old_secret) == 401, timeout=2, what="old secret 401 on b")
    assert inbound(b, tenant, r.json()["webhook_secret"]) == 200
