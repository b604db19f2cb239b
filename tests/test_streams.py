"""Several streams under one group: names or patterns in STREAM_NAME, swept fairly in one invocation, with
per-stream summaries and metrics; on one node and on a cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from handler.dev.host import APP_ROOT, FunctionsHost, completed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import GROUP, MONITOR
from handler.errors import SettingsError, StreamOrGroupMissingError
from handler.reclaim.streams import StreamFinder, StreamsCycle
from handler.settings import MonitorSettings
from handler.transport.client import Client
from handler.transport.connect import RedisConnection, connect
from tests.pipeline import abandon, create_group, expected_hash, hash_fields, tweet

SHARDS = [f"tweets_stream:{n}" for n in range(4)]


def settings_for(address: str, stream_name: str, **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        "REDIS_HOST": address, "REDIS_TLS": False, "MIN_IDLE_TIME_SEC": 10, "STREAM_NAME": stream_name,
        "STREAM_CONSUMER_GROUP_NAME": GROUP, "MONITORING_CONSUMER_NAME": MONITOR, **overrides,
    }  # fmt: skip
    return MonitorSettings(**values)


def shard_backlog(client: Client, sizes: list[int], first: int = 0) -> dict[str, list[list[bytes]]]:
    """Each shard gets its own tweets (ids never repeat across shards), read by a processor that crashed."""
    produced: dict[str, list[list[bytes]]] = {}
    number = first
    for stream, size in zip(SHARDS, sizes, strict=False):
        create_group(client, stream, GROUP)
        entries = [tweet(n) for n in range(number, number + size)]
        number += size
        abandon(client, stream, GROUP, entries)
        produced[stream] = entries
    return produced


def written(client: Client, produced: dict[str, list[list[bytes]]]) -> bool:
    return all(
        expected_hash(fields) == hash_fields(client, b"tweet:" + fields[3])
        for entries in produced.values()
        for fields in entries
    )


def test_stream_name_lists_names_and_patterns() -> None:
    settings = settings_for("127.0.0.1", " tweets_stream:0 , tweets_stream:1,other:* ")
    assert ("tweets_stream:0", "tweets_stream:1", "other:*") == settings.stream_names
    with pytest.raises(SettingsError, match="works on one stream"):
        _ = settings.single_stream
    with pytest.raises(ValueError, match="a stream name or pattern is empty"):
        settings_for("127.0.0.1", "a,,b")
    with pytest.raises(ValueError, match="DEAD_LETTER_STREAM names one dead-letter stream"):
        settings_for("127.0.0.1", "tweets_stream:*", DEAD_LETTER_STREAM="{tweets_stream:0}:dlq")


def test_a_pattern_sweeps_every_shard_in_one_invocation(redis_8: LocalRedis, client8: redis.Redis) -> None:
    produced = shard_backlog(client8, [300, 50, 0, 1200])
    client8.xadd("unrelated_stream", {"a": "b"})  # matches the pattern below, has no such group
    settings = settings_for(redis_8.address, "*tweets_stream*,*unrelated*")
    first = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert 1550 == first.counts.processed
    assert first.streams is not None
    # Every shard and the unrelated stream, but not the shards' own dead-letter streams, which the
    # pattern matches too.
    assert sorted([*SHARDS, "unrelated_stream"]) == sorted(first.streams)
    assert [300, 50, 0, 1200] == [first.streams[name].counts.processed for name in SHARDS]
    assert "empty" == first.streams["tweets_stream:2"].stopped_by
    assert f"no group '{GROUP}'" == first.streams["unrelated_stream"].skipped
    assert written(client8, produced)


def test_the_time_budget_is_shared_fairly(redis_8: LocalRedis, client8: redis.Redis) -> None:
    """Three shards with more than one budget's work each: each gets its share, whichever goes first."""
    shard_backlog(client8, [40_000, 40_000, 40_000])
    settings = settings_for(
        redis_8.address, ",".join(SHARDS[:3]), CYCLE_TIME_BUDGET_SEC=0.5, RECLAIM_PAGE_SIZE=500
    )
    cycle = StreamsCycle(RedisConnection(settings, connect(settings)), settings)
    for _ in range(2):
        summary = cycle.run()
        assert summary.streams is not None
        done = [summary.streams[name].counts.processed for name in SHARDS[:3]]
        assert min(done) > 0 and max(done) < 2 * sum(done) / 3, done  # no shard starved, none took it all
        assert "budget" == summary.stopped_by
    assert summary.duration_ms < 2000  # the shares add up to one budget (0.5 s), not three


