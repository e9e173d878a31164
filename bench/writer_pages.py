"""``python -m bench.writer_pages``: what SQLite's writer spends per webhook, and on which pages.

The hub-level ingest figures mix HTTP, the event loop, the writer process and the disk. This tool
runs only the writer's part, in this process: the store's own ingest write (``_write_insert_message``
with the route job and the three ingest trace rows the pipeline sends) for realistic Evolution
webhooks, a transaction of ``--round`` webhooks at a time, on a fresh database file. It prints:

- microseconds per webhook in transactions and in checkpoints (run here, timed apart, where
  SQLite's automatic checkpoint would run: once 1,000 WAL pages are not yet copied), for the
  ``--sync`` mode given;
- then, for ``--sample`` more transactions with checkpoints held back, the WAL pages each
  transaction wrote, by the table or index they belong to (WAL frame headers read against
  SQLite's ``dbstat`` table).

Figures from it are in docs/performance.md (ingest, item 10). It needs a SQLite built with
``dbstat`` (Debian's is) for the page map.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sqlite3
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omni_whatsapp_evolution.normalize import normalize_event

from bench.payloads import FILLER, phone_jid, upsert
from omni_core.ids import new_id
from omni_core.model import Message, now_iso
from omni_core.pipeline import lane_for
from omni_core.store import sqlite as store_sqlite
from omni_core.store.base import NewJob, TraceRecord
from omni_core.store.sqlite_writer import run_ops

Op = tuple[Callable[..., Any], tuple[Any, ...]]
#: SQLite's automatic checkpoint size (pages), which the hub's writer uses.
CHECKPOINT_PAGES = 1000
_WAL_HEADER = 32
_FRAME_HEADER = 24


def ingest_op(rnd: random.Random, n: int, tenants: int, chats: int) -> Op:
    """One webhook's ingest write, as the pipeline hands it to the writer."""
    t, chat = rnd.randrange(tenants), rnd.randrange(chats)
    key = "3EB0" + rnd.getrandbits(64).to_bytes(8, "big").hex().upper()
    body = json.loads(upsert(f"inst{t}", phone_jid(t * chats + chat), key, f"{n} {FILLER}"))
    [message] = normalize_event(f"ten{t}", body, instance_name=f"inst{t}")
    if not isinstance(message, Message):
        raise RuntimeError(f"the bench webhook normalized to {type(message).__name__}, not a message")
    now = now_iso()
    message.status = "queued"
    job = NewJob(
        id=new_id("job"),
        kind="route",
        lane=lane_for("route", message.tenant, message.instance, message.chat.id),
        max_attempts=5,
        run_at=time.time(),
    )
    stages = (("received", "ok", "evolution", None), ("normalized", "ok", "evolution", 0.05))
    traces = [
        TraceRecord(tenant=message.tenant, stage=stage, outcome=outcome, plugin=plugin, duration_ms=ms, at=now)
        for stage, outcome, plugin, ms in (*stages, ("deduplicated", "pending", None, None))
    ]
    return store_sqlite._write_insert_message, store_sqlite.insert_message_args(message, job, now, (), traces, None)


def wal_frames(path: Path) -> list[tuple[int, bool]]:
    """(page number, is a commit) of every frame in a WAL file."""
    data = path.read_bytes()
    if len(data) < _WAL_HEADER:
        return []
    page = struct.unpack(">I", data[8:12])[0]
    frames, offset = [], _WAL_HEADER
    while offset + _FRAME_HEADER + page <= len(data):
        number, commit = struct.unpack(">II", data[offset : offset + 8])
        frames.append((number, commit != 0))
        offset += _FRAME_HEADER + page
    return frames


def uncopied_pages(shm: Path) -> int:
    """WAL pages not yet copied into the database, from the WAL index (SQLite's documented
    ``-shm`` layout: ``mxFrame`` at byte 16, ``nBackfill`` at byte 96, native byte order)."""
    with shm.open("rb") as file:
        head = file.read(100)
    return int(struct.unpack_from("=I", head, 16)[0]) - int(struct.unpack_from("=I", head, 96)[0])


