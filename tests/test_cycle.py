"""The reclaim cycle's numbered rules (the README's "What one cycle does"), each pinned against real Redis
6.0, 6.2 and 8.2."""

from __future__ import annotations

import time
from typing import Any

import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, tweet_id
from handler.keys import StreamKeys
from handler.reclaim.dead_letter import (
    METADATA_FIELDS,
    MOVE_TO_DEAD_LETTER_LUA,
    MoveOutcome,
    move_arguments,
    parse_move_reply,
)
from handler.reclaim.page import PageSettings, handle_page
from handler.reclaim.rules import START, PendingRow
from handler.reclaim.streams import StreamsCycle
from handler.reclaim.summary import StopReason
from handler.reclaim.sweep import Limits, Sweep, SweepPlan
from handler.reclaim.write_order import WriteOrder
from handler.transport.connect import RedisConnection, connect
from handler.transport.topology import topology_of
from handler.transport.wire import Channel
from tests.commands import named, recorded_commands
from tests.conftest import settings_for
from tests.pipeline import (
    IDLE_ENOUGH_MS,
    abandon,
    age,
    command,
    dead_letters,
    expected_hash,
    hash_fields,
    pending_ids_of,
    pending_rows,
    set_deliveries,
    tweet,
    tweet_keys,
)
from tests.test_streams import settings_for as streams_settings
from tests.test_streams import shard_backlog
from tests.world import PROCESSOR, World


# 1. XPENDING summary first; nothing else when it is 0.
def test_an_empty_pending_list_is_answered_after_one_xpending(world: World) -> None:
    cycle = world.cycle()
    cycle.run()  # the first call also opens the connection (CLIENT SETNAME)
    with recorded_commands(world.client) as commands:
        summary = cycle.run()
    assert [[b"XPENDING", world.stream.encode(), world.group.encode()]] == commands
    assert (0, 0, 0) == (summary.pending, summary.counts.claimed, summary.counts.processed)


# 2. Bounded pages that walk the whole pending list.
def test_pages_are_bounded_and_walk_the_whole_list(world: World) -> None:
    entries = [tweet(n) for n in range(35)]
    world.abandon(entries)
    with recorded_commands(world.client) as commands:
        summary = world.run(RECLAIM_PAGE_SIZE=10)
    ranges = [args for args in named(commands, b"XPENDING") if len(args) > 3]
    assert [b"10"] * 4 == [args[5] for args in ranges]  # COUNT is the page size, never the whole list
    assert all(len(args) - 5 <= 10 for args in named(commands, b"XCLAIM"))
    assert (35, 35, 35, 4) == (
        summary.pending,
        summary.counts.claimed,
        summary.counts.processed,
        summary.pages,
    )
    assert set() == world.pending()


# 3. XCLAIM with MIN_IDLE_TIME_SEC: entries a live processor is working on are never taken.
def test_entries_not_idle_long_enough_stay_with_their_owner(world: World) -> None:
    stale = world.abandon([tweet(n) for n in range(5)], consumer="consumer-crashed")
    live = world.abandon([tweet(n) for n in range(5, 10)], consumer="consumer-live", aged=False)
    summary = world.run()
    assert (10, 5, 5) == (summary.pending, summary.counts.claimed, summary.counts.processed)
    assert set(live) == pending_ids_of(world.client, world.stream, world.group, "consumer-live")
    assert all(row[3] == 1 for row in pending_rows(world.client, world.stream, world.group))
    assert {b"tweet:" + tweet_id(n) for n in range(5)} == tweet_keys(world.client)
    assert not set(stale) & world.pending()


def test_an_entry_its_owner_took_back_after_the_page_was_read_stays_with_it(world: World) -> None:
    """XCLAIM checks min-idle again on the server: between a page's XPENDING and its XCLAIM a live consumer
    may take an entry back (its own XCLAIM or XAUTOCLAIM); the page's rows still say idle, Redis does not."""
    ids = world.abandon([tweet(1), tweet(2)])
    rows = [PendingRow(*row) for row in pending_rows(world.client, world.stream, world.group)]
    world.client.xclaim(world.stream, world.group, "consumer-live", 0, [ids[0]])
    settings = settings_for(world.server, world.names)
    monitor_client = connect(settings)
    world.monitor_clients.append(monitor_client)
    keys = StreamKeys.from_settings(settings)
    config = PageSettings(keys, topology_of(monitor_client), settings.min_idle_ms, settings.MAX_DELIVERIES)
    channel = Channel()
    try:
        result = handle_page(channel, rows, config, WriteOrder(), 0)
    finally:
        channel.close()
    assert (1, 1) == (result.counts.claimed, result.counts.processed)
    assert {ids[0]} == pending_ids_of(world.client, world.stream, world.group, "consumer-live")
    assert {b"tweet:" + tweet_id(2)} == tweet_keys(world.client)


