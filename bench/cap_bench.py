"""The RECLAIM_MAX_RATE part of ./scripts/bench: what the cap is for, and that it holds on a real server.

A backlog of N entries (1,000,000 by default) abandoned by a crashed processor is drained by one
`tweets-monitor reclaim` invocation with a long budget, while the live pipeline runs beside it on the same
Redis 8.2: a producer adding tweets at a fixed rate (2,000/s) and a processor reading them (XREADGROUP `>`,
HSET, XACK: bench/live_pipeline.py). The drain runs twice, without the cap and with RECLAIM_MAX_RATE
(20,000/s), each on a fresh server state, and reports:

- the live processor's produce-to-acknowledge latency (p50, p99, max) before the drain and during it;
- the claims per second the server saw: the crashed consumer's pending count (XPENDING's summary) is sampled
  every 0.2 s, and every 10-s window of the drain (sliding by 1 s) gives one claims-per-second figure;
  with the cap each must stay within a tenth of it.

The backlog is aged (XCLAIM … IDLE, same owner, JUSTID: no delivery counted) and the monitor runs with
MIN_IDLE_TIME_SEC=30, so it never takes the live processor's own entries even when the drain slows it.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import redis

from bench.backlog import CHUNK, abandon, produce, verify
from bench.reclaim_bench import APP_ROOT, Endpoint, monitor_env, run_process, server_info
from bench.results import Recorder
from handler.dev.backlog import CRASHED, age, raw_client
from handler.dev.local_redis import LocalRedis, packaged_redis_server
from handler.dev.samples import GROUP, STREAM

MONITOR_MIN_IDLE_SEC = 30
AGED_MS = 600_000
SAMPLE_EVERY_SEC = 0.2
WINDOW_SEC = 10.0
WARM_UP_SEC = 5.0
COOL_DOWN_SEC = 3.0


def age_backlog(client: redis.Redis) -> None:
    """Make every pending entry look idle for AGED_MS, keeping its owner and its delivery count."""
    start: bytes | str = "-"
    while True:
        rows: Any = client.execute_command("XPENDING", STREAM, GROUP, start, "+", CHUNK)  # type: ignore[no-untyped-call]
        if not rows:
            return
        ids = [row[0] for row in rows]
        age(client, STREAM, GROUP, CRASHED, ids, AGED_MS)
        start = b"(" + ids[-1]


class PendingSampler:
    """(time, entries still pending with the crashed consumer), every SAMPLE_EVERY_SEC, in a thread."""

    def __init__(self, port: int) -> None:
        self.client = raw_client(port)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            summary: Any = self.client.execute_command("XPENDING", STREAM, GROUP)  # type: ignore[no-untyped-call]
            owners = {bytes(name): int(count) for name, count in (summary[3] or [])}
            self.samples.append((time.time(), owners.get(CRASHED.encode(), 0)))
            self.stop.wait(SAMPLE_EVERY_SEC)

    def finish(self) -> list[tuple[float, int]]:
        self.stop.set()
        self.thread.join()
        return self.samples


def drain_window(samples: list[tuple[float, int]], size: int) -> tuple[float, float]:
    """From the last sample with nothing claimed yet to the first with nothing left."""
    start = max((t for t, left in samples if left == size), default=samples[0][0])
    end = min((t for t, left in samples if left == 0), default=samples[-1][0])
    return start, end


def claimed_at(samples: list[tuple[float, int]], size: int, moment: float) -> float:
    """Entries claimed by `moment`, interpolated between the two samples around it."""
    previous = samples[0]
    for sample in samples:
        if sample[0] >= moment:
            span = sample[0] - previous[0]
            share = (moment - previous[0]) / span if span else 1.0
            left = previous[1] + (sample[1] - previous[1]) * share
            return size - left
        previous = sample
    return float(size - samples[-1][1])


def window_rates(samples: list[tuple[float, int]], size: int) -> list[float]:
    """Claims per second in every WINDOW_SEC window of the drain, sliding by one second."""
    start, end = drain_window(samples, size)
    rates = []
    moment = start
    while moment + WINDOW_SEC <= end:
        claimed = claimed_at(samples, size, moment + WINDOW_SEC) - claimed_at(samples, size, moment)
        rates.append(claimed / WINDOW_SEC)
        moment += 1.0
    return rates


def per_second(samples: list[tuple[float, int]], size: int) -> list[tuple[float, float]]:
    """(seconds into the drain, claims in that second): the chart's line."""
    start, end = drain_window(samples, size)
    points = []
    second = 0
    while start + second < end:
        moment = start + second
        claimed = claimed_at(samples, size, min(moment + 1, end)) - claimed_at(samples, size, moment)
        points.append((second + 0.5, claimed / min(1.0, end - moment)))
        second += 1
    return points


