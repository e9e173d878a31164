"""The database goes away under a running hub: 503 with Retry-After (never 500), and nothing lost."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from omni_core.store.postgres import PostgresStore
from omni_core.store.sqlite import SqliteStore
from omni_core.store.sqlite_writer_process import WriterProcessError
from tests import evolution_payloads as evo
from tests.conftest import HubFactory
from tests.e2e.helpers import history, post_webhook, setup_tenant, wait_until
from tests.fakes.tcp_link import TcpLink


def through(url: str, link: TcpLink) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{link.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_webhooks_answer_503_while_the_database_is_down(
    hub_factory: HubFactory, database_urls: Callable[[], str]
) -> None:
    url = database_urls()
    link = TcpLink(urlsplit(url).port or 5432).start()
    try:
        hub = hub_factory(hive_enabled=False, AUTOMAGIK_OMNI_DATABASE_URL=through(url, link))
        tenant = setup_tenant(hub)
        assert post_webhook(hub, tenant, evo.upsert("acme-sales", "antes")).status_code == 200

        link.cut()
        during = evo.upsert("acme-sales", "durante a queda")
        for _ in range(3):  # the pooled connections die first, then new ones are refused
            r = post_webhook(hub, tenant, during)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"
            assert r.headers["retry-after"] == "1"
        api = hub.admin.get("/messages/history/acme")
        assert api.status_code == 503 and api.json()["error"]["code"] == "store_unavailable"
        assert hub.admin.get("/health").status_code == 503

        link.restore()
        # The sender retries the same webhook: accepted once the pool reconnects, stored once.
        accepted = wait_until(
            lambda: (r := post_webhook(hub, tenant, during)).status_code == 200 and r, what="a retry accepted"
        )
        assert accepted.json()["status"] in ("accepted", "duplicate", "queued")
        assert post_webhook(hub, tenant, during).json()["status"] == "duplicate"
        texts = [m["content"]["text"] for m in history(hub, "acme")]
        assert sorted(texts) == ["antes", "durante a queda"]
        assert "webhook_handler_failed" not in hub.logs()
        assert "store_unavailable" in hub.logs()
    finally:
        link.close()


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (WriterProcessError("the writer process exited"), True),
        (sqlite3.OperationalError("no such table: messages"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
        (ValueError("a bug"), False),
    ],
)
def test_sqlite_tells_unavailable_from_bugs(error: BaseException, unavailable: bool) -> None:
    assert SqliteStore(":memory:").unavailable(error) is unavailable


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), True),
        (ConnectionRefusedError(111, "Connection refused"), False),  # not raised by the driver
        (TimeoutError("a channel server was slow"), False),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (asyncpg.exceptions.UndefinedTableError("relation does not exist"), False),
        (KeyError("a bug"), False),
    ],
)
def test_postgres_tells_unavailable_from_bugs(error: BaseException, unavailable: bool) -> None:
    assert PostgresStore("postgresql://127.0.0.1/none").unavailable(error) is unavailable


async def test_postgres_counts_socket_errors_the_driver_raised() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        await asyncpg.connect(f"postgresql://127.0.0.1:{port}/none", timeout=5)
    except OSError as exc:
        assert PostgresStore("postgresql://127.0.0.1/none").unavailable(exc)
    else:
        raise AssertionError("connected to a port nothing listens on")