# 4. HSET tweet:<id> byte-exact, merging like the processor's HSET, then XACK only what was written.
def test_tweets_are_written_byte_exact_and_merged_like_the_processors_hset(world: World) -> None:
    binary = tweet(1, text="caf\xe9", user="jo")
    binary[binary.index(b"text") + 1] = b"\xff\xfe not utf-8 \x00 nul"
    repeated = [*tweet(2), b"text", b"the later one wins", b"user", b""]
    big = tweet(3, text="x" * 1_000_000)
    world.client.hset(b"tweet:1394000000000000002", b"retweets", b"7")  # written earlier, kept by HSET
    world.abandon([binary, repeated, big])
    summary = world.run()
    assert (3, 3, 0) == (summary.counts.processed, summary.counts.claimed, summary.counts.failed)
    assert expected_hash(binary) == hash_fields(world.client, b"tweet:1394000000000000001")
    assert {**expected_hash(repeated), b"retweets": b"7"} == hash_fields(
        world.client, b"tweet:1394000000000000002"
    )
    assert b"the later one wins" == expected_hash(repeated)[b"text"]
    assert expected_hash(big) == hash_fields(world.client, b"tweet:1394000000000000003")
    assert set() == world.pending()


def test_writes_are_pipelined_not_two_round_trips_per_message(world: World) -> None:
    world.abandon([tweet(n) for n in range(50)])
    with recorded_commands(world.client) as commands:
        world.run()
    assert 50 == len(named(commands, b"HSET"))
    assert 1 == len(named(commands, b"XACK"))  # one XACK for the page's written entries


def test_an_entry_whose_write_fails_is_not_acknowledged(world: World) -> None:
    ids = world.abandon([tweet(n) for n in range(4)])
    world.client.config_set("maxmemory", 1)  # every HSET now fails with OOM; XCLAIM and XACK still work
    try:
        failed = world.run()
    finally:
        world.client.config_set("maxmemory", 0)
    assert (4, 0, 4) == (failed.counts.claimed, failed.counts.processed, failed.counts.failed)
    assert set(ids) == pending_ids_of(world.client, world.stream, world.group, "monitoring_app")
    assert set() == tweet_keys(world.client)
    age(world.client, world.stream, world.group, "monitoring_app", ids, IDLE_ENOUGH_MS)
    retried = world.run()
    assert (4, 0) == (retried.counts.processed, retried.counts.failed)
    assert set() == world.pending()


# 5. Entries deleted from the stream while pending.
def test_deleted_entries_are_acknowledged_and_counted_never_confused_with_fresh_ones(world: World) -> None:
    ids = world.abandon([tweet(n) for n in range(6)])
    fresh = world.abandon([tweet(n) for n in range(6, 8)], consumer="consumer-live", aged=False)
    world.client.xdel(world.stream, ids[1], ids[4], fresh[0])  # fresh[0]: deleted but not idle
    summary = world.run()
    assert (4, 2) == (summary.counts.processed, summary.counts.deleted)
    assert set(fresh) == world.pending()  # the live processor still owns both of its entries
    assert {b"tweet:" + tweet_id(n) for n in (0, 2, 3, 5)} == tweet_keys(world.client)
    assert [] == dead_letters(world.client, world.keys.dead_letter)
    follow_up = world.run()
    assert (2, 0, 0) == (follow_up.pending, follow_up.counts.claimed, follow_up.counts.deleted)


def test_a_page_of_only_deleted_entries_is_cleared(world: World) -> None:
    ids = world.abandon([tweet(n) for n in range(3)])
    world.client.xdel(world.stream, *ids)
    summary = world.run()
    assert (3, 0, 3) == (summary.pending, summary.counts.processed, summary.counts.deleted)
    assert set() == world.pending()


# 6 and 7. No usable id, too many deliveries, a write that can never succeed: dead-lettered, once.
def test_entries_without_a_usable_id_are_never_written_to_a_tweet_key(world: World) -> None:
    no_id = [b"text", b"hello", b"user", b"jo"]
    empty_id = tweet(1, id="")
    ids = world.abandon([no_id, empty_id, tweet(2)])
    summary = world.run()
    assert (1, 2) == (summary.counts.processed, summary.counts.dead_lettered)
    assert {b"tweet:1394000000000000002"} == tweet_keys(world.client)
    letters = dead_letters(world.client, world.keys.dead_letter)
    assert [(b"missing-id", ids[0], no_id), (b"missing-id", ids[1], empty_id)] == [
        (meta[b"dlq:reason"], meta[b"dlq:original-id"], original) for meta, original in letters
    ]
    assert set() == world.pending()


