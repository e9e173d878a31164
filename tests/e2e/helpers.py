"""Small helpers for the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.hub_process import HubProcess


def setup_tenant(
    hub: HubProcess, tenant_id: str = "acme", instance: str = "acme-sales", **config: Any
) -> dict[str, Any]:
    """Create a tenant and a WhatsApp instance through the API; returns the tenant (with secrets)."""
    tenant = hub.create_tenant(tenant_id, **config)
    r = hub.admin.post("/instances/create", json={"instanceName": instance, "tenant": tenant_id, "qrcode": True})
    assert r.status_code == 201, r.text
    tenant["instance"] = r.json()
    return tenant


def post_webhook(
    hub: HubProcess, tenant: dict[str, Any] | None, payload: Any, *, token: str | None = None, raw: bytes | None = None
) -> httpx.Response:
    path = f"/webhooks/evolution/{tenant['id']}" if tenant else "/webhooks/evolution"
    headers = {"content-type": "application/json"}
    secret = token if token is not None else (tenant["webhook_secret"] if tenant else None)
    if secret:
        headers["x-omni-webhook-token"] = secret
    if raw is not None:
        return httpx.post(hub.url + path, content=raw, headers=headers, timeout=10)
    return httpx.post(hub.url + path, json=payload, headers=headers, timeout=10)


def wait_until(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def message(hub: HubProcess, message_id: str, api_key: str | None = None) -> dict[str, Any]:
    client = hub.client(api_key) if api_key else hub.admin
    r = client.get(f"/messages/{message_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_status(hub: HubProcess, message_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        m = message(hub, message_id)
        return m if m["status"] in statuses else None

    result: dict[str, Any] = wait_until(check, timeout, what=f"message {message_id} to reach {statuses}")
    return result


def history(hub: HubProcess, tenant_id: str, **params: Any) -> list[dict[str, Any]]:
    r = hub.admin.get(f"/messages/history/{tenant_id}", params=params)
    assert r.status_code == 200, r.text
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages
