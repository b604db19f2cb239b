"""Dead-consumer cleanup on every server version: XINFO CONSUMERS and DELCONSUMER in one Lua call."""

from __future__ import annotations

import time

import redis

from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, STREAM
from handler.reclaim.consumers import prune_idle_consumers
from tests import pipeline
from tests.acl import add_user, readme_rule_for
from tests.cli import cli, env_for
from tests.pipeline import (
    abandon_in_pipeline,
    command,
    create_group,
    pending_rows,
    produce,
    tweet,
    tweet_keys,
)
from tests.world import PROCESSOR


def test_idle_consumers_with_nothing_pending_are_removed_and_the_rest_kept(
    client: redis.Redis, names: dict[str, str]
) -> None:
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client, stream, group)
    produce(client, stream, [tweet(n) for n in range(3)])
    for consumer in ("consumer-done", "monitoring_app"):  # read one entry each and acknowledge it
        reply = command(client, "XREADGROUP", "GROUP", group, consumer, "COUNT", 1, "STREAMS", stream, ">")
        client.xack(stream, group, reply[0][1][0][0])
    command(client, "XREADGROUP", "GROUP", group, "consumer-with-work", "COUNT", 1, "STREAMS", stream, ">")
    time.sleep(0.3)
    assert ["consumer-done"] == prune_idle_consumers(client, stream, group, 0.2, keep=["monitoring_app"])
    left = {c["name"] for c in client.xinfo_consumers(stream, group)}
    assert {b"monitoring_app", b"consumer-with-work"} == left
    assert 1 == client.xpending(stream, group)["pending"]  # the busy consumer's entry is still pending


def test_pruning_refused_is_a_warning_and_a_metric_not_a_failed_invocation(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    pipeline.abandon(
        client8, stream, names["STREAM_CONSUMER_GROUP_NAME"], [tweet(n) for n in range(5)], PROCESSOR
    )
    login = add_user(client8, "readme-" + stream[-6:], readme_rule_for(stream))
    env = env_for(redis_8, names, DELETE_IDLE_CONSUMERS_AFTER_SEC="60", **login)
    host = FunctionsHost(env).start()
    try:
        answer = host.invoke()
        result = completed(answer)
        metrics = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    assert 5 == len(tweet_keys(client8))
    assert 5 == result["processed"]
    # A warning reaches the host once, on stderr (where it records it as a Warning), not in the Logs too.
    warned = [line for line in host.stderr.splitlines() if "could not remove idle consumers" in line]
    assert warned and "WARNING" in warned[0].upper(), host.stderr[-2000:]
    expected = f'tweets_monitor_housekeeping_failures_total{{stream="{stream}",task="prune consumers"}} 1.0'
    assert expected in metrics, metrics[-3000:]


def test_only_idle_consumers_with_nothing_pending_are_removed(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    abandon_in_pipeline(group, [tweet(1)], "consumer-with-work")
    for name in ("consumer-old-1", "consumer-old-2", "monitoring_app"):
        command(group, "XGROUP", "CREATECONSUMER", STREAM, GROUP, name)
    time.sleep(2.5)
    command(group, "XGROUP", "CREATECONSUMER", STREAM, GROUP, "consumer-fresh")
    assert ["consumer-old-1", "consumer-old-2"] == sorted(
        prune_idle_consumers(group, STREAM, GROUP, 2.0, keep=["monitoring_app"], dry_run=True)
    )
    done = cli(redis_8, "consumers", "prune", "--idle-sec", "2")
    assert "removed 2 consumers" in done.stdout
    left = {c["name"] for c in group.xinfo_consumers(STREAM, GROUP)}
    assert {b"consumer-with-work", b"monitoring_app", b"consumer-fresh"} == left
    assert 1 == len(pending_rows(group, STREAM, GROUP))  # the pending entry kept its owner