def test_an_entry_delivered_more_than_max_deliveries_is_dead_lettered(world: World) -> None:
    ids = world.abandon([tweet(1), tweet(2), tweet(3)])
    set_deliveries(world.client, world.stream, world.group, PROCESSOR, [ids[0]], 11)
    set_deliveries(world.client, world.stream, world.group, PROCESSOR, [ids[1]], 10)
    age(world.client, world.stream, world.group, PROCESSOR, ids, IDLE_ENOUGH_MS)
    summary = world.run(MAX_DELIVERIES=10)
    assert (2, 1) == (summary.counts.processed, summary.counts.dead_lettered)
    ((meta, original),) = dead_letters(world.client, world.keys.dead_letter)
    assert tweet(1) == original
    assert (b"max-deliveries", b"11", ids[0]) == (
        meta[b"dlq:reason"],
        meta[b"dlq:deliveries"],
        meta[b"dlq:original-id"],
    )
    assert b"tweet:1394000000000000001" not in tweet_keys(world.client)
    assert set() == world.pending()


def test_max_deliveries_zero_turns_the_rule_off(world: World) -> None:
    ids = world.abandon([tweet(1)])
    set_deliveries(world.client, world.stream, world.group, PROCESSOR, ids, 500)
    age(world.client, world.stream, world.group, PROCESSOR, ids, IDLE_ENOUGH_MS)
    assert 1 == world.run(MAX_DELIVERIES=0).counts.processed


def test_a_write_that_can_never_succeed_is_dead_lettered_with_the_error(world: World) -> None:
    world.client.set(b"tweet:1394000000000000001", b"not a hash")
    dup = [*tweet(1), b"text", b"second text"]
    ids = world.abandon([dup, tweet(2)])
    summary = world.run()
    assert (1, 1, 0) == (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed)
    ((meta, original),) = dead_letters(world.client, world.keys.dead_letter)
    assert dup == original  # every original field, repeated names and order included
    assert b"write-failed" == meta[b"dlq:reason"]
    assert meta[b"dlq:detail"].startswith(b"WRONGTYPE")
    assert b"not a hash" == world.client.get(b"tweet:1394000000000000001")
    assert ids[0] not in world.pending()


def test_a_dead_letter_carries_every_original_field_after_its_metadata(world: World) -> None:
    hostile = [b"dlq:reason", b"forged", b"text", b"\xff", b"text", b"again"]  # no id, a reserved name
    (entry_id,) = world.abandon([hostile])
    world.run()
    ((meta, original),) = dead_letters(world.client, world.keys.dead_letter)
    assert hostile == original
    assert list(METADATA_FIELDS) == list(meta)
    assert {
        b"dlq:version": b"1",
        b"dlq:original-id": entry_id,
        b"dlq:stream": world.stream.encode(),
        b"dlq:group": world.group.encode(),
        b"dlq:reason": b"missing-id",
        b"dlq:consumer": b"monitoring_app",
    }.items() <= meta.items()


