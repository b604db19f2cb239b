"""The handler's readiness time with and without telemetry: how long handler/dev/host.py's FunctionsHost (the
host's own polling of GET / every 25 ms) waits from starting `python -m handler serve` to its first answer,
without the telemetry variables and with APPLICATIONINSIGHTS_CONNECTION_STRING set (pointing at a stand-in
ingestion endpoint on 127.0.0.1, Microsoft's control plane and statsbeat off: nothing leaves the machine).
Runs are interleaved; the medians are what the README shows. With telemetry it also reports when the
exporters were up (they start on a thread of their own, after readiness).

    .venv/bin/python -m bench.readiness [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from handler.dev.host import FunctionsHost
from handler.dev.local_redis import free_port
from handler.dev.samples import PIPELINE_NAMES
from handler.dev.telemetry_fakes import Breeze, Tripwire, telemetry_environment

UP_LINE = "telemetry: metrics to"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    settings = {
        "REDIS_HOST": f"127.0.0.1:{free_port()}",  # readiness never waits for Redis: nothing listens here
        "REDIS_TLS": "false",
        **PIPELINE_NAMES,
        "MIN_IDLE_TIME_SEC": "10",
    }
    ready: dict[str, list[float]] = {"without telemetry": [], "with telemetry": []}
    telemetry_up: list[float] = []
    with Breeze() as breeze, Tripwire() as tripwire, tempfile.TemporaryDirectory() as folder:
        base = telemetry_environment({**os.environ, **settings}, Path(folder), tripwire)
        environments = {
            "without telemetry": base,
            "with telemetry": {**base, "APPLICATIONINSIGHTS_CONNECTION_STRING": breeze.connection_string},
        }
        for _ in range(args.runs):
            for mode, env in environments.items():
                started = time.monotonic()
                host = FunctionsHost(env).start()
                ready[mode].append(host.started_in)
                if mode == "with telemetry":
                    while UP_LINE not in host.stdout:
                        if time.monotonic() - started > 30:
                            raise SystemExit(f"telemetry never started: {host.stderr[-2000:]}")
                        time.sleep(0.005)
                    telemetry_up.append(time.monotonic() - started)
                host.stop()
        if tripwire.attempts:
            raise SystemExit(f"something tried to leave the machine: {tripwire.attempts}")
    for mode, times in ready.items():
        shown = " ".join(f"{t:.3f}" for t in times)
        print(f"{mode:>18}: median {statistics.median(times):.3f} s to readiness ({shown})")
    shown = " ".join(f"{t:.3f}" for t in telemetry_up)
    print(f"{'exporters up':>18}: median {statistics.median(telemetry_up):.3f} s after the start ({shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
