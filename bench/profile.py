"""Where a reclaim cycle's time goes, for a target the benchmark says is missed: is Redis waiting for the
monitor, or the monitor for Redis? (not a test; ./scripts/profile --help)

On the benchmark's backlog (bench/backlog.py), loopback Redis 8.2 or, with --tls, Debian's 7.0.15 with TLS
behind the latency proxy (--rtt-ms), it measures:

1. CPU accounting, interleaved runs without the profiler: the server limit (bench/server_limit.py) and the
   project's cycle (`serve` and a timer POST, or with --cli `python -m handler reclaim`), each with the CPU
   seconds Redis spent (its /proc stat) and, for the cycle, the monitor's own CPU seconds: the handler
   process's over the POST, or the CLI's whole run less a run with nothing pending (its start-up). When the
   monitor's CPU per entry is above Redis's, the monitor's Python sets the pace on this machine.
2. One more run sampled by py-spy from outside the process, only while a thread holds the GIL (`--gil`):
   the Python work. The report gives the share of the cycle the GIL was held, each thread's share, and the
   frames with the most samples of their own.

The report is printed and written to bench/results/profile-<UTC time>-<commit>-<setting>.txt.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from bench.backlog import abandon, produce, verify
from bench.reclaim_bench import PAGE_SIZE, Endpoint, HttpHandler, monitor_env, server_limit
from bench.results import RESULTS_DIR, git
from bench.server_limit import command_stream
from handler.dev.backlog import raw_client
from handler.dev.latency_proxy import cpu_seconds
from handler.dev.local_redis import LocalRedis, packaged_redis_server

PY_SPY = Path(sys.executable).with_name("py-spy")
SAMPLES_PER_SECOND = 500
TOP_FRAMES = 25
# A sample is the cycle's work when a frame of the reclaim package is on it.
HOT_PATH_MARK = "handler/reclaim/"


@contextmanager
def server(tls: bool, rtt_ms: float) -> Iterator[tuple[LocalRedis, Endpoint, str]]:
    """The server, the endpoint the contenders connect to and a line saying what it is."""
    if not tls:
        with LocalRedis(packaged_redis_server()) as local:
            yield local, Endpoint(local.port), f"Redis 8.2 on loopback, no TLS, page size {PAGE_SIZE}"
        return
    from bench.azure_bench import calibrated_proxy, tls_server  # noqa: PLC0415  (only with --tls)

    with tls_server() as (local, certificates), ExitStack() as stack:
        proxy, median, _, _ = calibrated_proxy(local.port, rtt_ms, None, certificates.ca)
        stack.callback(proxy.stop)
        where = f"Debian Redis 7.0.15 with TLS through the latency proxy: {median:.3f} ms round trip"
        yield local, Endpoint(proxy.port, certificates.ca), where


def cli_cycle(endpoint: Endpoint, size: int) -> tuple[float, float]:
    """(the cycle's duration_ms in seconds, the CLI process's CPU seconds for its whole run)."""
    before = os.times()
    done = subprocess.run(
        [sys.executable, "-m", "handler", "reclaim"],
        env=monitor_env(endpoint),
        capture_output=True,
        text=True,
    )
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"reclaim exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    if summary["processed"] != size:
        raise SystemExit(f"reclaim processed {summary['processed']} of {size}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return summary["duration_ms"] / 1000, cpu


def http_cycle(handler: HttpHandler, size: int) -> tuple[float, float]:
    """(the cycle's duration_ms in seconds, the handler process's CPU seconds over the POST)."""
    before = cpu_seconds(handler.process.pid)
    summary, _ = handler.invoke()
    if summary["processed"] != size:
        raise SystemExit(f"the invocation processed {summary['processed']} of {size}")
    return summary["duration_ms"] / 1000, cpu_seconds(handler.process.pid) - before


def folded_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw output: `thread (tid);frame;frame… count` per line."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        yield stack.split(";"), int(count)


def summarise(path: Path, seconds: float) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in folded_stacks(path):
        if not any(HOT_PATH_MARK in frame for frame in frames[1:]) or any(
            "importlib" in frame for frame in frames
        ):
            continue  # start-up, imports, the HTTP server: not the cycle
        total += count
        threads[frames[0].rpartition("): ")[2].strip() or frames[0]] += count  # "thread (tid): name"
        own[frames[-1]] += count
    if not total:
        return ["py-spy took no sample of the cycle"]
    held = total / (seconds * SAMPLES_PER_SECOND)
    lines = [
        f"GIL held by the cycle's threads for {held:.0%} of its {seconds:.2f} s ({total} samples at "
        f"{SAMPLES_PER_SECOND}/s, only while a thread held the GIL)",
        "by thread: " + ", ".join(f"{name} {count / total:.0%}" for name, count in threads.most_common()),
        f"top {TOP_FRAMES} frames by own samples (share of the cycle's GIL-holding samples):",
    ]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in own.most_common(TOP_FRAMES)]
    return lines


def profiled_cycle(cli: bool, endpoint: Endpoint, handler: HttpHandler | None, size: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="tweets-monitor-profile-") as folder:
        out = Path(folder) / "stacks.txt"
        record = [str(PY_SPY), "record", "--gil", "--threads", "-r", str(SAMPLES_PER_SECOND), "-f", "raw"]
        record += ["-o", str(out)]
        if cli:
            command = [*record, "--", sys.executable, "-m", "handler", "reclaim"]
            done = subprocess.run(command, env=monitor_env(endpoint), capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"py-spy record exited {done.returncode}: {done.stderr[-2000:]}")
            summary = next(line for line in done.stdout.splitlines() if line.startswith("{"))  # not py-spy's
            seconds = json.loads(summary)["duration_ms"] / 1000
        else:
            assert handler is not None
            spy = subprocess.Popen(
                [*record, "--pid", str(handler.process.pid)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            time.sleep(1.0)  # attached and sampling before the POST
            seconds, _ = http_cycle(handler, size)
            spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            said, _ = spy.communicate(timeout=60)
            if not out.exists():
                raise SystemExit(f"py-spy wrote no samples: {said[-2000:]}")
        return summarise(out, seconds)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tls", action="store_true", help="Debian's 7.0.15 with TLS behind the latency proxy"
    )
    parser.add_argument("--rtt-ms", type=float, default=1.0, help="with --tls: the proxy's round trip")
    parser.add_argument(
        "--cli", action="store_true", help="the CLI (`reclaim`) instead of `serve` and a POST"
    )
    parser.add_argument("--size", type=int, default=100_000, help="N, the backlog")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved runs for the CPU accounting")
    return parser.parse_args(argv)


def accounting(
    local: LocalRedis,
    client: redis.Redis,
    endpoint: Endpoint,
    handler: HttpHandler | None,
    size: int,
    repeat: int,
) -> list[str]:
    """The server limit and the cycle, interleaved: msg/s, Redis's CPU and the monitor's per entry."""
    chunks = command_stream(client, PAGE_SIZE)
    startup_cpu = 0.0
    if handler is None:
        abandon(client, 0)  # nothing pending: the CLI's start-up and one XPENDING
        startup_cpu = statistics.median(cli_cycle(endpoint, 0)[1] for _ in range(3))

    def redis_cpu() -> float:
        assert local.process is not None
        return cpu_seconds(local.process.pid)

    rows: dict[str, list[tuple[float, float, float]]] = {"server limit": [], "project": []}
    for _ in range(repeat):
        abandon(client, size)
        before = redis_cpu()
        limit = server_limit(endpoint, chunks, size)
        rows["server limit"].append((limit.seconds, redis_cpu() - before, 0.0))
        abandon(client, size)
        before = redis_cpu()
        seconds, monitor_cpu = cli_cycle(endpoint, size) if handler is None else http_cycle(handler, size)
        rows["project"].append((seconds, redis_cpu() - before, monitor_cpu - startup_cpu))
        problem = verify(client, size)
        if problem:
            raise SystemExit(f"the cycle left the backlog wrong: {problem}")
    how = "whole run less an empty run's" if handler is None else "the handler process over the POST"
    lines = [f"CPU accounting, medians of {repeat} interleaved runs, CPU in microseconds per entry:"]
    for name, runs in rows.items():
        seconds, redis, monitor = (statistics.median(column) for column in zip(*runs, strict=True))
        line = f"  {name:<13} {size / seconds:>9,.0f} msg/s  Redis CPU {redis / size * 1e6:5.2f}"
        if name == "project":
            line += f"  monitor CPU {monitor / size * 1e6:5.2f} ({how})"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    contender = "CLI" if args.cli else "HTTP"
    setting = f"tls-{args.rtt_ms:g}ms" if args.tls else "loopback"
    report = [f"# Profile of one reclaim cycle, project ({contender}), N={args.size:,}"]
    with server(args.tls, args.rtt_ms) as (local, endpoint, where), ExitStack() as stack:
        report.append(where)
        print("\n".join(report), flush=True)
        client = raw_client(local.port, **endpoint.client_options())
        produce(client, args.size)
        handler = None if args.cli else HttpHandler(endpoint)
        if handler is not None:
            stack.callback(handler.stop)
        report += ["", *accounting(local, client, endpoint, handler, args.size, args.repeat), ""]
        abandon(client, args.size)
        report += profiled_cycle(args.cli, endpoint, handler, args.size)
        problem = verify(client, args.size)
        if problem:
            raise SystemExit(f"the profiled cycle left the backlog wrong: {problem}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"profile-{stamp}-{git('rev-parse', 'HEAD')[:8]}-{setting}-{contender.lower()}.txt"
    path = RESULTS_DIR / name
    path.write_text("\n".join(report) + "\n")
    print("\n".join(report[2:]), f"\nWritten to bench/results/{name}", sep="\n")


if __name__ == "__main__":
    main()