def percentiles(latencies: list[float]) -> dict[str, float | int]:
    if not latencies:
        return {"count": 0}
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
    }


def live(role: str, port: int, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.live_pipeline", role, str(port), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=APP_ROOT)


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} exited {process.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def drain(server: LocalRedis, size: int, cap: float, producer_rate: float) -> dict[str, Any]:
    """One drain of a fresh backlog with the live pipeline running; `cap` 0 is no cap."""
    client = raw_client(server.port)
    client.flushall()
    produce(client, size)
    abandon(client, size)
    age_backlog(client)
    processor = live("process", server.port)
    producer = live("produce", server.port, str(producer_rate))
    try:
        time.sleep(WARM_UP_SEC)
        sampler = PendingSampler(server.port)
        time.sleep(1.0)  # a few samples before the monitor starts
        env = monitor_env(
            Endpoint(server.port), RECLAIM_MAX_RATE=str(cap), MIN_IDLE_TIME_SEC=str(MONITOR_MIN_IDLE_SEC)
        )
        monitor_started = time.time()
        text, wall, rss = run_process([sys.executable, "-m", "handler", "reclaim"], env)
        monitor_ended = time.time()
        time.sleep(COOL_DOWN_SEC)
        samples = sampler.finish()
    finally:
        producer_outcome = finish(producer)
        produced = producer_outcome["produced"]
        acknowledged = finish(processor)["acknowledged"]
    summary = json.loads(text)
    pending = client.execute_command("XPENDING", STREAM, GROUP)[0]  # type: ignore[no-untyped-call]
    problem = verify(client, size) if summary["processed"] == size else f"processed {summary['processed']}"
    if problem or pending or len(acknowledged) != produced:
        raise SystemExit(
            f"the drain with cap {cap:g} is wrong: {problem}, {pending} pending, "
            f"{len(acknowledged)} of {produced} live tweets acknowledged"
        )
    start, end = drain_window(samples, size)
    before = [latency for t, latency in acknowledged if t < start]
    during = [latency for t, latency in acknowledged if start <= t <= end]
    windows = window_rates(samples, size)
    return {
        "cap": cap,
        "size": size,
        "producer_rate": producer_rate,
        "produced": produced,
        "producer_achieved_rate": produced / producer_outcome["seconds"],
        "monitor": {
            "summary": summary,
            "wall_s": wall,
            "rss_mb": rss,
            "started_at": monitor_started,
            "ended_at": monitor_ended,
        },
        "drain_s": end - start,
        "claims_per_s": size / (end - start) if end > start else None,
        "windows_per_s": windows,
        "per_second": per_second(samples, size),
        "latency_before": percentiles(before),
        "latency_during": percentiles(during),
    }


def show(result: dict[str, Any]) -> None:
    label = f"RECLAIM_MAX_RATE={result['cap']:g}" if result["cap"] else "no cap"
    summary = result["monitor"]["summary"]
    windows = result["windows_per_s"]
    spread = (
        f"{min(windows):,.0f}-{max(windows):,.0f} claims/s over {len(windows)} 10-s windows"
        if windows
        else "drain shorter than one 10-s window"
    )
    before, during = result["latency_before"], result["latency_during"]
    print(
        f"  {label:<24} drained {summary['processed']:,} in {result['drain_s']:.1f} s"
        f" ({summary['duration_ms']} ms cycle, stopped by {summary['stopped_by']}): {spread}",
        flush=True,
    )
    for name, latency in (("before the drain", before), ("during the drain", during)):
        if latency["count"]:
            print(
                f"    live processor {name}: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms,"
                f" max {latency['max_ms']:.1f} ms over {latency['count']:,} tweets"
            )


def run_cap(size: int, cap: float, producer_rate: float, recorder: Recorder) -> None:
    with LocalRedis(packaged_redis_server()) as server:
        recorder.server("cap", server_info(raw_client(server.port)))
        version = recorder.meta["servers"]["cap"]["redis_version"]
        print(
            f"RECLAIM_MAX_RATE: Redis {version} on {server.address}; a backlog of {size:,}, live producer at "
            f"{producer_rate:g}/s and one live processor; drains without the cap and at {cap:g}/s",
            flush=True,
        )
        for rate in (0.0, cap):
            result = drain(server, size, rate, producer_rate)
            recorder.cap.append(result)
            show(result)
