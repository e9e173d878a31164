"""Child processes of a benchmark run: the hub, the fakes, wrk. Every one is killed when the run ends.

Children get their own session (a Ctrl-C in the terminal reaches only the bench, which then stops
them in order) and, on Linux, a parent-death signal so they die even if the bench is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
HOST = "127.0.0.1"
_children: list[subprocess.Popen[Any]] = []


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc: subprocess.Popen[Any] = subprocess.Popen(cmd, start_new_session=True, preexec_fn=preexec, **kwargs)
    _children.append(proc)
    return proc


def forget(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def stop(proc: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """SIGTERM, wait ``grace_s``, then SIGKILL; only ever this one process (by its pid)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
    forget(proc)


def stop_all() -> None:
    for proc in reversed(list(_children)):
        stop(proc, grace_s=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """Tiny JSON client for setup and control calls (not for load)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def proc_status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field in kB (VmRSS, VmHWM ...); 0 when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from ``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live process below it (the hub's SQLite writer process and its fork server)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


#: CPU seconds of hubs' helper processes (writer, fork server), taken when each hub stopped.
helpers_cpu_s = 0.0


def full_cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, with that of the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid`` and its live descendants."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used so far (from ``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersMeter:
    """How much CPU processes that are not this benchmark's used meanwhile (another engineer's tests...).

    Our own share is this process, its reaped children (hubs, wrk: each scenario waits for them),
    the hubs' helper processes (:data:`helpers_cpu_s`) and the live fakes process.
    """

    def __init__(self, fakes_pid: int | None) -> None:
        self.fakes_pid = fakes_pid
        self.start = (time.monotonic(), machine_busy_seconds(), self._own())

    def _own(self) -> float:
        t = os.times()
        fakes = cpu_seconds(self.fakes_pid) if self.fakes_pid else 0.0
        return t.user + t.system + t.children_user + t.children_system + fakes + helpers_cpu_s

    def share(self) -> float:
        """Others' CPU as a share of the whole machine (all cores) since the meter started."""
        wall0, busy0, own0 = self.start
        wall = time.monotonic() - wall0
        others = (machine_busy_seconds() - busy0) - (self._own() - own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


class HubExited(RuntimeError):
    """The hub process ended before it answered ``/health``."""


class Fakes:
    """The fake Hive and fake Evolution, in one process of their own."""

    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "fakes.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.hive_port = 0
        self.evolution_port = 0

    def start(self) -> Fakes:
        log = self.log_path.open("ab")
        self.proc = spawn([sys.executable, "-m", "bench.fakes"], stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fakes did not start; see {self.log_path}")
        ports = json.loads(line)
        self.hive_port, self.evolution_port = ports["hive_port"], ports["evolution_port"]
        return self

    @property
    def hive_url(self) -> str:
        return f"http://{HOST}:{self.hive_port}"

    @property
    def evolution_url(self) -> str:
        return f"http://{HOST}:{self.evolution_port}"

    def configure(self, hive_delay: dict[str, float] | None = None, default_delay: float = 0.0) -> None:
        http_json(
            "POST",
            self.evolution_url + "/_config",
            {"hive_delay": hive_delay or {}, "hive_default_delay": default_delay},
        )

    def reset(self) -> None:
        http_json("POST", self.evolution_url + "/_reset", {})

    def stats(self, records: bool = False) -> dict[str, Any]:
        _, body = http_json("GET", self.evolution_url + ("/_stats?records=1" if records else "/_stats"))
        assert isinstance(body, dict)
        return body

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, grace_s=5.0)
            self.proc = None

    def ensure_running(self) -> str | None:
        """Restart the fakes if their process has gone; returns a note saying so (None when all is well)."""
        if self.proc is not None and self.proc.poll() is None:
            return None
        code = self.proc.returncode if self.proc is not None else None
        if self.proc is not None:
            forget(self.proc)
        tail = self.log_path.read_text(errors="replace")[-300:].strip() if self.log_path.exists() else ""
        self.start()
        return f"the fakes process had ended (exit status {code}) and was restarted" + (
            f"; its log ends with: {tail!r}" if tail else ""
        )


class Hub:
    """One hub process (``python -m omni_core serve``) on a free port, with its data in ``data_dir``."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = {
            "AUTOMAGIK_OMNI_API_HOST": HOST,
            "AUTOMAGIK_OMNI_API_PORT": str(self.port),
            "AUTOMAGIK_OMNI_API_KEY": ADMIN_KEY,
            "OMNI_BASE_URL": self.url,
            "OMNI_LOG_LEVEL": "warning",
            "OMNI_LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[Any] | None = None
        self.log_path = data_dir / "hub.log"
        #: Last lines of failed start attempts that a retry then got past.
        self.start_failures: list[str] = []

    def start(self, timeout_s: float = 60.0, attempts: int = 3) -> Hub:
        """Start and wait for ``/health``. A hub that exits at once is retried after a pause: the code
        under test may be mid-edit by someone else for a few seconds (seen: an IndentationError)."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout_s)
            except HubExited as exc:
                if attempt == attempts:
                    raise RuntimeError(str(exc)) from None
                self.start_failures.append(str(exc).splitlines()[-1][:200])
                time.sleep(5)
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> Hub:
        # Nothing from the caller's environment may change the hub under test.
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("AUTOMAGIK_", "OMNI_", "HIVE_", "EVOLUTION_"))
        }
        environ.update(self.env)
        log = self.log_path.open("ab")
        self.proc = spawn(
            [sys.executable, "-m", "omni_core", "serve"], env=environ, cwd=self.data_dir, stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                forget(self.proc)
                raise HubExited(f"hub exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            with contextlib.suppress(OSError):
                if http_json("GET", self.url + "/health", timeout=2)[0] == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy in {timeout_s}s:\n{self.logs()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                # The hub's helper processes (the SQLite writer and the fork server it comes from)
                # outlive it by a moment and are reaped by nobody of ours: count their CPU now.
                global helpers_cpu_s
                helpers_cpu_s += sum(full_cpu_seconds(p) for p in process_tree(self.proc.pid)[1:])
            stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> dict[str, Any]:
        status, body = http_json("GET", self.url + "/health", timeout=30)
        return body if isinstance(body, dict) else {"status": status}

    def queue_depth(self) -> int:
        body = self.health()
        return int(body.get("checks", {}).get("queue", {}).get("depth", -1))

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = http_json(method, self.url + path, body, {"x-api-key": ADMIN_KEY})
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status}: {answer}")
        return answer

    def create_tenant(self, tenant_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = self.admin(
            "POST", "/tenants", {"id": tenant_id, "name": tenant_id, "config": config or {}}
        )
        return answer

    def create_instance(self, tenant_id: str, name: str) -> dict[str, Any]:
        # Send pacing off: the benchmark measures the hub, not WhatsApp's politeness limits (with
        # the defaults, one instance sends at most 20 messages/s by design).
        body = {
            "instanceName": name,
            "tenant": tenant_id,
            "qrcode": True,
            "pacing": {"per_chat_per_second": 0, "per_instance_per_second": 0},
        }
        answer: dict[str, Any] = self.admin("POST", "/instances/create", body)
        return answer

    def peak_rss_mb(self) -> float:
        """The hub's processes' peak RSS, summed (an upper bound of their peak together)."""
        return sum(proc_status_kb(p, "VmHWM") for p in process_tree(self.pid)) / 1024

    def rss_mb(self) -> float:
        """RSS of the hub and its helper processes (SQLite writer, fork server), summed."""
        return sum(proc_status_kb(p, "VmRSS") for p in process_tree(self.pid)) / 1024
