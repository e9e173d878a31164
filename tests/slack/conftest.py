"""Fixtures for the Slack channel tests: the fake Slack Web API and a hub wired to it.

Requests to the hub are signed with slack_sdk's own ``SignatureVerifier`` (an implementation
independent of the plugin's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier

from tests.conftest import HubFactory
from tests.fakes.slack import DEFAULT_TOKEN, FakeSlack
from tests.hub_process import HubProcess
from tests.slack import payloads

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture(scope="session")
def slack_server() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture
def slack(slack_server: FakeSlack) -> Iterator[FakeSlack]:
    slack_server.reset()
    yield slack_server
    slack_server.reset()


@pytest.fixture
def slack_hub_factory(hub_factory: HubFactory, slack: FakeSlack) -> HubFactory:
    """``hub_factory`` with the Slack plugin's Web API pointed at the fake."""

    def make(hive_enabled: bool = True, start: bool = True, **env: str) -> HubProcess:
        return hub_factory(hive_enabled=hive_enabled, start=start, SLACK_API_URL=f"{slack.url}/api/", **env)

    return make


@pytest.fixture
def slack_hub(slack_hub_factory: HubFactory) -> HubProcess:
    return slack_hub_factory()


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    assert signature is not None
    return signature


def post_signed(
    hub: HubProcess,
    payload: Any,
    *,
    secret: str = SIGNING_SECRET,
    path: str = "/webhooks/slack",
    timestamp: int | None = None,
    retry_num: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """POST ``payload`` to the hub as Slack would: compact JSON, signed at ``timestamp`` (default now)."""
    body = encode(payload)
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "x-slack-request-timestamp": str(ts),
        "x-slack-signature": signature if signature is not None else sign(body, secret, ts),
    }
    if retry_num is not None:
        headers["x-slack-retry-num"] = str(retry_num)
        headers["x-slack-retry-reason"] = "http_timeout"
    return httpx.post(hub.url + path, content=body, headers=headers, timeout=10)


@dataclass
class SlackSetup:
    """A tenant with one Slack instance on a running hub."""

    hub: HubProcess
    tenant: dict[str, Any]
    instance: dict[str, Any]
    secret: str

    @property
    def tenant_id(self) -> str:
        return str(self.tenant["id"])

    def post(self, payload: Any, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("secret", self.secret)
        return post_signed(self.hub, payload, **kwargs)

    def event(self, event: dict[str, Any], **kwargs: Any) -> httpx.Response:
        """Send ``event`` in an ``event_callback`` envelope; expect 200."""
        response = self.post(payloads.envelope(event), **kwargs)
        assert response.status_code == 200, response.text
        return response


def create_slack_instance(
    hub: HubProcess,
    tenant_id: str,
    name: str,
    *,
    token: str = DEFAULT_TOKEN,
    secret: str = SIGNING_SECRET,
    app_id: str | None = payloads.APP,
    team_id: str | None = payloads.TEAM,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {
        "instanceName": name,
        "tenant": tenant_id,
        "channel": "slack",
        "bot_token": token,
        "signing_secret": secret,
        **extra,
    }
    if app_id is not None:
        body["app_id"] = app_id
    if team_id is not None:
        body["team_id"] = team_id
    return hub.admin.post("/instances/create", json=body)


def setup_slack(
    hub: HubProcess,
    tenant_id: str = "acme",
    instance: str = "acme-slack",
    *,
    secret: str = SIGNING_SECRET,
    **options: Any,
) -> SlackSetup:
    """Create a tenant and a connected Slack instance through the API."""
    tenant = hub.create_tenant(tenant_id)
    response = create_slack_instance(hub, tenant_id, instance, secret=secret, **options)
    assert response.status_code == 201, response.text
    return SlackSetup(hub=hub, tenant=tenant, instance=response.json(), secret=secret)
