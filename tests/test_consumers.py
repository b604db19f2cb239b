"""Dead-consumer cleanup on every server version: XINFO CONSUMERS and DELCONSUMER in one Lua call."""

from __future__ import annotations

import time

import redis

from handler.reclaim.consumers import prune_idle_consumers
from tests.pipeline import command, create_group, produce, tweet


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
