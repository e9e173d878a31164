"""Tenant webhook deliveries against DNS rebinding: the host is resolved once per attempt, every
answer is checked, and the connection goes to exactly the checked addresses.

The hub's real sender, client and transport on a real store (SQLite and PostgreSQL), against
servers on 127.0.0.x. Two things are swapped for the test, both in ``omni_core.webhook_delivery``:
the resolver (a rebinding DNS server: one answer for the check, another afterwards) and, where a
test needs a "public" address that is still on this machine, the address policy, which then
counts 127.0.0.2 and 127.0.0.3 as public. No test connects anywhere but 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from omni_core import webhook_delivery
from omni_core.config import Settings
from omni_core.entities import Tenant, TenantWebhook
from omni_core.events import delivery_jobs
from omni_core.http_client import make_http_client
from omni_core.hub import Hub
from omni_core.ids import new_id
from omni_core.model import now_iso
from omni_core.pipeline import Pipeline
from omni_core.plugins import make_plugin_manager
from omni_core.signing import new_secret
from omni_core.store.base import Job, Store
from omni_core.store.postgres import PostgresStore
from omni_core.store.sqlite import SqliteStore
from omni_core.webhook_delivery import DeliveryFailed, WebhookSender, public_addresses, resolves_private
from tests.pg import acreate_database, adrop_database

NOW = "2026-01-01T00:00:00.000Z"
#: On this machine, but counted as public by ``local_public`` (nothing listens on .3).
PUBLIC_HERE = "127.0.0.2"
PUBLIC_NOBODY = "127.0.0.3"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    tenant = Tenant(id="acme", name="Acme", webhook_secret="s", created_at=NOW, updated_at=NOW)
    if request.param == "sqlite":
        s: Store = SqliteStore(str(tmp_path / "hub.db"))
        await s.open()
        await s.create_tenant(tenant, "h")
        yield s
        await s.close()
        return
    url = await acreate_database()
    s = PostgresStore(url, pool_size=3)
    try:
        await s.open()
        await s.create_tenant(tenant, "h")
        yield s
        await s.close()
    finally:
        await adrop_database(url)


@dataclass
class Receiver:
    """A webhook endpoint on one local address: counts connections, answers every POST with 204."""

    host: str
    port: int = 0
    connections: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)}
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append({"request-line": lines[0], **headers})
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


class RebindingResolver:
    """Answers the first lookup with ``first``, every later one with ``then`` (DNS with TTL 0)."""

    def __init__(self, first: list[str], then: list[str]) -> None:
        self.answers = [first, then]
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        return self.answers[min(len(self.asked), 2) - 1]


@pytest.fixture
def local_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count 127.0.0.2 and 127.0.0.3 as public addresses, as if they were a receiver's on the internet."""
    real = webhook_delivery.is_private

    def policy(address: str) -> bool:
        return address not in (PUBLIC_HERE, PUBLIC_NOBODY) and real(address)

    monkeypatch.setattr(webhook_delivery, "is_private", policy)


def use_resolver(monkeypatch: pytest.MonkeyPatch, resolver: Callable[[str], Any]) -> None:
    monkeypatch.setattr(webhook_delivery, "resolve_host", resolver)


async def attempt(store: Store, url: str, **settings: Any) -> Job:
    """One delivery attempt to ``url`` by the hub's sender; the job as the store has it afterwards."""
    config = Settings(**{"webhook_retry_schedule": (30.0,), "webhook_timeout_seconds": 2.0, **settings})
    pm = make_plugin_manager(load_entry_points=False)
    pipeline = Pipeline(config, store, pm)
    http = make_http_client(config)
    pipeline.hub = Hub(config, store, pm, http, pipeline)
    webhook = TenantWebhook(
        id=new_id("wh"), tenant="acme", url=url, events=["*"], secret=new_secret(), created_at=NOW, updated_at=NOW
    )
    await store.create_webhook(webhook)
    [new_job] = delivery_jobs([webhook], "message.inbound", {"text": "oi"}, pipeline.webhook_attempts)
    await store.enqueue_jobs("acme", None, [new_job], now_iso())
    claimed = [j for j in await store.claim_jobs("test", 10, time.time(), 30) if j.id == new_job.id]
    assert len(claimed) == 1
    try:
        await WebhookSender(pipeline).run(claimed[0])
    finally:
        await http.aclose()
    job = await store.get_job(new_job.id)
    assert job is not None
    return job


def retried(job: Job, error_starts: str) -> None:
    """The attempt failed, counted, and the delivery waits for its next try (not dead)."""
    assert job.status == "queued" and job.attempts == 1, (job.status, job.attempts, job.last_error)
    assert job.last_error is not None and job.last_error.startswith(error_starts), job.last_error
    assert job.run_at > time.time() + 10


