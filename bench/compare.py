"""Two checkouts of the monitor on the same backlog, interleaved run by run: the command line's reclaim rate
on loopback (Redis 8.2) and over TLS through a latency proxy (Debian's 7.0.15, 1 ms by default), the
medians side by side. For a change that must not slow the normal path: two `git worktree`s, of the commit
before it and of the commit itself.

    python -m bench.compare /tmp/before /tmp/after --size 100000 --repeat 5

Each run is `python -m handler reclaim` started in that checkout's folder (so it imports that checkout's
`handler`), over N tweets of about 200 bytes left pending by a crashed processor (bench/backlog.py), and is
verified afterwards; the rate is over the cycle's own duration_ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from bench.azure_bench import calibrated_proxy, tls_server
from bench.backlog import abandon, produce, verify
from bench.reclaim_bench import Endpoint, monitor_env
from handler.dev.backlog import raw_client
from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import BINARIES


def reclaim_rate(checkout: Path, endpoint: Endpoint, client: redis.Redis, size: int) -> float:
    abandon(client, size)
    done = subprocess.run(
        [sys.executable, "-m", "handler", "reclaim"],
        env=monitor_env(endpoint),
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: exit {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    problem = verify(client, size)
    if problem or summary["processed"] != size:
        raise RuntimeError(f"{checkout}: {problem or summary}")
    return float(size / (summary["duration_ms"] / 1000))


@contextmanager
def settings() -> Iterator[list[tuple[str, Endpoint, redis.Redis]]]:
    """The loopback server and the TLS server behind its proxy: (name, where to connect, a client)."""
    server = LocalRedis(BINARIES["8.2"]())
    server.start()
    try:
        with tls_server() as (tls, certificates):
            proxy, median, _, _ = calibrated_proxy(tls.port, RTT_MS, None, certificates.ca)
            try:
                print(f"TLS proxy for {RTT_MS:g} ms: PING median {median:.3f} ms", flush=True)
                yield [
                    ("loopback", Endpoint(server.port), raw_client(server.port)),
                    (
                        f"TLS, {RTT_MS:g} ms",
                        Endpoint(proxy.port, certificates.ca),
                        raw_client(tls.port, ssl=True, ssl_ca_certs=str(certificates.ca)),
                    ),
                ]
            finally:
                proxy.stop()
    finally:
        server.cleanup()


RTT_MS = 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="the checkout before the change")
    parser.add_argument("after", type=Path, help="the checkout with it")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    with settings() as places:
        for _, _, client in places:
            produce(client, args.size)
        rates: dict[tuple[str, str], list[float]] = {}
        for run in range(args.repeat):
            order = list(checkouts.items()) if run % 2 == 0 else list(reversed(checkouts.items()))
            for place, endpoint, client in places:
                for name, checkout in order:
                    rate = reclaim_rate(checkout, endpoint, client, args.size)
                    rates.setdefault((place, name), []).append(rate)
                    print(f"run {run + 1} {place:12} {name:6} {rate:10,.0f} msg/s", flush=True)
    print(f"\n| setting | before (msg/s) | after (msg/s) | after / before | runs, N={args.size:,} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for place, _, _ in places:
        before = statistics.median(rates[(place, "before")])
        after = statistics.median(rates[(place, "after")])
        print(f"| {place} | {before:,.0f} | {after:,.0f} | {after / before:.3f} | {args.repeat} each |")


if __name__ == "__main__":
    main()