class TestTheDeadLetterMoveIsAtomic:
    """The Lua step acknowledges first and writes only if that removed the entry from the pending list."""

    def move(self, world: World, entry_id: bytes, consumer: str = "monitoring_app") -> int:
        script = world.client.register_script(MOVE_TO_DEAD_LETTER_LUA)
        keys = world.keys
        args = move_arguments(world.group, consumer, entry_id, "missing-id", 1, 0, "test", 0)
        reply = script(keys=[keys.stream, keys.dead_letter], args=list(args))  # type: ignore[arg-type]
        return parse_move_reply(reply)[0]

    def claim(self, world: World, ids: list[bytes]) -> None:
        world.client.xclaim(world.stream, world.group, "monitoring_app", 0, list[Any](ids))

    def test_a_repeated_move_writes_one_dead_letter(self, world: World) -> None:
        ids = world.abandon([[b"text", b"x"]])
        self.claim(world, ids)
        assert MoveOutcome.DEAD_LETTERED == self.move(world, ids[0])
        assert MoveOutcome.NOT_OURS == self.move(world, ids[0])
        assert 1 == len(dead_letters(world.client, world.keys.dead_letter))
        assert set() == world.pending()

    def test_an_entry_owned_by_another_consumer_is_left_alone(self, world: World) -> None:
        ids = world.abandon([[b"text", b"x"]])  # owned by the processor, not by the monitor
        assert MoveOutcome.NOT_OURS == self.move(world, ids[0])
        assert [] == dead_letters(world.client, world.keys.dead_letter)
        assert set(ids) == world.pending()

    def test_an_acknowledged_entry_is_not_dead_lettered(self, world: World) -> None:
        ids = world.abandon([[b"text", b"x"]])
        self.claim(world, ids)
        world.client.xack(world.stream, world.group, *ids)
        assert MoveOutcome.NOT_OURS == self.move(world, ids[0])
        assert [] == dead_letters(world.client, world.keys.dead_letter)

    def test_a_deleted_entry_is_acknowledged_without_a_dead_letter(self, world: World) -> None:
        ids = world.abandon([[b"text", b"x"]])
        self.claim(world, ids)
        world.client.xdel(world.stream, *ids)
        if set(ids) == world.pending():  # Redis < 7.0 keeps it pending after the claim
            assert MoveOutcome.DELETED == self.move(world, ids[0])
        assert [] == dead_letters(world.client, world.keys.dead_letter)
        assert set() == world.pending() or MoveOutcome.NOT_OURS == self.move(world, ids[0])


# 8. Time budget and message cap: a huge backlog is drained over successive invocations, tail included.
def blocked_from_the_first_ten_tweets(world: World) -> dict[str, Any]:
    """Settings for an ACL user who may not write tweet:<id> for tweets 0-9: their HSETs fail (NOPERM)."""
    world.client.execute_command(  # type: ignore[no-untyped-call]
        "ACL",
        "SETUSER",
        "monitor-limited",
        "reset",
        "on",
        ">limited-pw",
        "+@all",
        f"~{world.stream}",
        "~{" + world.stream + "}*",
        "~tweet:13940000000000000[1-9]?",
    )
    return {"REDIS_USERNAME": "monitor-limited", "REDIS_PASSWORD": "limited-pw"}


def test_the_message_cap_stops_an_invocation_and_the_next_continues_after_it(world: World) -> None:
    ids = world.abandon([tweet(n) for n in range(30)])
    blocked = blocked_from_the_first_ten_tweets(world)
    first = world.run(CYCLE_MAX_MESSAGES=10, RECLAIM_PAGE_SIZE=5, **blocked)
    assert (10, 10, "cap") == (first.counts.claimed, first.counts.failed, first.stopped_by)
    age(world.client, world.stream, world.group, "monitoring_app", ids[:10], IDLE_ENOUGH_MS)
    second = world.run(CYCLE_MAX_MESSAGES=10, RECLAIM_PAGE_SIZE=5, **blocked)
    # Without the cursor the failing head would take the whole cap every time and the tail would starve.
    assert 10 == second.counts.processed
    assert {b"tweet:" + tweet_id(n) for n in range(10, 20)} == tweet_keys(world.client)
    # The tail (20-29), then the end of the list; the invocation after that starts from the head again.
    later = [world.run(CYCLE_MAX_MESSAGES=10, RECLAIM_PAGE_SIZE=5) for _ in range(3)]
    assert [10, 0, 10] == [summary.counts.processed for summary in later]
    assert set() == world.pending()
    assert 30 == len(tweet_keys(world.client))


def test_the_time_budget_stops_claiming_new_pages(world: World) -> None:
    world.abandon([tweet(n) for n in range(25)])
    first = world.run(CYCLE_TIME_BUDGET_SEC=0.000_001, RECLAIM_PAGE_SIZE=10)
    assert (1, 10, "budget") == (first.pages, first.counts.processed, first.stopped_by)
    second = world.run(CYCLE_TIME_BUDGET_SEC=0.000_001, RECLAIM_PAGE_SIZE=10)
    third = world.run(CYCLE_TIME_BUDGET_SEC=0.000_001, RECLAIM_PAGE_SIZE=10)
    assert (10, 5) == (second.counts.processed, third.counts.processed)
    assert set() == world.pending()


