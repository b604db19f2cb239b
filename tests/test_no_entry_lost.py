"""No entry lost: each way an entry could be lost, misplaced or wrongly dead-lettered, reproduced against real
servers.

1. The dead-letter move writes before it acknowledges: an entry too big for one Lua call, a dead-letter key
   of the wrong type, or Redis out of memory leave the entry pending (or dead-lettered whole), never gone.
2. A connection with replies still unread is closed, never handed back to the pool.
3. Two entries for one tweet in different pages end as HSET(older) then HSET(later) would leave them.
4. The monitor's own refused attempts give their delivery back, so an outage does not dead-letter tweets.
5. Dead letters are kept unless a cap is set, and every trim is counted and said.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from redis.connection import ConnectionPool

from handler.dev.backlog import with_raw_replies as raw_client
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, STREAM
from handler.metrics import Metrics
from handler.ops.dead_letter_tools import list_dead_letters, show_dead_letter
from handler.ops.status import gather_status
from handler.reclaim.cycle import ReclaimCycle
from handler.reclaim.give_back import give_back_command
from handler.reclaim.streams import StreamsCycle
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection, connect
from handler.transport.wire import Channel, pack
from tests import pipeline
from tests.backlogs import DEAD_LETTER
from tests.cli import cli
from tests.conftest import settings_for
from tests.pipeline import (
    age,
    command,
    create_group,
    dead_letters,
    expected_hash,
    hash_fields,
    pending_rows,
    set_deliveries,
    tweet,
    tweet_keys,
)
from tests.test_cluster import cluster_settings
from tests.world import PROCESSOR, World

BIG_PAIRS = 5_000  # with the nine metadata pairs, past the ~8,000 values one Lua unpack() can pass


def big_tweet(number: int) -> list[bytes]:
    fields = tweet(number)
    for index in range(BIG_PAIRS):
        fields += [b"field-%05d" % index, b"value %d" % index]
    return fields


def poison(world: World, entries: list[list[bytes]], deliveries: int = 20) -> list[bytes]:
    """Entries a crashed processor left behind, delivered more often than MAX_DELIVERIES (10)."""
    ids = world.abandon(entries)
    set_deliveries(world.client, world.stream, world.group, PROCESSOR, ids, deliveries)
    age(world.client, world.stream, world.group, PROCESSOR, ids, 60_000)
    return ids


# 1. The dead-letter move.
def test_an_entry_too_big_for_one_lua_call_is_dead_lettered_whole(world: World) -> None:
    big = big_tweet(1)
    (big_id, second_id) = poison(world, [big, tweet(2)])
    summary = world.run(MAX_DELIVERIES=10)
    assert (2, 2, 0) == (summary.counts.claimed, summary.counts.dead_lettered, summary.counts.failed)
    assert set() == world.pending()
    letters = list_dead_letters(raw_client(world.client), world.keys, 10, newest_first=False)
    assert [big_id, second_id] == [letter.metadata[b"dlq:original-id"] for letter in letters]
    shown = show_dead_letter(raw_client(world.client), world.keys, letters[0].entry_id.decode())
    assert shown is not None
    assert big == shown.original  # every field, in order


def test_a_big_dead_letter_is_shown_and_replayed_exactly(world8: World) -> None:
    world = world8
    big = [*big_tweet(1), b"text", b"a repeated name, kept in place"]
    poison(world, [big])
    assert 1 == world.run(MAX_DELIVERIES=10).counts.dead_lettered
    (letter,) = list_dead_letters(raw_client(world.client), world.keys, 10, newest_first=False)
    shown = cli(world, "dead-letter", "show", letter.entry_id.decode(), "--json")
    assert 0 == shown.returncode, shown.stderr
    assert len(big) // 2 == json.loads(shown.stdout)["fields"]
    replayed = cli(world, "dead-letter", "replay", "--all")
    assert 0 == replayed.returncode, replayed.stderr
    assert "replayed 1 of 1" in replayed.stdout
    entries = command(world.client, "XRANGE", world.stream, "-", "+")
    assert big == list(entries[-1][1])  # exactly the fields it had: order and the repeated name kept
    assert [] == list_dead_letters(raw_client(world.client), world.keys, 10, newest_first=False)
    assert 0 == world.client.dbsize() - len(world.client.keys(world.stream + "*")) - len(
        world.client.keys("{" + world.stream + "}*")
    )  # no key left behind by the dead letter's parts


def test_replay_skips_a_continued_dead_letter_missing_parts_and_goes_on(world8: World) -> None:
    """A part trimmed or deleted by hand: that dead letter stays for a person; the others go back; and
    `purge --all` then removes everything, stray parts included."""
    world = world8
    poison(world, [big_tweet(1), tweet(2), big_tweet(3)])
    assert 3 == world.run(MAX_DELIVERIES=10).counts.dead_lettered
    entries = command(world.client, "XRANGE", world.keys.dead_letter, "-", "+")
    first_part = next(entry_id for entry_id, fields in entries if fields[0] == b"dlq:part-of")
    world.client.xdel(world.keys.dead_letter, first_part)
    replayed = cli(world, "dead-letter", "replay", "--all")
    assert 0 == replayed.returncode, replayed.stderr
    assert "replayed 2 of 3" in replayed.stdout
    assert "not replayed" in replayed.stderr
    purged = cli(world, "dead-letter", "purge", "--all", "--yes")
    assert 0 == purged.returncode, purged.stderr
    assert 0 == world.client.xlen(world.keys.dead_letter)


def test_replay_goes_on_while_producers_write_to_the_main_stream(world8: World) -> None:
    world = world8
    poison(world, [[b"text", b"no id", b"n", b"%d" % n] for n in range(300)])
    assert 300 == world.run().counts.dead_lettered
    stop = threading.Event()

    def produce() -> None:
        with redis.Redis(port=world.server.port) as producer:
            while not stop.is_set():
                producer.xadd(world.stream, {b"id": b"1", b"text": b"busy"})

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        replayed = cli(world, "dead-letter", "replay", "--all")
    finally:
        stop.set()
        producer.join()
    assert 0 == replayed.returncode, replayed.stderr
    assert "replayed 300 of 300" in replayed.stdout


def test_a_dead_letter_key_of_the_wrong_type_leaves_the_entry_pending(world: World) -> None:
    world.client.set(world.keys.dead_letter, b"not a stream")
    ids = poison(world, [[b"text", b"no id here"], tweet(2)])  # both delivered too often
    summary = world.run()
    assert (0, 0, 2) == (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed)
    assert set(ids) == world.pending()  # still there for a later cycle, never lost
    assert {20} == {row[3] for row in pending_rows(world.client, world.stream, world.group)}  # given back


def test_an_entry_moved_by_one_script_stays_pending_when_its_dead_letter_is_refused(world: World) -> None:
    """An entry read whole and small is moved by one script (not relayed), which must write the dead letter
    before it acknowledges: Redis does not roll a script back, so an XACK before a refused XADD would
    leave the entry in neither stream."""
    world.client.set(world.keys.dead_letter, b"not a stream")
    ids = world.abandon([[b"text", b"no id here"], tweet(2)])
    summary = world.run()
    assert (1, 0, 1) == (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed)
    assert {ids[0]} == world.pending()
    assert b"not a stream" == world.client.get(world.keys.dead_letter)


def test_check_names_a_dead_letter_key_of_the_wrong_type(world8: World) -> None:
    world8.client.set(world8.keys.dead_letter, b"not a stream")
    done = cli(world8, "check")
    assert 1 == done.returncode
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert world8.keys.dead_letter in line
    assert "string" in line


@contextmanager
def out_of_memory(client: redis.Redis) -> Iterator[None]:
    """Redis refuses every write that needs memory (maxmemory reached, noeviction)."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", 0)


