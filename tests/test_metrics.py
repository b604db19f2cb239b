"""Prometheus metrics: what the invocations counted, and the gauges read from Redis at each scrape, which
answer even when Redis does not."""

from __future__ import annotations

import redis
from prometheus_client import generate_latest

from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.samples import PIPELINE_NAMES, STREAM
from handler.metrics import Metrics
from handler.transport.connect import RedisConnection
from tests.cli import env_for
from tests.pipeline import (
    abandon_in_pipeline,
    tweet,
)
from tests.test_streams import settings_for as streams_settings
from tests.test_streams import shard_backlog


def test_metrics_answer_with_redis_down(redis_8: LocalRedis) -> None:
    env = environment_for(
        redis_8,
        **PIPELINE_NAMES,
        MIN_IDLE_TIME_SEC="10",
        REDIS_HOST=f"127.0.0.1:{free_port()}",
        REDIS_TIMEOUT_SEC="1",
    )
    host = FunctionsHost(env).start()
    try:
        answer = host.request("GET", "/metrics")
    finally:
        host.stop()
    text = answer.body.decode()
    assert 200 == answer.status, text
    assert "tweets_monitor_redis_up 0.0" in text
    assert "tweets_monitor_pending_entries{" not in text


def test_metrics_skip_a_stream_of_another_pipeline_and_say_redis_is_up(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    shard_backlog(client8, [3])
    client8.xadd("tweets_stream:other", {"a": "b"})  # matched by the pattern, without our group
    settings = streams_settings(redis_8.address, "tweets_stream:*")
    metrics = Metrics()
    connection = RedisConnection(settings)
    try:
        metrics.watch_group(connection, settings)
        text = generate_latest(metrics.registry).decode()
    finally:
        connection.close()
    assert "tweets_monitor_redis_up 1.0" in text
    assert 'tweets_monitor_pending_entries{stream="tweets_stream:0"} 3.0' in text


def test_metrics_count_what_the_invocations_did(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon_in_pipeline(group, [tweet(n) for n in range(4)] + [[b"text", b"no id"]])
    host = FunctionsHost(env_for(redis_8)).start()
    try:
        completed(host.invoke())
        completed(host.invoke())
        text = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    samples = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    by_stream = f'{{stream="{STREAM}"}}'
    assert 4 == samples["tweets_monitor_processed_entries_total" + by_stream]
    assert 1 == samples["tweets_monitor_dead_lettered_entries_total" + by_stream]
    assert 5 == samples["tweets_monitor_claimed_entries_total" + by_stream]
    assert 1 == samples['tweets_monitor_cycles_total{outcome="end"}']
    assert 1 == samples['tweets_monitor_cycles_total{outcome="empty"}']
    assert 2 == samples["tweets_monitor_cycle_duration_seconds_count"]
    assert 0 == samples["tweets_monitor_pending_entries" + by_stream]
    assert 1 == samples["tweets_monitor_dead_letter_length" + by_stream]
