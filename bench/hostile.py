"""What hostile entries cost: the command line's peak memory under an address-space limit, and the longest
script of the monitor, on backlogs a buggy or compromised producer could write (docs/performance.md).

    python -m bench.hostile                # every case, about five minutes on 2 cores
    python -m bench.hostile --as-mb 1500   # the address-space limit (prlimit --as), 1.5 GB by default

Each case runs `python -m handler reclaim` once under `prlimit --as` against a fresh Redis 8.2 with
SLOWLOG recording every command, and prints its exit code, its summary, its peak RSS (bench/peak_rss.py)
and the longest EVAL and EXEC the server logged.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from collections.abc import Callable

import redis

from handler.dev.backlog import IDLE_ENOUGH_MS, age, command, crash_after_reading, create_group, produce
from handler.dev.host import APP_ROOT
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, tweet
from handler.transport.wire import pack

CRASHED = "consumer-crashed"


def many_fields(pairs: int, value: bytes = b"vv") -> list[bytes]:
    return [part for n in range(pairs) for part in (b"%d" % n, value)]


def produce_raw(port: int, fields: list[bytes], copies: int) -> None:
    """XADD the same entry `copies` times, packed once and written raw."""
    data = pack((b"XADD", STREAM, b"*", *fields))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(copies):
            sock.sendall(data)
        received = b""
        while received.count(b"\r\n") < 2 * copies:
            received += sock.recv(1 << 16)


def valid_around(client: redis.Redis, port: int, big: list[bytes], copies: int) -> None:
    """Three valid tweets, `copies` copies of `big`, three more, all read by a processor that died."""
    produce(client, STREAM, [tweet(n) for n in range(3)])
    produce_raw(port, big, copies)
    produce(client, STREAM, [tweet(n) for n in range(3, 6)])
    crash_after_reading(client, STREAM, GROUP, CRASHED, copies + 6)


def delivered_too_often(client: redis.Redis, port: int, big: list[bytes], copies: int) -> None:
    valid_around(client, port, big, copies)
    ids = [row[0] for row in command(client, "XPENDING", STREAM, GROUP, "-", "+", copies + 6)][3:-3]
    command(client, "XCLAIM", STREAM, GROUP, CRASHED, 0, *ids, "RETRYCOUNT", 11, "JUSTID")


CASES: list[tuple[str, Callable[[redis.Redis, int], None]]] = [
    (
        "1,000 entries of 20,000 two-byte pairs (320 kB of RESP each) between 6 tweets",
        lambda c, p: valid_around(c, p, many_fields(20_000), 1000),
    ),
    (
        "200 entries of 20,000 pairs, each delivered 11 times (past MAX_DELIVERIES)",
        lambda c, p: delivered_too_often(c, p, many_fields(20_000), 200),
    ),
    (
        "one entry of 1,000,000 one-byte pairs (8 MB of RESP, over ENTRY_MAX_BYTES)",
        lambda c, p: valid_around(c, p, many_fields(1_000_000, b"v"), 1),
    ),
    (
        "one entry with a 400 MB value (too large)",
        lambda c, p: valid_around(c, p, [b"text", b"x" * 400_000_000], 1),
    ),
]


def run_case(name: str, make: Callable[[redis.Redis, int], None], as_mb: int) -> None:
    server = LocalRedis(BINARIES["8.2"]())
    server.start()
    try:
        client = server.client()
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 100_000)
        create_group(client, STREAM, GROUP)
        make(client, server.port)
        ids = [row[0] for row in command(client, "XPENDING", STREAM, GROUP, "-", "+", 1_000_000)]
        age(client, STREAM, GROUP, CRASHED, ids, IDLE_ENOUGH_MS)
        client.slowlog_reset()
        env = environment_for(server, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10", LOG_LEVEL="ERROR")
        done = subprocess.run(
            [
                "prlimit",
                f"--as={as_mb * 1_000_000}",
                sys.executable,
                "-m",
                "bench.peak_rss",
                sys.executable,
                "-m",
                "handler",
                "reclaim",
            ],
            env=env,
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        peak_mb = int(done.stderr.strip().splitlines()[-1].removeprefix("peak_rss_kb=")) / 1024
        longest: dict[bytes, float] = {}
        for entry in client.slowlog_get(100_000):
            name_of = entry["command"].split(b" ", 1)[0].upper()
            if name_of in (b"EVAL", b"EXEC", b"XADD", b"XCLAIM", b"XRANGE"):
                longest[name_of] = max(longest.get(name_of, 0.0), entry["duration"] / 1000)
        summary = json.loads(done.stdout) if done.returncode == 0 else done.stderr.strip().splitlines()[-2:]
        print(f"{name}\n  exit {done.returncode}, peak RSS {peak_mb:,.0f} MB, {summary}")
        print("  longest (ms): " + ", ".join(f"{k.decode()} {v:,.1f}" for k, v in sorted(longest.items())))
        print(f"  left pending: {command(client, 'XPENDING', STREAM, GROUP)[0]}", flush=True)
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--as-mb", type=int, default=1500, help="the address-space limit, in MB")
    parser.add_argument("--only", type=int, help="run only case N (from 1)")
    args = parser.parse_args(argv)
    for number, (name, make) in enumerate(CASES, 1):
        if args.only in (None, number):
            run_case(name, make, args.as_mb)


if __name__ == "__main__":
    main()
