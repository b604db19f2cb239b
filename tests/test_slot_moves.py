"""Slots that move between the masters of a real local cluster (three masters, Redis 8.2) while the monitor
holds a slot map read before the move: a stream whose own slot moved is that stream's outcome, not the
invocation's failure, and writes refused with MOVED are sent once more to the slot's new node."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, MONITOR
from handler.reclaim.streams import StreamsCycle
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection
from tests.pipeline import abandon, command, create_group, expected_hash, hash_fields, tweet


@pytest.fixture(scope="module")
def moving_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own: these tests move its slots around."""
    with LocalCluster(BINARIES["8.2"]()) as cluster:
        yield cluster


@pytest.fixture
def moving_client(moving_cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = moving_cluster.client()
    client.flushall()
    yield client
    client.close()


def settings_for(cluster: LocalCluster, stream_name: str, **overrides: object) -> MonitorSettings:
    values: dict[str, object] = {
        "REDIS_HOST": cluster.address,
        "REDIS_TLS": False,
        "MIN_IDLE_TIME_SEC": 10,
        "STREAM_NAME": stream_name,
        "STREAM_CONSUMER_GROUP_NAME": GROUP,
        "MONITORING_CONSUMER_NAME": MONITOR,
        **overrides,
    }
    return MonitorSettings(**values)  # type: ignore[arg-type]


def slot_owners(cluster: LocalCluster) -> list[LocalRedis]:
    """Which master serves each slot now."""
    owners: list[LocalRedis | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    with cluster.node_client(cluster.masters[0]) as client:
        for first, last, holder, *_ in client.execute_command("CLUSTER", "SLOTS"):
            node = next(n for n in cluster.masters if n.port == int(holder[1]))
            owners[first : last + 1] = [node] * (last - first + 1)
    assert all(owners)
    return owners  # type: ignore[return-value]


def move_slots(cluster: LocalCluster, slots: list[int], target: LocalRedis) -> None:
    """Move `slots` and their keys to `target` as `redis-cli --cluster reshard` does: IMPORTING and
    MIGRATING, MIGRATE the keys, then SETSLOT NODE on every master."""
    owners = slot_owners(cluster)
    target_id = cluster.node_id(target)
    by_source: dict[LocalRedis, list[int]] = {}
    for slot in slots:
        if owners[slot] is not target:
            by_source.setdefault(owners[slot], []).append(slot)
    with cluster.node_client(target) as destination:
        for source, moving in by_source.items():
            source_id = cluster.node_id(source)
            with cluster.node_client(source) as origin:
                pipe = destination.pipeline(transaction=False)
                for slot in moving:
                    pipe.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
                pipe.execute()
                pipe = origin.pipeline(transaction=False)
                for slot in moving:
                    pipe.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
                pipe.execute()
                for slot in moving:
                    while keys := origin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                        origin.execute_command(
                            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                        )
        for master in [target, *(m for m in cluster.masters if m is not target)]:
            with cluster.node_client(master) as client:
                pipe = client.pipeline(transaction=False)
                for moving in by_source.values():
                    for slot in moving:
                        pipe.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
                pipe.execute()


def written(client: RedisCluster, fields: list[bytes]) -> bool:
    return expected_hash(fields) == hash_fields(client, b"tweet:" + fields[3])


def pending_total(client: RedisCluster, streams: list[str]) -> int:
    return sum(int(command(client, "XPENDING", stream, GROUP)[0]) for stream in streams)


def test_a_stream_whose_slot_moved_is_that_streams_outcome(
    moving_cluster: LocalCluster, moving_client: RedisCluster
) -> None:
    """Four streams; between two invocations the slots of two of them move to another master. The next
    invocation meets MOVED on those streams' own slot: it reads the map again, sweeps them all, answers,
    and counts exactly what it acknowledged."""
    streams = [f"moving-{n}" for n in range(4)]
    number = 0
    for stream in streams:
        create_group(moving_client, stream, GROUP)
        abandon(moving_client, stream, GROUP, [tweet(number + n) for n in range(100)])
        number += 100
    settings = settings_for(moving_cluster, ",".join(streams), RECLAIM_PAGE_SIZE=200)
    connection = RedisConnection(settings)
    cycle = StreamsCycle(connection, settings)
    try:
        assert 400 == cycle.run().counts.processed  # the monitor now holds the slot map of this moment
        produced = []
        for stream in streams:
            entries = [tweet(number + n) for n in range(1000)]
            number += 1000
            abandon(moving_client, stream, GROUP, entries)
            produced += entries
        owners = slot_owners(moving_cluster)
        for stream in streams[:2]:
            slot = key_slot(stream.encode())
            move_slots(
                moving_cluster, [slot], next(m for m in moving_cluster.masters if m is not owners[slot])
            )
        assert 4000 == pending_total(moving_client, streams)
        summary = cycle.run()
    finally:
        connection.close()
    assert summary.streams is not None
    acknowledged = 4000 - pending_total(moving_client, streams)
    assert acknowledged == summary.counts.processed, summary.as_dict()
    assert 4000 == summary.counts.processed, summary.as_dict()
    assert all(
        expected_hash(fields) == hash_fields(moving_client, b"tweet:" + fields[3]) for fields in produced
    )


def test_writes_refused_with_moved_go_to_the_new_node(
    moving_cluster: LocalCluster, moving_client: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """1,200 slots of tweet hashes move to another master between two invocations: the writes the old map
    sends to the old node are refused with MOVED; the map is read again and they go to the new node, with
    a log line per page and node, not per entry."""
    stream = "rebalanced"
    create_group(moving_client, stream, GROUP)
    abandon(moving_client, stream, GROUP, [tweet(n) for n in range(2000)])
    settings = settings_for(moving_cluster, stream, RECLAIM_PAGE_SIZE=500)
    connection = RedisConnection(settings)
    cycle = StreamsCycle(connection, settings)
    try:
        assert 2000 == cycle.run().counts.processed
        entries = [tweet(n) for n in range(2000, 6000)]
        abandon(moving_client, stream, GROUP, entries)
        owners = slot_owners(moving_cluster)
        home = owners[key_slot(stream.encode())]
        source, target = [m for m in moving_cluster.masters if m is not home][:2]
        move_slots(moving_cluster, [s for s, owner in enumerate(owners) if owner is source][:1200], target)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            summary = cycle.run()
    finally:
        connection.close()
    assert (4000, 0) == (summary.counts.processed, summary.counts.failed), summary.as_dict()
    assert 0 == pending_total(moving_client, [stream])
    assert all(
        expected_hash(fields) == hash_fields(moving_client, b"tweet:" + fields[3]) for fields in entries
    )
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) <= 8, (len(warnings), warnings[:3])
