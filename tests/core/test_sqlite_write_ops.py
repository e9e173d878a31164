"""Every SQLite write is a module-level function plus picklable arguments (so it can be shipped to a writer process)."""

from __future__ import annotations

import functools
import pickle
import sqlite3
from typing import Any

import omni_core.store.sqlite as sqlite_store
from omni_core.entities import Tenant, TenantWebhook
from omni_core.events import status_event_jobs
from omni_core.store.base import InsertOutcome, Lease, TraceRecord
from omni_core.store.rows import message_row
from omni_core.store.sqlite_wire import insert_outcome_from_wire
from tests.core.test_store import NOW, job_for, msg


def write_functions() -> dict[str, Any]:
    names = [n for n in vars(sqlite_store) if n.startswith("_write_")] + ["_apply_migrations"]
    return {n: getattr(sqlite_store, n) for n in names}


def test_every_write_function_pickles_by_reference() -> None:
    functions = write_functions()
    assert len(functions) >= 20
    for name, fn in functions.items():
        assert callable(fn), name
        assert pickle.loads(pickle.dumps(fn)) is fn, name


def test_an_insert_message_write_round_trips_through_pickle_and_runs() -> None:
    m = msg(external_id="ext-1")
    trace = TraceRecord(tenant="t1", stage="received", outcome="ok", at=NOW, message_id=m.id)
    args = sqlite_store.insert_message_args(m, job_for(m), NOW, [job_for(m)], [trace], Lease("w1", 123.0))
    assert args[0] == message_row(m, NOW)
    fn, copied = pickle.loads(pickle.dumps((sqlite_store._write_insert_message, args)))
    assert fn is sqlite_store._write_insert_message
    assert copied == args

    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        assert sqlite_store._apply_migrations(db)
        tenant = Tenant(id="t1", name="T1", webhook_secret="s1", created_at=NOW, updated_at=NOW)
        assert sqlite_store._write_create_tenant(db, *pickle.loads(pickle.dumps((tenant, "h1"))))
        outcome: InsertOutcome = insert_outcome_from_wire(pickle.loads(pickle.dumps(fn(db, *copied))))
    finally:
        db.close()
    assert outcome.accepted and outcome.id == m.id
    assert outcome.leased is not None and outcome.leased.lease_owner == "w1"
    assert outcome.leased.message_id == m.id and outcome.leased.message is None  # the store attaches its own


def test_the_status_event_callback_pickles() -> None:
    webhooks = [TenantWebhook(id="wh1", tenant="t1", url="https://example.test/hook", events=["*"], secret="s")]
    callback = functools.partial(status_event_jobs, webhooks, max_attempts=5)
    copied = pickle.loads(pickle.dumps(callback))
    assert copied.func is status_event_jobs
    assert copied.args == (webhooks,) and copied.keywords == {"max_attempts": 5}
    m = msg()
    m.status = "delivered"
    assert [j.kind for j in copied(m)] == [j.kind for j in callback(m)] == ["webhook"]


def test_the_bench_writer_pages_tool_runs_the_current_ingest_write() -> None:
    """bench.writer_pages drives the store's own ingest write; it must keep up with its signature."""
    import argparse

    from bench import writer_pages

    args = argparse.Namespace(
        sync="NORMAL", round=5, warm=0, webhooks=50, sample=4, tenants=2, chats=10, seed=3, json=True
    )
    result = writer_pages.run(args)
    assert result["webhooks_measured"] == 50
    assert result["transactions_us_per_webhook"] > 0
    pages = result["wal_pages_per_transaction"]
    # Every webhook writes a message row, its dedup key, its job and its trace rows.
    assert {"messages", "messages_dedup", "jobs", "traces"} <= set(pages)
    assert result["wal_pages_per_webhook"] > 1


def test_the_writer_keeps_temporary_storage_in_memory_but_migrations_use_files(tmp_path: Any, monkeypatch: Any) -> None:
    # A batch's statement journals stay in memory instead of a temporary file per transaction;
    # an index build in a migration sorts through files, not RAM.
    db = sqlite_store.connect_writer(str(tmp_path / "omni.db"), "FULL")
    try:
        assert db.execute("PRAGMA temp_store").fetchone() == (2,)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        probe = (9999, "9999_probe.sql", "CREATE TABLE probe AS SELECT temp_store AS v FROM pragma_temp_store();")
        bundled = sqlite_store.migrations()
        monkeypatch.setattr(sqlite_store, "migrations", lambda dialect="sqlite": [*bundled, probe])
        assert sqlite_store._apply_migrations(db)[-1] == "9999_probe.sql"
        assert db.execute("SELECT v FROM probe").fetchone() == (1,)  # FILE while migrating
        assert db.execute("PRAGMA temp_store").fetchone() == (2,)  # and back afterwards
    finally:
        db.close()