def test_a_dead_letter_refused_for_memory_leaves_the_entry_pending_and_says_why(world8: World) -> None:
    world = world8
    ids = poison(world, [[b"text", b"no id here"]])  # made before Redis runs out of memory
    settings = settings_for(world.server, world.names)
    connection = RedisConnection(settings)
    metrics = Metrics()
    try:
        with out_of_memory(world.client):
            summary = StreamsCycle(connection, settings).run()
            status = gather_status(raw_client(world.client), world.keys, dead_letter_warn_at=10_000)
        metrics.observe(summary, world.stream)
    finally:
        connection.close()
    assert (0, 1) == (summary.counts.dead_lettered, summary.counts.failed)
    assert set(ids) == world.pending()
    refusals = metrics.registry.get_sample_value(
        "tweets_monitor_refused_entries_total",
        {"stream": world.stream, "step": "dead-letter", "reason": "OOM"},
    )
    assert 1 == refusals
    assert any("OOM" in warning for warning in status.warnings), status.warnings


# 2. A connection with replies outstanding is never reused.
@pytest.fixture
def second_server() -> Iterator[LocalRedis]:
    server = LocalRedis(BINARIES["8.2"](), extra_args=["--enable-debug-command", "yes"])  # DEBUG SLEEP
    server.start()
    yield server
    server.cleanup()


