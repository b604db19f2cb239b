"""Benchmark: the project's reclaim cycle against the original Go monitor's algorithm (re-implemented in
bench/seed_algorithm.py) and the server's own limit.

    ./scripts/bench                      # N = 10,000, 100,000 and 1,000,000; three runs each
    ./scripts/bench --sizes 100000 --repeat 5

Everything runs in the same process tree against one throwaway Redis 8.2 started for the purpose, on the
same backlog (N tweets left pending by a crashed processor), which is rebuilt before and verified after
every run: the pending list empty and every tweet:<id> hash equal to its message.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.backlog import MIN_IDLE_SEC, abandon, produce, raw_client, verify
from bench.server_limit import command_stream, replay
from handler.dev.local_redis import LocalRedis, environment_for, free_port, packaged_redis_server
from handler.dev.samples import GROUP, MONITOR, STREAM, timer_envelope

APP_ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = 2000
ENVELOPE = json.dumps(timer_envelope()).encode()


@dataclass
class Run:
    rate: float  # messages per second
    rss_mb: float | None = None
    startup_s: float | None = None


@dataclass
class Result:
    approach: str
    size: int
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(run.rate for run in self.runs)

    @property
    def rss_mb(self) -> float | None:
        values = [run.rss_mb for run in self.runs if run.rss_mb is not None]
        return max(values) if values else None

    @property
    def startup_s(self) -> float | None:
        values = [run.startup_s for run in self.runs if run.startup_s is not None]
        return statistics.median(values) if values else None


def monitor_env(server: LocalRedis, **overrides: str) -> dict[str, str]:
    settings = {
        "STREAM_NAME": STREAM, "STREAM_CONSUMER_GROUP_NAME": GROUP, "MONITORING_CONSUMER_NAME": MONITOR,
        "MIN_IDLE_TIME_SEC": str(MIN_IDLE_SEC), "CYCLE_TIME_BUDGET_SEC": "600",
        "CYCLE_MAX_MESSAGES": str(10**9), "RECLAIM_PAGE_SIZE": str(PAGE_SIZE), "LOG_LEVEL": "WARNING",
        **overrides,
    }  # fmt: skip
    return environment_for(server, **settings)


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


def project_cli(server: LocalRedis, size: int) -> Run:
    text, wall, rss = run_process([sys.executable, "-m", "handler", "reclaim"], monitor_env(server))
    summary = json.loads(text)
    assert summary["processed"] == size, summary
    seconds = summary["duration_ms"] / 1000
    return Run(size / seconds, rss, wall - seconds)


class HttpHandler:
    """The handler as the Functions host runs it: `serve`, readiness on GET /, timer POSTs to /monitor."""

    def __init__(self, server: LocalRedis, **overrides: str) -> None:
        self.port = free_port()
        env = monitor_env(server, FUNCTIONS_CUSTOMHANDLER_PORT=str(self.port), **overrides)
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "handler", "serve"], env=env, cwd=APP_ROOT)
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.025)
        self.startup_s = time.perf_counter() - started

    def invoke(self) -> tuple[dict[str, Any], float]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/monitor", data=ENVELOPE, method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )  # fmt: skip
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=900) as answer:
            summary: dict[str, Any] = json.loads(answer.read())["ReturnValue"]
        return summary, time.perf_counter() - started

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def project_http(handler: HttpHandler, size: int) -> Run:
    summary, _ = handler.invoke()
    assert summary["processed"] == size, summary
    return Run(size / (summary["duration_ms"] / 1000), handler.peak_rss_mb(), handler.startup_s)


def seed_algorithm(server: LocalRedis, size: int) -> Run:
    text, _, rss = run_process(
        [sys.executable, "-m", "bench.seed_algorithm", str(server.port)], dict(os.environ)
    )
    outcome = json.loads(text)
    assert outcome["processed"] == size, outcome
    return Run(size / outcome["seconds"], rss)


def server_limit(server: LocalRedis, size: int) -> Run:
    chunks = command_stream(raw_client(server.port), PAGE_SIZE)  # packed before the clock starts
    return Run(size / replay(server.port, chunks))


def measure(
    server: LocalRedis, size: int, repeat: int, approaches: Mapping[str, Callable[[], Run]]
) -> list[Result]:
    """Each repetition runs every approach once, in turn, so that drift in the machine's speed during the
    benchmark affects them all alike; every run starts from the same backlog and is verified."""
    results = {approach: Result(approach, size) for approach in approaches}
    client = raw_client(server.port)
    for attempt in range(repeat):
        for approach, run in approaches.items():
            abandon(client, size)
            outcome = run()
            problem = verify(client, size)
            if problem:
                raise SystemExit(f"{approach} at {size}: run {attempt + 1} is wrong: {problem}")
            results[approach].runs.append(outcome)
            print(f"  {approach:<16} N={size:>9,} run {attempt + 1}: {outcome.rate:>9,.0f} msg/s  (verified)",
                  flush=True)  # fmt: skip
    return list(results.values())


def budget_check(server: LocalRedis, size: int) -> dict[str, Any]:
    """One invocation with the default settings (10 s budget) on the whole backlog: the 20-second tick."""
    client = raw_client(server.port)
    abandon(client, size)
    env = monitor_env(server, CYCLE_TIME_BUDGET_SEC="10", CYCLE_MAX_MESSAGES="1000000")
    text, _, rss = run_process([sys.executable, "-m", "handler", "reclaim"], env)
    summary: dict[str, Any] = json.loads(text)
    return {**summary, "rss_mb": rss}


def empty_latency(server: LocalRedis, count: int = 300) -> tuple[float, float]:
    client = raw_client(server.port)
    client.execute_command("XGROUP", "DESTROY", STREAM, GROUP)  # type: ignore[no-untyped-call]
    client.execute_command("XGROUP", "CREATE", STREAM, GROUP, "$")  # type: ignore[no-untyped-call]
    handler = HttpHandler(server)
    try:
        for _ in range(20):
            handler.invoke()  # warm up: connections, code paths
        latencies = sorted(handler.invoke()[1] * 1000 for _ in range(count))
    finally:
        handler.stop()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.95)]


def report(results: list[Result], sizes: list[int]) -> None:
    print(
        "\n| N | approach | messages/s (median) | vs original | vs server limit | peak RSS | process start |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        row = {result.approach: result for result in results if result.size == size}
        seed, limit = row.get("original algorithm"), row.get("server limit")
        for result in row.values():
            vs_seed = f"{result.rate / seed.rate:.1f}x" if seed else "— (original left out)"
            vs_limit = f"{result.rate / limit.rate:.0%}" if limit else "—"
            rss = f"{result.rss_mb:.0f} MB" if result.rss_mb is not None else "—"
            start = f"{result.startup_s:.2f} s" if result.startup_s is not None else "—"
            cells = [f"{size:,}", result.approach, f"{result.rate:,.0f}", vs_seed, vs_limit, rss, start]
            print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell below 1,000,000 pending")
    parser.add_argument("--repeat-large", type=int, default=3, help="runs per cell at 1,000,000 and more")
    parser.add_argument(
        "--seed-max", type=int, default=100_000, help="largest N for the original Go monitor's algorithm"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results: list[Result] = []
    with LocalRedis(packaged_redis_server()) as server:
        print(
            f"Redis 8.2 on {server.address}; page size {PAGE_SIZE}; runs interleaved per repetition",
            flush=True,
        )
        for size in sizes:
            produce(raw_client(server.port), size)
            handler = HttpHandler(server)
            approaches = {
                "server limit": partial(server_limit, server, size),
                "project (CLI)": partial(project_cli, server, size),
                "project (HTTP)": partial(project_http, handler, size),
            }
            if size <= args.seed_max:
                approaches["original algorithm"] = partial(seed_algorithm, server, size)
            try:
                results += measure(
                    server, size, args.repeat if size < 1_000_000 else args.repeat_large, approaches
                )
            finally:
                handler.stop()
        report(results, sizes)
        largest = max(sizes)
        tick = budget_check(server, largest)
        print(f"\nOne invocation with the default 10 s budget and {largest:,} pending: processed "
              f"{tick['processed']:,} in {tick['duration_ms']} ms (stopped by {tick['stopped_by']}), "
              f"peak RSS {tick['rss_mb']:.0f} MB")  # fmt: skip
        median, p95 = empty_latency(server)
        print(f"An invocation with an empty pending list, over loopback HTTP: median {median:.2f} ms, "
              f"p95 {p95:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
