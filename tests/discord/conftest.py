"""Fixtures for the Discord plugin tests: the fake Discord (REST + gateway) and hubs pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from tests.conftest import HubFactory
from tests.e2e.helpers import wait_until
from tests.fakes.discord import FakeBot, FakeDiscord
from tests.hub_process import HubProcess

from . import payloads


@dataclass
class Bot:
    """A Discord application + bot user as the tests see it (the fake knows the same)."""

    token: str
    application_id: str
    key: SigningKey

    @property
    def user_id(self) -> str:
        return self.application_id  # a bot's user id is its application's id

    @property
    def public_key(self) -> str:
        return payloads.public_key_hex(self.key)


BOT_A = Bot("bot-token-a.0123456789", "1300000000000000001", payloads.signing_key())
BOT_B = Bot("bot-token-b.0123456789", "1300000000000000011", payloads.signing_key(bytes(range(2, 34))))


def pytest_configure(config: pytest.Config) -> None:
    # discord.py imports the standard library's audioop (voice support the hub never uses).
    config.addinivalue_line("filterwarnings", "ignore:'audioop' is deprecated:DeprecationWarning")


@pytest.fixture(scope="session")
def discord_server() -> Iterator[FakeDiscord]:
    with FakeDiscord() as server:
        yield server


@pytest.fixture
def fake_discord(discord_server: FakeDiscord) -> Iterator[FakeDiscord]:
    discord_server.reset()
    for bot in (BOT_A, BOT_B):
        register(discord_server, bot)
    yield discord_server
    discord_server.reset()


def register(fake: FakeDiscord, bot: Bot) -> FakeBot:
    return fake.add_bot(
        bot.token,
        user_id=bot.user_id,
        application_id=bot.application_id,
        public_key=bot.public_key,
        guilds=[payloads.guild_create(bot.user_id)],
    )


@pytest.fixture
def discord_hub(fake_discord: FakeDiscord, hub_factory: HubFactory) -> HubProcess:
    """A hub whose Discord plugin talks to the fake (set up after it, so stopped before it is reset)."""
    return hub_factory(DISCORD_API_URL=fake_discord.api_url)


# --- helpers used by the tests -------------------------------------------------------------------------


def create_instance(
    hub: HubProcess, tenant_id: str, name: str, bot: Bot, expect: int = 201, **extra: Any
) -> httpx.Response:
    body = {
        "instanceName": name,
        "tenant": tenant_id,
        "channel": "discord",
        "bot_token": bot.token,
        "application_id": bot.application_id,
        "public_key": bot.public_key,
        **extra,
    }
    r = hub.admin.post("/instances/create", json=body)
    assert r.status_code == expect, r.text
    return r


def instance_state(hub: HubProcess, instance_id: str) -> dict[str, Any]:
    r = hub.admin.get(f"/instances/{instance_id}")
    assert r.status_code == 200, r.text
    live: dict[str, Any] = r.json()["live"]
    return live


def wait_ready(hub: HubProcess, fake: FakeDiscord, instance_id: str, bot: Bot) -> None:
    fake.gateway.wait_live(bot.token)
    wait_until(lambda: instance_state(hub, instance_id).get("state") == "ready", 10, what="instance ready")


def setup_discord(
    hub: HubProcess,
    fake: FakeDiscord,
    tenant_id: str = "acme",
    name: str = "acme-discord",
    bot: Bot = BOT_A,
    **extra: Any,
) -> dict[str, Any]:
    """A tenant with one Discord instance whose gateway session is up."""
    if hub.admin.get(f"/tenants/{tenant_id}").status_code == 404:
        hub.create_tenant(tenant_id)
    instance: dict[str, Any] = create_instance(hub, tenant_id, name, bot, **extra).json()
    wait_ready(hub, fake, instance["id"], bot)
    return instance


def post_interaction(
    hub: HubProcess,
    bot: Bot,
    payload: dict[str, Any],
    *,
    timestamp: str | None = None,
    tamper: bool = False,
    path: str = "/webhooks/discord",
) -> httpx.Response:
    body = payloads.encode(payload)
    headers = payloads.signed_headers(bot.key, body, timestamp)
    if tamper:
        body = body.replace(b"Is order", b"Was order")
    return httpx.post(hub.url + path, content=body, headers=headers, timeout=10)