def test_a_connection_with_unread_replies_is_closed_not_returned_to_the_pool(
    redis_8: LocalRedis, second_server: LocalRedis
) -> None:
    """One node's connection fails while another node's replies are still on their way (as on a cluster):
    the second connection must not go back to the pool, or a later command reads the stale replies."""
    failing, slow = ConnectionPool(port=redis_8.port), ConnectionPool(port=second_server.port)
    attempts: list[int] = []

    def step(channel: Channel) -> None:
        attempts.append(1)
        if len(attempts) > 1:
            return
        waiting = channel.wire(slow)
        waiting.send(pack((b"DEBUG", b"SLEEP", b"0.5")) + pack((b"ECHO", b"stale")), 2)
        broken = channel.wire(failing)
        (own_id,) = broken.call([pack((b"CLIENT", b"ID"))], 1)
        broken.send(pack((b"CLIENT", b"KILL", b"ID", own_id, b"SKIPME", b"no")), 1)
        broken.read(2)  # ":1", then the server closes it: a connection error, `waiting`'s replies unread

    try:
        Channel().run(step)
        assert 2 == len(attempts)  # retried once, on fresh connections
        fresh = Channel()
        try:
            (reply,) = fresh.wire(slow).call([pack((b"ECHO", b"fresh"))], 1)
        finally:
            fresh.close()
        assert b"fresh" == reply
    finally:
        failing.disconnect()
        slow.disconnect()


# 3. The later entry wins.
def test_the_later_of_two_entries_for_one_tweet_wins_across_pages(world8: World) -> None:
    """On a real server; the interleavings of the pages' writes are driven in test_write_order.py."""
    world = world8
    older = tweet(1, text="older " + "x" * 2_000_000, location="only in the older")
    later = [b"id", tweet(1)[3], b"text", b"later", b"user", b"later user"]
    world.abandon([older, *[tweet(n) for n in range(2, 6)], later])
    summary = world.run(RECLAIM_PAGE_SIZE=1)
    assert 6 == summary.counts.processed
    expected = {**expected_hash(older), **expected_hash(later)}
    assert expected == hash_fields(world.client, b"tweet:" + tweet(1)[3])


# 4. Refused attempts do not spend the delivery budget.
def test_an_outage_of_refused_writes_does_not_dead_letter_valid_tweets(world: World) -> None:
    """A user without +hset for six cycles (MAX_DELIVERIES=3), then fixed: every tweet is written."""
    user = "monitor-" + world.stream[-10:]
    world.client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-hset"])
    try:
        world.abandon([tweet(n) for n in range(5)])
        for _ in range(6):
            refused = world.run(
                REDIS_USERNAME=user, REDIS_PASSWORD="pw", MAX_DELIVERIES=3, MIN_IDLE_TIME_SEC=0
            )
            assert (5, 0, 5) == (refused.counts.claimed, refused.counts.dead_lettered, refused.counts.failed)
        world.client.acl_setuser(user, enabled=True, commands=["+hset"])  # the permission comes back
        fixed = world.run(REDIS_USERNAME=user, REDIS_PASSWORD="pw", MAX_DELIVERIES=3, MIN_IDLE_TIME_SEC=0)
    finally:
        world.client.acl_deluser(user)
    assert (5, 0) == (fixed.counts.processed, fixed.counts.dead_lettered)
    assert 5 == len(tweet_keys(world.client))


def test_a_delivery_is_given_back_only_while_the_monitor_still_holds_the_entry(world8: World) -> None:
    """The give-back script runs after the monitor's attempt was refused; a processor may have claimed the
    entry meanwhile: that entry keeps its owner and its count, the monitor's own gets its count back."""
    world, keys = world8, world8.keys
    ours, theirs = world.abandon([tweet(1), tweet(2)])  # delivered once, to the processor
    for entry_id in (ours, theirs):  # the monitor's claim: a second delivery
        command(world.client, "XCLAIM", world.stream, world.group, keys.consumer, 0, entry_id)
    command(world.client, "XCLAIM", world.stream, world.group, "processor-2", 0, theirs)  # a third, since
    pool, channel = ConnectionPool(port=world.server.port), Channel()
    try:
        (given,) = channel.wire(pool).call([give_back_command(keys, [(ours, 1), (theirs, 1)])], 1)
    finally:
        channel.close()
        pool.disconnect()
    rows = {row[0]: row for row in pending_rows(world.client, world.stream, world.group)}
    assert 1 == given
    assert (keys.consumer.encode(), 1) == (rows[ours][1], rows[ours][3])
    assert (b"processor-2", 3) == (rows[theirs][1], rows[theirs][3])


