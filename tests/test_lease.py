"""The sweep lease: one monitor per group at a time, always with a TTL, renewed and released only by its
holder, taken over when the holder dies."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from handler.dev.local_redis import LocalRedis
from handler.reclaim.cycle import ReclaimCycle
from handler.reclaim.lease import Lease
from handler.reclaim.summary import StopReason
from handler.transport.connect import RedisConnection, connect
from tests.acl import add_user, readme_rule_for
from tests.conftest import settings_for
from tests.pipeline import abandon, create_group, tweet
from tests.world import World

KEY = "{tweets_stream}:lease:redisearch_app_group"


def test_a_held_lease_is_refused_with_its_holders_name(client8: redis.Redis) -> None:
    first = Lease(client8, KEY, "monitor-a@host:1:x", ttl_sec=5)
    second = Lease(client8, KEY, "monitor-b@host:2:y", ttl_sec=5)
    assert first.acquire() is None
    assert "monitor-a@host:1:x" == second.acquire()
    assert 0 < client8.pttl(KEY) <= 5000  # never without expiry


def test_only_the_holder_renews_or_releases(client8: redis.Redis) -> None:
    mine = Lease(client8, KEY, "mine", ttl_sec=1.5)
    assert mine.acquire() is None
    time.sleep(0.6)  # past a third of the TTL: keep() renews
    assert mine.keep()
    assert client8.pttl(KEY) > 1000
    client8.set(KEY, "a successor", px=5000)  # as if ours had expired and another monitor took it
    time.sleep(0.6)  # keep() notices at its next renewal, a third of the TTL later at the latest
    assert not mine.keep()
    mine.release()
    assert b"a successor" == client8.get(KEY)  # our release must not delete a successor's lease


def test_a_dead_holders_lease_expires_and_is_taken_over(client8: redis.Redis) -> None:
    assert Lease(client8, KEY, "died", ttl_sec=1).acquire() is None  # never released: its holder died
    successor = Lease(client8, KEY, "successor", ttl_sec=1)
    assert "died" == successor.acquire()
    time.sleep(1.1)
    assert successor.acquire() is None


def test_a_cycle_skips_while_another_holds_the_lease_and_releases_its_own(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client8, stream, group)
    abandon(client8, stream, group, [tweet(n) for n in range(3)])
    settings = settings_for(redis_8, names)
    cycle = ReclaimCycle(RedisConnection(settings, connect(settings)), settings)
    client8.set(cycle.keys.lease, "monitoring_app@elsewhere:42:abcd", px=60_000)
    skipped = cycle.run()
    assert ("skipped", "lease held by monitoring_app@elsewhere:42:abcd") == (
        skipped.stopped_by,
        skipped.skipped,
    )
    assert (3, 0) == (skipped.pending, skipped.counts.claimed)
    client8.delete(cycle.keys.lease)
    assert 3 == cycle.run().counts.processed
    assert 0 == client8.exists(cycle.keys.lease)  # released on exit


def test_a_long_cycle_keeps_its_lease_alive(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client8, stream, group)
    abandon(client8, stream, group, [tweet(n) for n in range(60_000)])
    settings = settings_for(redis_8, names, LEASE_TTL_SEC=1, RECLAIM_PAGE_SIZE=10)
    cycle = ReclaimCycle(RedisConnection(settings, connect(settings)), settings)
    ttls: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            ttls.append(int(client8.pttl(cycle.keys.lease)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    summary = cycle.run()
    done.set()
    watcher.join()
    assert 60_000 == summary.counts.processed
    assert summary.duration_ms > 1000  # longer than the TTL: it only held on by renewing
    held = [ttl for ttl in ttls if ttl != -2]  # -2: no key (before the start, after the release)
    assert all(0 < ttl <= 1000 for ttl in held)  # always with an expiry, never past the TTL
    assert len(held) >= 26  # sampled every 50+ ms: held for over 1.3 s, longer than one TTL of 1 s


def test_a_lease_without_a_ttl_is_taken_over_after_lease_ttl(
    world8: World, caplog: pytest.LogCaptureFixture
) -> None:
    world8.abandon([tweet(n) for n in range(10)])
    world8.client.set(world8.keys.lease, "old-monitor@gone:1:deadbeef")  # no TTL: a script's, or an old one's
    first = world8.run(LEASE_TTL_SEC=1)
    assert first.stopped_by is StopReason.SKIPPED
    assert any("no time to live" in record.getMessage() for record in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    time.sleep(1.2)
    second = world8.run(LEASE_TTL_SEC=1)
    assert 10 == second.counts.processed, second
    assert not world8.pending()


def test_an_acl_rule_without_pttl_still_respects_another_monitors_lease(
    world8: World, caplog: pytest.LogCaptureFixture
) -> None:
    world8.abandon([tweet(n) for n in range(5)])
    login = add_user(
        world8.client, "old-rule-" + world8.stream[-6:], readme_rule_for(world8.stream).replace(" +pttl", "")
    )
    world8.client.set(world8.keys.lease, "another-monitor@host:1:cafe", px=60_000)
    summary = world8.run(REDIS_USERNAME=login["REDIS_USERNAME"], REDIS_PASSWORD=login["REDIS_PASSWORD"])
    assert summary.stopped_by is StopReason.SKIPPED, summary
    assert 5 == len(world8.pending())
    assert any("+pttl" in record.getMessage() for record in caplog.records)


def test_a_holder_stalled_after_its_last_renewal_cannot_overwrite_its_successors_cursor(
    client8: redis.Redis,
) -> None:
    """A monitor may stall after its last renewal and before it saves its cursor (its last step): its lease
    expires meanwhile, a successor takes it and saves its own cursor, which must stay."""
    cursor = "{tweets_stream}:cursor:redisearch_app_group"
    stalled = Lease(client8, KEY, "stalled", ttl_sec=0.2)
    assert stalled.acquire() is None
    time.sleep(0.3)  # expired, though `stalled` has not renewed since and still counts it as held
    successor = Lease(client8, KEY, "successor", ttl_sec=5)
    assert successor.acquire() is None
    assert successor.save_cursor(cursor, b"2-0", 60_000)
    assert not stalled.save_cursor(cursor, b"1-0", 60_000)
    assert not stalled.save_cursor(cursor, b"", 60_000)  # nor delete it
    assert b"2-0" == client8.get(cursor)
