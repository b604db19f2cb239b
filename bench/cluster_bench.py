"""Benchmark: the reclaim cycle on one node and on a Redis Cluster, side by side in one run.

    ./scripts/bench-cluster                 # N = 100,000; three runs each
    ./scripts/bench-cluster --sizes 100000,1000000 --repeat 3

The same backlog (N tweets left pending by a crashed processor) on three deployments started for the
purpose: one Redis 8.2 node; a cluster of three masters; and three masters each with a replica, where every
page's writes wait for a replica (WAIT) before their acknowledgement. The stream lives on one master; the
tweet hashes spread over all three. Runs are interleaved and every run is verified.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import redis

from bench.backlog import MIN_IDLE_SEC, abandon, produce, verify
from bench.reclaim_bench import MAX_MESSAGES, run_process
from handler.dev.backlog import raw_client
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for, packaged_redis_server
from handler.dev.samples import PIPELINE_NAMES, STREAM


def monitor_env(node: LocalRedis) -> dict[str, str]:
    return environment_for(
        node,
        **PIPELINE_NAMES,
        MIN_IDLE_TIME_SEC=str(MIN_IDLE_SEC),
        CYCLE_TIME_BUDGET_SEC="600",
        CYCLE_MAX_MESSAGES=str(MAX_MESSAGES),
        LOG_LEVEL="WARNING",
    )


class Deployment:
    """Where the backlog lives: the stream's node, and the client that reaches every tweet hash."""

    def __init__(self, name: str, stream_node: LocalRedis, tweets: Any, entry: LocalRedis) -> None:
        self.name, self.stream_node, self.tweets, self.entry = name, stream_node, tweets, entry
        self.client: redis.Redis = raw_client(stream_node.port)

    def run(self, size: int) -> float:
        abandon(self.client, size, self.tweets)
        text, _, _ = run_process([sys.executable, "-m", "handler", "reclaim"], monitor_env(self.entry))
        summary = json.loads(text)
        problem = verify(self.client, size, self.tweets)
        if problem or summary["processed"] != size:
            raise SystemExit(f"{self.name} at {size}: wrong: {problem or summary}")
        return float(size / (summary["duration_ms"] / 1000))


def on_cluster(name: str, cluster: LocalCluster) -> Deployment:
    tweets = cluster.client()
    stream_node = cluster.master_of(STREAM)
    entry = next(node for node in cluster.masters if node is not stream_node)  # REDIS_HOST: any node
    return Deployment(name, stream_node, tweets, entry)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binary = packaged_redis_server()
    with (
        LocalRedis(binary) as single,
        LocalCluster(binary) as plain,
        LocalCluster(binary, replicas_per_master=1) as replicated,
    ):
        deployments = [
            Deployment("one node", single, None, single),
            on_cluster("cluster, 3 masters", plain),
            on_cluster("cluster, 3 masters + replicas (WAIT)", replicated),
        ]
        rows: list[tuple[int, str, float]] = []
        for size in (int(s) for s in args.sizes.split(",")):
            for deployment in deployments:
                produce(deployment.client, size)
            rates: dict[str, list[float]] = {d.name: [] for d in deployments}
            for attempt in range(args.repeat):
                for deployment in deployments:
                    rate = deployment.run(size)
                    rates[deployment.name].append(rate)
                    print(
                        f"  {deployment.name:<38} N={size:>9,} run {attempt + 1}: {rate:>9,.0f} msg/s "
                        "(verified)",
                        flush=True,
                    )
            rows += [(size, name, statistics.median(values)) for name, values in rates.items()]
        report(rows)


def report(rows: list[tuple[int, str, float]]) -> None:
    print("\n| N | deployment | messages/s (median) | vs one node |")
    print("| ---: | --- | ---: | ---: |")
    baseline = {size: rate for size, name, rate in rows if name == "one node"}
    for size, name, rate in rows:
        print(f"| {size:,} | {name} | {rate:,.0f} | {rate / baseline[size]:.2f}x |")


if __name__ == "__main__":
    main()
