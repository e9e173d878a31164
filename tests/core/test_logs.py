"""Log lines: every record, the standard library's included, is a scrubbed JSON line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PHONE = "5511987654321"

# Runs in a child process: logging configuration is process-wide, and the hub's CLI configures it
# before building the app, as here.
SCRIPT = textwrap.dedent(
    f"""
    import logging, os, structlog
    from omni_core.logs import configure_logging
    from omni_core.config import load_settings
    from omni_core.app import create_app

    configure_logging("info", "json")
    create_app(load_settings())  # Litestar would install its own root handler here
    logging.getLogger("some.library").info("calling https://api.example.test/send?to={PHONE}")
    logging.getLogger("some.library").debug("below the hub's level")
    logging.getLogger("httpx").info("HTTP Request: POST https://api.example.test/{PHONE}")
    logging.getLogger("discord.gateway").warning("shard for {PHONE} reconnecting")
    try:
        raise RuntimeError("boom for {PHONE}")
    except RuntimeError:
        logging.getLogger("some.library").exception("failed")
    structlog.get_logger("omni").info("hub_event", text="hello {PHONE}")
    """
)


def run_script(tmp_path: Path) -> list[dict[str, object]]:
    env = {"AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH": str(tmp_path / "omni.db"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON (json.loads raises otherwise)


def test_standard_library_records_are_scrubbed_json_lines(tmp_path: Path) -> None:
    records = run_script(tmp_path)
    library = [(r["event"], r["level"]) for r in records if r.get("logger") == "some.library"]
    assert library == [("calling [url]", "info"), ("failed", "error")]
    [gateway] = [r for r in records if r.get("logger") == "discord.gateway"]
    assert gateway == {
        "event": "shard for [number] reconnecting",
        "logger": "discord.gateway",
        "level": "warning",
        "timestamp": gateway["timestamp"],
    }
    [failed] = [r for r in records if r.get("event") == "failed"]
    assert "RuntimeError: boom for [number]" in str(failed["exception"])
    assert not any(r.get("logger") == "httpx" for r in records)  # client libraries stay at warnings
    assert not any(r.get("event") == "below the hub's level" for r in records)
    assert any(r.get("event") == "hub_event" for r in records)
    assert PHONE not in json.dumps(records)