def test_a_named_stream_without_the_group_fails_after_the_others_are_swept(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    produced = shard_backlog(client8, [100])
    settings = settings_for(redis_8.address, "tweets_stream:0,tweets_stream:missing")
    with pytest.raises(StreamOrGroupMissingError, match="tweets_stream:missing"):
        StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert written(client8, produced)


def test_the_host_gets_per_stream_summaries_and_metrics(redis_8: LocalRedis, client8: redis.Redis) -> None:
    shard_backlog(client8, [7, 3])
    env = environment_for(
        redis_8, STREAM_NAME="tweets_stream:*", STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR, MIN_IDLE_TIME_SEC="10",
    )  # fmt: skip
    host = FunctionsHost(env).start()
    try:
        answer = completed(host.invoke())
        metrics = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    assert 10 == answer["processed"]
    assert {"tweets_stream:0": 7, "tweets_stream:1": 3} == {
        name: summary["processed"] for name, summary in answer["streams"].items()
    }
    assert 'tweets_monitor_processed_entries_total{stream="tweets_stream:0"} 7.0' in metrics
    assert 'tweets_monitor_processed_entries_total{stream="tweets_stream:1"} 3.0' in metrics
    assert 'tweets_monitor_pending_entries{stream="tweets_stream:1"} 0.0' in metrics


def test_check_covers_every_stream_and_per_stream_commands_ask_for_one(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    shard_backlog(client8, [1, 1])
    env = environment_for(
        redis_8, STREAM_NAME="tweets_stream:*", STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR, MIN_IDLE_TIME_SEC="10",
    )  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "handler", *args]
        return subprocess.run(command, env=env, cwd=APP_ROOT, capture_output=True, text=True, timeout=60)

    check = cli("check")
    assert 0 == check.returncode, check.stdout
    for shard in SHARDS[:2]:
        assert f"PASS  stream and group: stream '{shard}' has group '{GROUP}'" in check.stdout
    for command in (["status"], ["reclaim", "--dry-run"], ["dead-letter", "list"]):
        done = cli(*command)
        assert 2 == done.returncode, command
        assert "this command works on one stream" in done.stderr
        assert "Traceback" not in done.stderr


def test_shards_spread_over_a_cluster_are_all_swept(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    produced = shard_backlog(cluster_client, [500, 500, 500, 500])
    masters = {redis_cluster.master_of(name).port for name in SHARDS}
    assert len(masters) > 1  # the shards live on different nodes: SCAN must visit each
    settings = settings_for(redis_cluster.address, "tweets_stream:*")
    summary = StreamsCycle(RedisConnection(settings), settings).run()
    assert 2000 == summary.counts.processed
    assert written(cluster_client, produced)
    done = subprocess.run([sys.executable, "-m", "handler", "reclaim"], cwd=APP_ROOT, capture_output=True,
                          text=True, timeout=60, env=environment_for(
                              redis_cluster.masters[0], STREAM_NAME="tweets_stream:*",
                              STREAM_CONSUMER_GROUP_NAME=GROUP, MONITORING_CONSUMER_NAME=MONITOR,
                              MIN_IDLE_TIME_SEC="10"))  # fmt: skip
    assert sorted(SHARDS) == sorted(json.loads(done.stdout)["streams"])


def test_a_pattern_is_expanded_again_only_after_a_while(redis_8: LocalRedis, client8: redis.Redis) -> None:
    """SCAN walks every key: the expansion is remembered, and a new shard appears at the next rescan."""
    shard_backlog(client8, [1])
    settings = settings_for(redis_8.address, "tweets_stream:*")
    finder = StreamFinder(settings, rescan_after_sec=0.3)
    assert ["tweets_stream:0"] == finder.find(client8)
    create_group(client8, "tweets_stream:1", GROUP)
    assert ["tweets_stream:0"] == finder.find(client8)
    time.sleep(0.35)
    assert ["tweets_stream:0", "tweets_stream:1"] == finder.find(client8)


def test_a_pattern_that_matches_nothing_says_so(redis_8: LocalRedis, client8: redis.Redis) -> None:
    settings = settings_for(redis_8.address, "no_such_stream:*")
    summary = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert ("skipped", "no stream matches 'no_such_stream:*'") == (summary.stopped_by, summary.skipped)
