"""Tenant config is checked when written: plugins validate their own sections through
omni_validate_tenant_config, and a bad value is refused with 400 invalid_config, storing nothing."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import HIVE_KEY, HubFactory
from tests.fakes.hive import FakeHive

SECRET = "sk-live-do-not-echo-4f2a9c"


def invalid_config(r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    error: dict[str, str] = r.json()["error"]
    assert error["code"] == "invalid_config", error
    return error["message"]


def test_create_refuses_a_bad_hive_section_and_stores_nothing(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(hive_enabled=False)
    bad: dict[str, Any] = {
        "hive": {"enabled": "maybe", "api_url": "hive.acme.example", "api_key": SECRET + "\u00e9"},
        "greeting": "oi",
    }
    message = invalid_config(hub.admin.post("/tenants", json={"id": "acme", "name": "Acme", "config": bad}))
    # Every problem is listed, each naming its key; the secret in the bad section is not echoed.
    for key in ("hive.enabled", "hive.api_url", "hive.api_key"):
        assert key in message, message
    assert SECRET not in message and "hive.acme.example" not in message
    assert hub.admin.get("/tenants/acme").status_code == 404
    assert hub.admin.get("/tenants").json()["tenants"] == []

    # A scheme other than http(s) alone is enough to refuse.
    bad = {"hive": {"api_url": "ftp://hive.acme.example", "api_key": SECRET}}
    message = invalid_config(hub.admin.post("/tenants", json={"id": "acme", "name": "Acme", "config": bad}))
    assert message.startswith("invalid tenant config: hive.api_url ") and SECRET not in message

    # A good section is accepted as sent (the secret redacted in the answer, as always).
    good = {"hive": {"enabled": "on", "api_url": f"{hive.url}/", "api_key": SECRET, "priority": "high"}}
    r = hub.admin.post("/tenants", json={"id": "acme", "name": "Acme", "config": {**good, "greeting": "oi"}})
    assert r.status_code == 201, r.text
    assert r.json()["config"] == {"hive": {**good["hive"], "api_key": "***"}, "greeting": "oi"}


def test_patch_refuses_a_bad_hive_url_and_leaves_the_tenant_unchanged(hub_factory: HubFactory, hive: FakeHive) -> None:
    hub = hub_factory(hive_enabled=False)
    tenant = hub.create_tenant("acme", hive={"enabled": True, "api_url": hive.url, "api_key": HIVE_KEY}, greeting="oi")
    before = hub.admin.get("/tenants/acme").json()

    # As the tenant itself and as the admin; with a name change in the same body, which is not applied either.
    with hub.client(tenant["api_key"]) as own:
        for client in (own, hub.admin):
            r = client.patch(
                "/tenants/acme",
                json={"name": "Renamed", "config": {"hive": {"api_url": "http://", "api_key": SECRET}}},
            )
            message = invalid_config(r)
            assert "hive.api_url" in message and SECRET not in message
            assert client.get("/tenants/acme").json() == before

    # A wrong type is refused as well.
    r = hub.admin.patch("/tenants/acme", json={"config": {"hive": {"api_url": 8080}}})
    assert "hive.api_url must be a string" in invalid_config(r)
    assert hub.admin.get("/tenants/acme").json() == before

    # A good value is accepted; null still deletes a key (falling back to HIVE_API_URL).
    r = hub.admin.patch("/tenants/acme", json={"config": {"hive": {"api_url": "https://hive.acme.example:8443/v1"}}})
    assert r.status_code == 200, r.text
    assert hub.admin.get("/tenants/acme").json()["config"]["hive"]["api_url"] == "https://hive.acme.example:8443/v1"
    r = hub.admin.patch("/tenants/acme", json={"config": {"hive": {"api_url": None}}, "name": "Renamed"})
    assert r.status_code == 200, r.text
    after = hub.admin.get("/tenants/acme").json()
    assert after["name"] == "Renamed" and after["config"] == {
        "hive": {"enabled": True, "api_key": "***"},
        "greeting": "oi",
    }

    # Other sections are not the Hive plugin's business (the core knows no plugin keys).
    r = hub.admin.patch("/tenants/acme", json={"config": {"crm": {"api_url": "not a url"}}})
    assert r.status_code == 200, r.text

    # The plugin list shows the new hook.
    plugins = {p["name"]: p for p in hub.admin.get("/plugins").json()["plugins"]}
    assert "omni_validate_tenant_config" in plugins["hive"]["hooks"]
