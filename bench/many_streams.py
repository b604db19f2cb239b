"""How many streams one invocation serves: STREAM_NAME a pattern over N streams (1,000 by default), each
with a backlog a crashed processor left (1,000 entries by default), on a local Redis 8.2 (loopback), swept
by scheduled invocations at the default settings (CYCLE_TIME_BUDGET_SEC 10, RECLAIM_PAGE_SIZE 2,000).

For each invocation it prints how many streams had entries processed, how many entries were processed and
the duration, and how many streams had been served so far. With --monitors K, K monitors (each a process of
its own, as K Function Apps or `run` processes would be) run their invocations at the same time with the
same STREAM_NAME, sharing the streams through each stream's sweep lease.

    .venv/bin/python -m bench.many_streams [--streams 1000] [--entries 1000] [--invocations 4] [--monitors 1]
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Process, Queue

from handler.dev.backlog import CRASHED, age, crash_after_reading, create_group, produce
from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, MONITOR, tweet
from handler.reclaim.streams import StreamsCycle
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection

PREFIX = "many"


def build(server: LocalRedis, streams: int, entries: int) -> list[str]:
    names = [f"{PREFIX}:{n:04d}" for n in range(streams)]
    with server.client() as client:
        for index, name in enumerate(names):
            create_group(client, name, GROUP)
            ids = produce(client, name, [tweet(index * entries + n) for n in range(entries)])
            crash_after_reading(client, name, GROUP, CRASHED, len(ids))
            age(client, name, GROUP, CRASHED, ids, 600_000)
    return names


def invocations(address: str, count: int, results: Queue[list[tuple[set[str], int, float]]]) -> None:
    """One monitor (a process of its own): `count` scheduled invocations, one after the other."""
    settings = MonitorSettings(
        REDIS_HOST=address,
        REDIS_TLS=False,
        STREAM_NAME=f"{PREFIX}:*",
        STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR,
        MIN_IDLE_TIME_SEC=30,
    )
    connection = RedisConnection(settings)
    cycle = StreamsCycle(connection, settings)
    done = []
    for _ in range(count):
        summary = cycle.run_scheduled()
        assert summary.streams is not None
        swept = {name for name, one in summary.streams.items() if one.counts.processed}
        done.append((swept, summary.counts.processed, summary.duration_ms / 1000))
    connection.close()
    results.put(done)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--invocations", type=int, default=4)
    parser.add_argument("--monitors", type=int, default=1, help="monitors at once, each a process")
    args = parser.parse_args()
    server = LocalRedis(BINARIES["8.2"]())
    server.start()
    try:
        began = time.monotonic()
        names = build(server, args.streams, args.entries)
        print(f"{len(names)} streams x {args.entries} entries built in {time.monotonic() - began:.0f} s")
        results: Queue[list[tuple[set[str], int, float]]] = Queue()
        monitors = [
            Process(target=invocations, args=(server.address, args.invocations, results))
            for _ in range(args.monitors)
        ]
        for monitor in monitors:
            monitor.start()
        runs = [results.get() for _ in monitors]
        for monitor in monitors:
            monitor.join()
        swept_ever: set[str] = set()
        for number in range(args.invocations):
            each = [run[number] for run in runs]
            swept = set().union(*(swept for swept, _, _ in each))
            swept_ever |= swept
            processed = sum(count for _, count, _ in each)
            longest = max(seconds for _, _, seconds in each)
            print(
                f"invocation {number + 1} of {args.monitors} monitor(s): {len(swept)} streams swept, "
                f"{processed:,} processed, the longest in {longest:.1f} s; {len(swept_ever)} of "
                f"{len(names)} swept so far"
            )
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
