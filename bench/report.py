"""docs/performance.md (figures between markers; the rest of the file is kept) and docs/performance.json."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
PROFILE_HEADING = "## Profile notes"
#: The backend the issue's targets are set for; on the others the same checks are informational.
TARGET_BACKEND = "sqlite"
PROFILE_PLACEHOLDER = "_To be written by the lead: what the profiles (py-spy, pyinstrument) showed and what changed._"

HEADER = """# Performance

Figures from the benchmark suite in `bench/` (issue 3). Regenerate them with `python -m bench`
(the standard set, about 10 minutes; `--quick` is a smoke check, `--only NAME` reruns one scenario
and keeps the others' figures). Everything runs on this machine at once: the hub (one server
process, with its SQLite writer process), the load generator (wrk) and the fake Hive and Evolution
servers (one process) share its cores, so
the figures are those of a small machine under its own load, and they are noisy: each is the
median of short repeated runs.
"""


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    wrk = "absent (asyncio driver)"
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
        wrk = (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git_commit(),
        "wrk": wrk,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = [line for line in git("status", "--porcelain", "--", "omni_core", "plugins").splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if dirty:
        return f"{commit} + uncommitted changes in {len(dirty)} file(s) of omni_core/ and plugins/"
    return commit


def _table(columns: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(passed: bool | None, informational: bool = False) -> str:
    if passed is None:
        return "n/a"
    if informational:
        return "met" if passed else "not met"
    return "**PASS**" if passed else "**MISS**"


def render(data: dict[str, Any], json_name: str) -> str:
    """The figures part of performance.md, from the merged JSON."""
    out: list[str] = [START, ""]
    # The targets' backend first, then the others in the order they were first run.
    backends = sorted(data["backends"].items(), key=lambda item: item[0] != TARGET_BACKEND)
    for backend, scenarios in backends:
        sections = [scenarios[name] for name in data["order"] if name in scenarios]
        out.append(f"## Results: {backend}")
        out.append("")
        runs = {json.dumps(s["meta"], sort_keys=True): s["meta"] for s in sections}
        for meta in runs.values():
            names = ", ".join(s["section"]["name"] for s in sections if s["meta"] == meta)
            out.append(
                f"Run of {names}: {meta['date']}, commit {meta['git_commit']}, {meta['nproc']} x {meta['cpu_model']},"
                f" {meta['memory_gb']} GB, Python {meta['python']}, load generator {meta['wrk']},"
                f" load average at start {meta['load_average_at_start']}, mode {meta['mode']}"
                + (f"; database {meta['backend']}." if meta.get("backend") else ".")
            )
            out.append("")
        checks = [(s["section"]["name"], c) for s in sections for c in s["section"]["checks"]]
        if checks:
            if backend == TARGET_BACKEND:
                out.append("### Targets")
                out.append("")
            else:
                out.append("### Targets (informational)")
                out.append("")
                out.append(
                    f"The issue's targets are set for {TARGET_BACKEND}; the same checks on {backend} are"
                    " shown for comparison (met / not met), not as PASS or MISS."
                )
                out.append("")
            out.append(
                _table(
                    ["check", "target", "measured", "verdict"],
                    [
                        [c["name"], c["target"], c["value"], _verdict(c["passed"], backend != TARGET_BACKEND)]
                        for _, c in checks
                    ],
                )
            )
            out.append("")
        for entry in sections:
            section = entry["section"]
            out.append(f"### {section['title']}")
            out.append("")
            out.append(_table(section["columns"], section["rows"]))
            out.append("")
            for note in section["notes"]:
                out.append(f"- {note}")
            if section["notes"]:
                out.append("")
    out.append("Figures are medians of the repeated runs (each figure separately). Raw figures of every run:")
    out.append(f"`{json_name}`.")
    out.append("")
    out.append(END)
    return "\n".join(out)


def write(out_md: Path, data: dict[str, Any], json_name: str) -> None:
    figures = render(data, json_name)
    if out_md.exists():
        text = out_md.read_text()
        if START in text and END in text:
            head, _, rest = text.partition(START)
            _, _, tail = rest.partition(END)
            text = head + figures + tail
        elif PROFILE_HEADING in text:
            _, _, tail = text.partition(PROFILE_HEADING)
            text = HEADER + "\n" + figures + "\n\n" + PROFILE_HEADING + tail
        else:
            text = HEADER + "\n" + figures + "\n\n" + text
    else:
        text = f"{HEADER}\n{figures}\n\n{PROFILE_HEADING}\n\n{PROFILE_PLACEHOLDER}\n"
    if PROFILE_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{PROFILE_HEADING}\n\n{PROFILE_PLACEHOLDER}\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(re.sub(r"\n{3,}", "\n\n", text))


def merge(json_path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """Earlier figures of scenarios not rerun now are kept (``--only`` reruns one scenario)."""
    data: dict[str, Any] = {"order": fresh["order"], "backends": {}}
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text())
            if isinstance(old.get("backends"), dict):
                data["backends"] = old["backends"]
        except (json.JSONDecodeError, OSError):
            pass
    for backend, scenarios in fresh["backends"].items():
        data["backends"].setdefault(backend, {}).update(scenarios)
    return data
