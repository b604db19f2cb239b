"""How many streams one invocation serves: STREAM_NAME a pattern over N streams (1,000 by default), each
with a backlog a crashed processor left (1,000 entries by default), on a local Redis 8.2 (loopback), swept
by scheduled invocations at the default settings (CYCLE_TIME_BUDGET_SEC 10, RECLAIM_PAGE_SIZE 2,000).

For each invocation it prints how many streams were reached, how many entries were processed, the duration,
and where it stopped; then how many invocations it took until every stream had been reached once.

    .venv/bin/python -m bench.many_streams [--streams 1000] [--entries 1000] [--invocations 4]
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--invocations", type=int, default=4)
    args = parser.parse_args()
    server = LocalRedis(BINARIES["8.2"]())
    server.start()
    try:
        began = time.monotonic()
        names = build(server, args.streams, args.entries)
        print(f"{len(names)} streams x {args.entries} entries built in {time.monotonic() - began:.0f} s")
        settings = MonitorSettings(
            REDIS_HOST=server.address, REDIS_TLS=False, STREAM_NAME=f"{PREFIX}:*",
            STREAM_CONSUMER_GROUP_NAME=GROUP, MONITORING_CONSUMER_NAME=MONITOR, MIN_IDLE_TIME_SEC=30,
        )  # fmt: skip
        connection = RedisConnection(settings)
        cycle = StreamsCycle(connection, settings)
        reached_ever: set[str] = set()
        for number in range(1, args.invocations + 1):
            summary = cycle.run_scheduled()
            assert summary.streams is not None
            reached = {
                name
                for name, one in summary.streams.items()
                if not (one.skipped or "").startswith("not reached")
            }
            reached_ever |= reached
            print(
                f"invocation {number}: {len(reached)} streams reached, "
                f"{summary.counts.processed:,} processed in {summary.duration_ms / 1000:.1f} s, "
                f"stopped_by {summary.stopped_by.value}; "
                f"{len(reached_ever)} of {len(names)} reached so far"
            )
        connection.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