# 5. Dead letters are never evicted silently.
def test_dead_letters_are_kept_by_default(world8: World) -> None:
    """No cap unless one is set (0: unbounded), and none hidden in the move: more dead letters than any
    page, batch or sample count the code uses are all kept."""
    assert 0 == MonitorSettings.model_fields["DEAD_LETTER_MAXLEN"].default
    world = world8
    count = 30_000
    pipe = world.client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(world.stream, {b"text": b"no id %d" % n})
    pipe.execute()
    world.client.execute_command(  # type: ignore[no-untyped-call]
        "XREADGROUP", "GROUP", world.group, PROCESSOR, "COUNT", count, "STREAMS", world.stream, ">"
    )
    ids = [entry_id for entry_id, _ in command(world.client, "XRANGE", world.stream, "-", "+")]
    age(world.client, world.stream, world.group, PROCESSOR, ids, 60_000)
    total = 0
    for _ in range(10):
        summary = world.run(CYCLE_TIME_BUDGET_SEC=60)
        total += summary.counts.dead_lettered
        if not world.pending():
            break
    assert (count, count) == (total, world.client.xlen(world.keys.dead_letter))


def test_every_trim_of_capped_dead_letters_is_counted_and_said(
    world8: World, caplog: pytest.LogCaptureFixture
) -> None:
    world = world8
    poison(world, [[b"text", b"no id", b"n", b"%d" % n] for n in range(600)])
    settings = settings_for(world.server, world.names, DEAD_LETTER_MAXLEN=100)
    connection = RedisConnection(settings)
    metrics = Metrics()
    try:
        summary = StreamsCycle(connection, settings).run()
        metrics.observe(summary, world.stream)
    finally:
        connection.close()
    left = world.client.xlen(world.keys.dead_letter)
    trimmed = metrics.registry.get_sample_value(
        "tweets_monitor_dead_letters_trimmed_total", {"stream": world.stream}
    )
    assert 600 == summary.counts.dead_lettered
    assert 600 - left == trimmed
    assert any(f"trimmed {600 - left:,} dead letters" in message for message in caplog.messages)


def test_status_warns_from_dead_letter_warn_at(world8: World) -> None:
    poison(world8, [[b"text", b"no id", b"n", b"%d" % n] for n in range(30)])
    world8.run()
    status = gather_status(raw_client(world8.client), world8.keys, dead_letter_warn_at=20)
    assert any("30 dead letters" in warning for warning in status.warnings), status.warnings


def test_a_write_no_replica_confirmed_is_not_also_dead_lettered() -> None:
    """At the MAX_DELIVERIES boundary on a cluster: a write reaches its master, but no replica confirms it,
    so the entry stays pending. Had that attempt spent a delivery, the next cycle would dead-letter a tweet
    that is already written (both written and dead-lettered); with the delivery given back it is written
    again and acknowledged."""
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=1) as cluster:
        client = cluster.client()
        create_group(client, STREAM, GROUP)
        entries = [tweet(n) for n in range(60)]
        ids = pipeline.abandon(client, STREAM, GROUP, entries)
        set_deliveries(client, STREAM, GROUP, "consumer-crashed", ids, 10)  # = MAX_DELIVERIES: still written
        age(client, STREAM, GROUP, "consumer-crashed", ids, 60_000)
        stream_master = cluster.master_of(STREAM)
        victim = next(node for node in cluster.masters if node is not stream_master)
        frozen = cluster.replica_of(victim)
        settings = cluster_settings(cluster, MIN_IDLE_TIME_SEC="0", MAX_DELIVERIES="10")
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            monitor = connect(settings)
            first = ReclaimCycle(RedisConnection(settings, monitor), settings).run()
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        monitor.close()
        # About a third of the tweets live on the frozen replica's master.
        assert first.counts.failed > 5, first
        assert {10} == {row[3] for row in pending_rows(client, STREAM, GROUP)}  # given back
        cluster._wait_until(cluster._ready, "the replica to catch up")
        monitor = connect(settings)
        second = ReclaimCycle(RedisConnection(settings, monitor), settings).run()
        monitor.close()
        assert (first.counts.failed, 0) == (second.counts.processed, second.counts.dead_lettered)
        assert [] == dead_letters(client, DEAD_LETTER)
        for fields in entries:
            assert expected_hash(fields) == hash_fields(client, b"tweet:" + fields[3])
        client.close()