def test_pages_handed_out_but_refused_are_where_the_next_invocation_starts(world: World) -> None:
    """The walker hands pages out ahead of the workers; when it stops (here the lease is lost before the
    fourth page), the pages handed out but not claimed are not passed over: the next invocation starts at
    the first of them. The first page is big enough to still be claiming when the lease is lost."""
    ids = world.abandon([tweet(n, text="x" * 8000) for n in range(1500)])
    settings = settings_for(world.server, world.names, RECLAIM_PAGE_SIZE=500)
    monitor_client = connect(settings)
    world.monitor_clients.append(monitor_client)
    renewals = iter([True, True])  # asked before the second and the third page; then the lease is gone
    sweep = Sweep(
        SweepPlan.for_stream(settings, StreamKeys.from_settings(settings)),
        topology_of(monitor_client),
        Limits(60.0, 1_000_000),
        time.monotonic(),
        lambda: False,
        lambda: next(renewals, False),
    )
    swept = sweep.walk(None)
    assert (StopReason.LEASE_LOST, 3) == (swept.stopped_by, swept.pages)
    if swept.counts.claimed:  # the first page, claimed before the lease was lost (it nearly always is)
        assert (500, ids[500]) == (swept.counts.processed, swept.next_start)
        assert set(ids[500:]) == world.pending()
    else:
        assert START == swept.next_start


def test_a_walk_that_started_mid_list_goes_to_the_end_and_the_next_starts_at_the_head(world: World) -> None:
    """No wrapping round within one invocation: it meets entries in stream order, so it writes them so."""
    ids = world.abandon([tweet(n) for n in range(20)])
    blocked = blocked_from_the_first_ten_tweets(world)
    world.run(CYCLE_MAX_MESSAGES=5, RECLAIM_PAGE_SIZE=5, **blocked)  # 0-4 fail and stay pending
    age(world.client, world.stream, world.group, "monitoring_app", ids[:5], IDLE_ENOUGH_MS)
    summary = world.run(RECLAIM_PAGE_SIZE=5)  # starts at 5 and reaches the end
    assert (15, "end") == (summary.counts.processed, summary.stopped_by)
    assert set(ids[:5]) == world.pending()
    again = world.run(RECLAIM_PAGE_SIZE=5)  # from the head
    assert (5, "end") == (again.counts.processed, again.stopped_by)
    assert set() == world.pending()


# 10. Only commands that exist in Redis 6.0.
def test_only_redis_60_commands_and_arguments_are_used(world: World) -> None:
    ids = world.abandon([tweet(n) for n in range(12)] + [[b"text", b"no id"]])
    world.client.xdel(world.stream, ids[3])
    with recorded_commands(world.client) as commands:
        world.run(RECLAIM_PAGE_SIZE=5, CYCLE_MAX_MESSAGES=7)
        world.run(RECLAIM_PAGE_SIZE=5)
    used = {args[0].upper() for args in commands}
    allowed = {
        b"XPENDING",
        b"XCLAIM",
        b"XACK",
        b"XRANGE",
        b"HSET",
        b"EVALSHA",
        b"EVAL",
        b"SCRIPT",
        b"GET",
        b"SET",
        b"DEL",
        b"CLIENT",
        b"HELLO",
        b"PING",
        b"AUTH",
        b"INFO",
    }
    assert used <= allowed
    assert {b"XPENDING", b"XCLAIM", b"XACK", b"HSET"} <= used
    for args in named(commands, b"XPENDING"):
        assert b"IDLE" not in [a.upper() for a in args]
        assert not any(a.startswith(b"(") for a in args[3:5])
    for args in named(commands, b"XCLAIM"):
        assert b"JUSTID" not in [a.upper() for a in args]  # the claim must count as a delivery


def test_a_stream_name_that_is_not_utf8_is_swept(redis_8: LocalRedis, client8: redis.Redis) -> None:
    name = b"tweets_stream:\xff\xfe"
    command(client8, "XGROUP", "CREATE", name, GROUP, "$", "MKSTREAM")
    abandon(client8, name, GROUP, [tweet(n) for n in range(100, 103)])  # type: ignore[arg-type]
    shard_backlog(client8, [2])
    settings = streams_settings(redis_8.address, "tweets_stream:*")
    summary = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert 5 == summary.counts.processed
    assert 5 == len(tweet_keys(client8))
    assert summary.streams is not None
    assert "tweets_stream:\\xff\\xfe" in summary.streams  # shown escaped


def test_the_cap_shortens_the_last_page_when_it_is_not_a_multiple_of_the_page_size(world: World) -> None:
    world.abandon([tweet(n) for n in range(30)])
    summary = world.run(CYCLE_MAX_MESSAGES=12, RECLAIM_PAGE_SIZE=5)
    assert (12, 12, 3, "cap") == (
        summary.counts.claimed,
        summary.counts.processed,
        summary.pages,
        summary.stopped_by,
    )
    assert 18 == len(world.pending())
