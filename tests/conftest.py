"""Shared fixtures: fake Evolution and Hive servers, and the hub itself as a real process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.evolution import FakeEvolution
from tests.fakes.hive import FakeHive
from tests.fakes.receiver import FakeReceiver
from tests.hub_process import HubProcess
from tests.pg import create_database, drop_database, require_postgres

EVOLUTION_KEY = "evolution-global-key"
HIVE_KEY = "hive-secret-key"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def evolution_server() -> Iterator[FakeEvolution]:
    with FakeEvolution(api_key=EVOLUTION_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def hive_server() -> Iterator[FakeHive]:
    with FakeHive(api_key=HIVE_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def receiver_server() -> Iterator[FakeReceiver]:
    with FakeReceiver() as server:
        yield server


@pytest.fixture
def receiver(receiver_server: FakeReceiver) -> Iterator[FakeReceiver]:
    """A tenant's webhook endpoint (paths are free: use one per subscription)."""
    receiver_server.reset()
    yield receiver_server
    receiver_server.reset()


@pytest.fixture
def evolution(evolution_server: FakeEvolution) -> Iterator[FakeEvolution]:
    evolution_server.reset()
    yield evolution_server
    evolution_server.reset()


@pytest.fixture
def hive(hive_server: FakeHive) -> Iterator[FakeHive]:
    hive_server.reset()
    yield hive_server
    hive_server.reset()


HubFactory = Callable[..., HubProcess]

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every hub test runs once on the embedded SQLite store and once on PostgreSQL."""
    name: str = request.param
    if name == "postgres":
        require_postgres()
    return name


@pytest.fixture
def database_urls() -> Iterator[Callable[[], str]]:
    """Make throw-away PostgreSQL databases; all are dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(create_database())
        return made[-1]

    yield make
    for url in made:
        drop_database(url)


@pytest.fixture
def hub_factory(
    tmp_path: Path, evolution: FakeEvolution, hive: FakeHive, backend: str, database_urls: Callable[[], str]
) -> Iterator[HubFactory]:
    """Start hubs wired to the fakes; ``hub_factory(hive=False, **env)``. All are stopped afterwards.

    On the postgres backend each hub gets its own fresh database unless ``env`` names one
    (replica tests pass the same AUTOMAGIK_OMNI_DATABASE_URL to several hubs).
    """
    started: list[HubProcess] = []

    def make(hive_enabled: bool = True, start: bool = True, **env: str) -> HubProcess:
        data = tmp_path / f"hub{len(started)}"
        data.mkdir()
        if backend == "postgres" and "AUTOMAGIK_OMNI_DATABASE_URL" not in env:
            env["AUTOMAGIK_OMNI_DATABASE_URL"] = database_urls()
        hub = HubProcess(
            data,
            {
                "EVOLUTION_API_BASE_URL": evolution.url,
                "EVOLUTION_API_KEY": EVOLUTION_KEY,
                "OMNI_TO_HIVE_ENABLED": "true" if hive_enabled else "false",
                "HIVE_API_URL": hive.url,
                "HIVE_API_KEY": HIVE_KEY,
                "HIVE_TIMEOUT_SECONDS": "5",
                **env,
            },
        )
        started.append(hub)
        return hub.start() if start else hub

    yield make
    for hub in started:
        hub.close()


@pytest.fixture
def hub(hub_factory: HubFactory) -> HubProcess:
    return hub_factory()


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data