# -- DNS rebinding ---------------------------------------------------------------------------------


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    store: Store, monkeypatch: pytest.MonkeyPatch, local_public: None
) -> None:
    """The check sees a public address; the system resolver would say 127.0.0.1 for ``localhost``."""
    async with Receiver("127.0.0.1") as trap, Receiver(PUBLIC_HERE, trap.port) as receiver:
        resolver = RebindingResolver([PUBLIC_HERE], ["127.0.0.1"])
        use_resolver(monkeypatch, resolver)
        url = f"http://localhost:{trap.port}/hook"
        job = await attempt(store, url)
        assert job.status == "done", job.last_error
        assert resolver.asked == ["localhost"]  # once for the attempt: the client resolved nothing
        [request] = receiver.requests
        assert request["request-line"] == "POST /hook HTTP/1.1"
        assert request["host"] == f"localhost:{trap.port}" and request["webhook-id"].startswith("evt_")
        assert trap.connections == 0
        # The next attempt resolves again, now gets 127.0.0.1, and is refused before connecting.
        job = await attempt(store, url)
        retried(job, "url resolves to a private address")
        assert resolver.asked == ["localhost", "localhost"] and trap.connections == 0
        # Control: unpinned (private addresses allowed) the client's own lookup does reach the trap.
        job = await attempt(store, url, webhook_allow_private=True)
        assert job.status == "done" and trap.connections == 1 and len(resolver.asked) == 2


async def test_a_checked_address_nobody_listens_on_fails_and_the_rebound_one_gets_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, local_public: None
) -> None:
    async with Receiver("127.0.0.1") as trap:
        use_resolver(monkeypatch, RebindingResolver([PUBLIC_NOBODY], ["127.0.0.1"]))
        job = await attempt(store, f"http://localhost:{trap.port}/hook")
        retried(job, "connection failed: ConnectError")
        assert trap.connections == 0


# -- the check -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [["93.184.215.14", "10.0.0.8"], ["10.0.0.8", "93.184.215.14"], ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::1"]],
    ids=["private-last", "private-first", "ipv6-loopback"],
)
async def test_every_resolved_address_is_checked(
    store: Store, monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    resolver = RebindingResolver(answer, answer)
    use_resolver(monkeypatch, resolver)
    assert await resolves_private("https://hooks.example.com/x")  # the API's check at registration
    job = await attempt(store, "https://hooks.example.com/x")
    retried(job, "url resolves to a private address")  # refused before any connection was tried
    assert resolver.asked == ["hooks.example.com", "hooks.example.com"]


async def test_private_ip_literals_are_refused_without_a_lookup(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = RebindingResolver(["93.184.215.14"], ["93.184.215.14"])
    use_resolver(monkeypatch, resolver)
    async with Receiver("127.0.0.1") as trap:
        port = trap.port
        for url in (
            f"http://[::1]:{port}/x",
            f"http://[::ffff:127.0.0.1]:{port}/x",
            f"http://[0:0:0:0:0:0:0:1]:{port}/x",
            f"http://127.0.0.1:{port}/x",
            "http://[fe80::1]/x",
            "http://[::]/x",
            "http://100.100.100.200/latest/meta-data",  # carrier-grade NAT: a cloud's metadata service
        ):
            assert await resolves_private(url), url
            retried(await attempt(store, url), "url resolves to a private address")
        assert resolver.asked == [] and trap.connections == 0


async def test_public_addresses_keep_the_resolver_order_and_pass_literals_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_resolver(monkeypatch, RebindingResolver(["2606:4700::6810:84e5", "104.16.132.229"], []))
    assert await public_addresses("https://hooks.example.com/x") == ("2606:4700::6810:84e5", "104.16.132.229")
    assert await public_addresses("https://[2606:4700::6810:84e5]:8443/x") == ("2606:4700::6810:84e5",)
    assert await public_addresses("http://93.184.215.14/x") == ("93.184.215.14",)


# -- names that do not resolve ---------------------------------------------------------------------


async def test_a_name_that_does_not_resolve_fails_the_attempt_and_is_retried(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def nxdomain(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    use_resolver(monkeypatch, nxdomain)
    job = await attempt(store, "https://gone.omni-test.invalid/hook")
    retried(job, "could not resolve host gone.omni-test.invalid: Name or service not known")
    assert not await resolves_private("https://gone.omni-test.invalid/hook")  # registration lets it through

    async def no_answer(host: str) -> list[str]:
        return []

    use_resolver(monkeypatch, no_answer)
    with pytest.raises(DeliveryFailed, match=r"could not resolve host empty\.omni-test\.invalid: no address found"):
        await public_addresses("https://empty.omni-test.invalid/hook")


async def test_the_system_resolver_is_the_default(store: Store) -> None:
    """No swapped resolver: ``.invalid`` never resolves (RFC 6761), ``localhost`` is refused."""
    retried(await attempt(store, "http://does-not-exist.invalid/hook"), "could not resolve host does-not-exist.invalid")
    retried(await attempt(store, "http://localhost:9/hook"), "url resolves to a private address")
