"""PATCH /instances/{id}: the hub's own per-instance settings (splitting, pacing) after creation."""

from __future__ import annotations

from typing import Any

from tests.conftest import HubFactory
from tests.e2e.helpers import setup_tenant
from tests.hub_process import HubProcess

LONG = ("Uma frase razoavelmente longa para o teste. " * 150).strip()  # ~6,600 characters


def send_long(hub: HubProcess) -> list[str]:
    r = hub.admin.post("/messages/send", json={"instance": "acme-sales", "to": "+55 11 96666-0000", "text": LONG})
    assert r.status_code == 202, r.text
    parts: list[str] = r.json()["parts"]
    return parts


def patch(hub: HubProcess, instance_id: str, body: Any, key: str | None = None) -> Any:
    client = hub.client(key) if key else hub.admin
    return client.patch(f"/instances/{instance_id}", json=body)


def test_settings_change_after_creation(hub_factory: HubFactory) -> None:
    hub = hub_factory(hive_enabled=False)
    tenant = setup_tenant(hub)
    instance_id = tenant["instance"]["id"]
    assert len(send_long(hub)) == 2  # split by default (WhatsApp: 4,096 characters)

    r = patch(hub, instance_id, {"split_messages": False, "pacing": {"per_chat_per_second": 5, "per_chat_burst": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["split_messages"] is False
    assert r.json()["config"]["pacing"] == {"per_chat_per_second": 5, "per_chat_burst": 2}
    assert len(send_long(hub)) == 1

    # The tenant's own key may change its instance; null restores a default, other keys stay.
    r = patch(hub, instance_id, {"split_messages": None, "pacing": {"per_chat_burst": None}}, key=tenant["api_key"])
    assert r.status_code == 200, r.text
    config = hub.admin.get(f"/instances/{instance_id}").json()["config"]
    assert "split_messages" not in config and config["pacing"] == {"per_chat_per_second": 5}
    assert len(send_long(hub)) == 2


def test_bad_settings_and_other_tenants_are_refused(hub_factory: HubFactory) -> None:
    hub = hub_factory(hive_enabled=False)
    tenant = setup_tenant(hub)
    other = hub.create_tenant("other")
    instance_id = tenant["instance"]["id"]
    for body, field in (
        ({"pacing": {"per_chat_burst": 0}}, "per_chat_burst"),
        ({"pacing": {"per_instance_per_second": -1}}, "per_instance_per_second"),
        ({"pacing": {"per_minute": 3}}, "per_minute"),
        ({"split_messages": "sometimes"}, "split_messages"),
        ({"evolution": {"base_url": "http://x"}}, "evolution"),
    ):
        r = patch(hub, instance_id, body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_request" and field in r.json()["error"]["message"], r.text
    r = patch(hub, instance_id, {"split_messages": False}, key=other["api_key"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_instance"
    assert "split_messages" not in hub.admin.get(f"/instances/{instance_id}").json()["config"]
