"""Run the real hub as a separate process on a free port (so tests can SIGKILL and restart it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN_KEY = "test-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """The hub, started with ``python -m omni_core serve`` and a throw-away SQLite file."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AUTOMAGIK_OMNI_API_HOST": "127.0.0.1",
            "AUTOMAGIK_OMNI_API_PORT": str(self.port),
            "AUTOMAGIK_OMNI_API_KEY": ADMIN_KEY,
            "AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH": str(data_dir / "omni.db"),
            "OMNI_BASE_URL": self.url,
            "OMNI_RETRY_BASE_SECONDS": "0.05",
            "OMNI_RETRY_MAX_SECONDS": "0.5",
            "OMNI_POLL_INTERVAL_SECONDS": "0.05",
            "OMNI_LOG_FORMAT": "json",
            "OMNI_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "hub.log"
        self.admin = httpx.Client(base_url=self.url, headers={"x-api-key": ADMIN_KEY}, timeout=10)

    def start(self, timeout: float = 20.0) -> HubProcess:
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("AUTOMAGIK_", "OMNI_", "HIVE_", "EVOLUTION_"))
        }
        environ.update(self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omni_core", "serve"],
            env=environ,
            cwd=self.data_dir,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy in {timeout}s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing — a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> HubProcess:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, api_key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"x-api-key": api_key}, timeout=10)

    def create_tenant(self, tenant_id: str, **config: Any) -> dict[str, Any]:
        r = self.admin.post("/tenants", json={"id": tenant_id, "name": tenant_id.title(), "config": config})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def close(self) -> None:
        self.stop()
        self.admin.close()