def page_owners(path: Path) -> dict[int, str]:
    """Page number -> the table or index it belongs to (SQLite's ``dbstat``)."""
    db = sqlite3.connect(path)
    try:
        return {int(row[1]): str(row[0]) for row in db.execute("SELECT name, pageno FROM dbstat")}
    finally:
        db.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="omni-writer-pages-"))
    try:
        return _measure(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    path = folder / "hub.db"
    db = store_sqlite.connect_writer(str(path), args.sync)
    store_sqlite._apply_migrations(db)
    db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are run (and timed) below
    rnd = random.Random(args.seed)
    made = 0

    def batch(size: int) -> list[Op]:
        nonlocal made
        ops = [ingest_op(rnd, made + k, args.tenants, args.chats) for k in range(size)]
        made += size
        return ops

    def commit(ops: Sequence[Op]) -> float:
        started = time.perf_counter()
        outcomes = run_ops(db, list(ops), True)
        elapsed = time.perf_counter() - started
        failed = [value for ok, value in outcomes if not ok]
        if failed:
            raise RuntimeError(f"a write failed: {failed[0]!r}")
        return elapsed

    for _ in range(0, args.warm, 500):
        commit(batch(500))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    transactions: list[float] = []
    checkpoints: list[float] = []
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    for _ in range(args.webhooks // args.round):
        transactions.append(commit(batch(args.round)))
        if uncopied_pages(shm) >= CHECKPOINT_PAGES:  # where SQLite's own checkpoint would run
            started = time.perf_counter()
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            checkpoints.append(time.perf_counter() - started)
    measured = len(transactions) * args.round

    # The page map: checkpoints held back, so the WAL holds exactly the sampled transactions.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for _ in range(args.sample):
        commit(batch(args.round))
    frames = wal_frames(wal)
    copy = folder / "map.db"
    copy.write_bytes(path.read_bytes())
    Path(f"{copy}-wal").write_bytes(wal.read_bytes())
    owners = page_owners(copy)
    db.close()
    commits = sum(1 for _, is_commit in frames if is_commit) or 1
    by_owner = collections.Counter(owners.get(number, "(new or free)") for number, _ in frames)
    return {
        "sync": args.sync,
        "round": args.round,
        "stored_before": args.warm,
        "webhooks_measured": measured,
        "transactions_us_per_webhook": 1e6 * sum(transactions) / measured,
        "checkpoints_us_per_webhook": 1e6 * sum(checkpoints) / measured,
        "transaction_ms_p50": 1e3 * statistics.median(transactions),
        "checkpoint_ms_p50": 1e3 * statistics.median(checkpoints) if checkpoints else 0.0,
        "wal_pages_per_webhook": len(frames) / (args.sample * args.round),
        "wal_pages_per_transaction": {name: n / commits for name, n in by_owner.most_common()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_pages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL", "OFF"], help="PRAGMA synchronous")
    parser.add_argument("--round", type=int, default=25, help="webhooks per transaction (~25 at c=64)")
    parser.add_argument("--warm", type=int, default=60_000, help="webhooks stored before measuring")
    parser.add_argument("--webhooks", type=int, default=20_000, help="webhooks measured")
    parser.add_argument("--sample", type=int, default=200, help="transactions in the page map")
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--chats", type=int, default=5000, help="chats per tenant")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"synchronous={result['sync']}, {result['round']} webhooks per transaction,"
        f" {result['stored_before']:,} stored before, {result['webhooks_measured']:,} measured"
    )
    print(
        f"  per webhook: transactions {result['transactions_us_per_webhook']:.0f} µs"
        f" + checkpoints {result['checkpoints_us_per_webhook']:.0f} µs"
        f" (transaction p50 {result['transaction_ms_p50']:.2f} ms, checkpoint p50 {result['checkpoint_ms_p50']:.2f} ms)"
    )
    print(f"  WAL pages per webhook: {result['wal_pages_per_webhook']:.1f}; per transaction, by table or index:")
    for name, pages in result["wal_pages_per_transaction"].items():
        print(f"    {name:32s} {pages:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
