"""The benchmark's results file: every run's numbers and what they were measured on, in one JSON file under
bench/results/ that bench/report.py turns into docs/performance.md's tables and docs/performance-chart.png.

Its shape (version 1):

- `meta`: when, how long, the git commit (and whether the tree had changes), the machine, Python, the
  libraries' and the servers' versions, the arguments;
- `round_trips`: every measured round trip (median and p95 of sequential PINGs, direct or through the
  latency proxy, plain or TLS);
- `runs`: one row per run (`Run`): part (`loopback`/`azure`), approach, N, repetition, messages/s, the
  work's own seconds, wall-clock seconds, peak RSS, start-up, and for the round-trip part the set round trip
  and the latency proxy's CPU seconds during the run, and the N of the rows it is tabled with;
- `cap`: the RECLAIM_MAX_RATE drains (claims per 10-s window, processors' produce-to-acknowledge latency);
- `extras`: single measurements (one invocation on the default budget, an empty invocation's latency).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

APP_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = APP_ROOT / "bench" / "results"
LIBRARIES = ["redis", "hiredis", "fastapi", "uvicorn", "pydantic", "matplotlib"]


@dataclasses.dataclass
class Run:
    part: str  # "loopback" or "azure"
    approach: str
    size: int  # N: the entries this run reclaimed
    repetition: int
    rate: float  # messages per second over `seconds`
    seconds: float  # the work's own time: the cycle's duration_ms, or the contender's own clock
    wall_s: float | None = None  # as a caller waits: process start to exit (CLI…), the POST (HTTP)
    rss_mb: float | None = None
    startup_s: float | None = None  # CLI: wall - duration_ms of this run; HTTP: `serve` start to ready
    rtt_ms: float | None = None  # the latency proxy's added round trip; None: no proxy
    proxy_cpu_s: float | None = None
    group_size: int | None = None  # the N of the table rows this run belongs to (the original algorithm
    # may run on a smaller backlog beside them); None: `size`


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=APP_ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Recorder:
    def __init__(self, arguments: dict[str, Any]) -> None:
        self.started = time.monotonic()
        now = datetime.now(UTC)
        commit = git("rev-parse", "HEAD")
        self.meta: dict[str, Any] = {
            "version": 1,
            "started_at": now.isoformat(timespec="seconds"),
            "finished_at": None,
            "total_seconds": None,
            "git_commit": commit,
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
            },
            "python": platform.python_version(),
            "libraries": library_versions(),
            "servers": {},
            "arguments": arguments,
        }
        self.round_trips: list[dict[str, Any]] = []
        self.runs: list[Run] = []
        self.cap: list[dict[str, Any]] = []
        self.extras: dict[str, Any] = {}
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        self.path = RESULTS_DIR / f"{stamp}-{commit[:8] or 'nocommit'}.json"

    def server(self, role: str, info: dict[str, Any]) -> None:
        self.meta["servers"][role] = {
            key: info.get(key)
            for key in ("redis_version", "redis_build_id", "os", "arch_bits", "io_threads_active")
        }

    def round_trip(self, **measured: Any) -> None:
        self.round_trips.append(measured)

    def as_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "round_trips": self.round_trips,
            "runs": [dataclasses.asdict(run) for run in self.runs],
            "cap": self.cap,
            "extras": self.extras,
        }

    def save(self, path: Path | None = None) -> Path:
        """Written after every part (a run stopped half-way keeps what it measured) and at the end."""
        self.meta["total_seconds"] = round(time.monotonic() - self.started, 1)
        self.meta["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        target = path or self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        temporary.replace(target)
        return target


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("meta", {}).get("version") != 1:
        raise SystemExit(f"{path}: not a version 1 benchmark results file")
    return data
