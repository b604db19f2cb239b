"""What exporting the metrics at the end of every invocation costs: the handler under handler/dev/host.py's
FunctionsHost on a real Redis, one invocation every 0.5 s (20 abandoned tweets each), without telemetry and
with APPLICATIONINSIGHTS_CONNECTION_STRING pointing at a stand-in ingestion endpoint on 127.0.0.1 (nothing
leaves the machine). It reports the invocations' answer times (median and slowest) and how many export
requests the stand-in received per invocation. docs/operate.md shows the numbers.

    .venv/bin/python -m bench.invocation_export [--invocations 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM
from handler.dev.telemetry_fakes import Breeze, Tripwire, telemetry_environment

TWEETS_PER_INVOCATION = 20


def _abandon(server: LocalRedis, start: int) -> None:
    client = server.client()
    try:
        for n in range(start, start + TWEETS_PER_INVOCATION):
            client.xadd(STREAM, {"id": str(n), "text": f"tweet {n}"})
        client.xreadgroup(GROUP, "consumer-crashed", {STREAM: ">"})
    finally:
        client.close()


def _run(server: LocalRedis, env: dict[str, str], invocations: int) -> list[float]:
    host = FunctionsHost(env).start()
    seconds = []
    try:
        time.sleep(2)  # the exporters start on a thread of their own after readiness
        for n in range(invocations):
            _abandon(server, n * TWEETS_PER_INVOCATION)
            answer = host.invoke()
            completed(answer)
            seconds.append(answer.seconds)
            time.sleep(0.5)
    finally:
        host.stop()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=40)
    args = parser.parse_args()
    with (
        LocalRedis(BINARIES["8.2"]()) as server,
        Breeze() as breeze,
        Tripwire() as tripwire,
        tempfile.TemporaryDirectory() as folder,
    ):
        client = server.client()
        client.xgroup_create(STREAM, GROUP, "$", mkstream=True)
        client.close()
        # Every abandoned entry is idle enough at once: the cycles' work is the same in both runs.
        base = telemetry_environment(
            {**os.environ, **environment_for(server, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="0")},
            Path(folder),
            tripwire,
        )
        without = _run(server, base, args.invocations)
        before = len(breeze.paths())
        env = {**base, "APPLICATIONINSIGHTS_CONNECTION_STRING": breeze.connection_string}
        with_export = _run(server, env, args.invocations)
        exports = len(breeze.paths()) - before
    for name, seconds in (("without telemetry", without), ("with an export per invocation", with_export)):
        print(
            f"{name}: median {statistics.median(seconds) * 1000:.1f} ms, "
            f"slowest {max(seconds) * 1000:.1f} ms over {len(seconds)} invocations"
        )
    print(f"export requests received: {exports} for {args.invocations} invocations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
