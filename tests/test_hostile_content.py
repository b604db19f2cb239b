"""Entries a buggy or hostile producer can write cannot wedge or exhaust the monitor: what one entry and one
page may cost is bounded, one entry's failure stays that entry's, poison is moved without being read, no
script blocks Redis for long, log lines are bounded, and the dead-letter tools read only what they show.

Most cases use lowered bounds (ENTRY_MAX_BYTES, PAGE_MAX_BYTES) so that the suite stays fast; one case runs
the command line under an address-space limit with the default bounds."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest
import redis

from handler.dev.backlog import IDLE_ENOUGH_MS, age, crash_after_reading
from handler.dev.host import APP_ROOT
from handler.logs import capture_logs, configure_logging
from handler.ops import dead_letter_tools
from handler.reclaim.dead_letter import is_part
from handler.reclaim.rules import PendingRow, claimable_ids
from handler.transport.connect import connect
from handler.transport.wire import RawReply, pack
from tests.cli import env_for
from tests.conftest import settings_for
from tests.pipeline import (
    command,
    dead_letters,
    expected_hash,
    hash_fields,
    pending_rows,
    set_deliveries,
    tweet,
    tweet_keys,
)
from tests.world import PROCESSOR, World

SMALL_BOUNDS = {"ENTRY_MAX_BYTES": 64 * 1024, "PAGE_MAX_BYTES": 256 * 1024}


def _many_fields(pairs: int, value: bytes = b"vv") -> list[bytes]:
    """An entry of `pairs` tiny field pairs and no id: a listpack keeps it in a few bytes per pair, Python
    in about forty."""
    return [part for n in range(pairs) for part in (b"%d" % n, value)]


def _produce_raw(server_address: str, stream: str, fields: list[bytes], copies: int) -> None:
    """XADD the same big entry `copies` times, packed once and written raw (redis-py would take minutes)."""
    host, port = server_address.rsplit(":", 1)
    data = pack((b"XADD", stream, b"*", *fields))
    with socket.create_connection((host, int(port))) as sock:
        for _ in range(copies):
            sock.sendall(data)
        received, want = b"", copies
        while received.count(b"\r\n") < 2 * want:  # `$<length>` and the ID, each on its line
            received += sock.recv(1 << 16)


def _abandon_between(world: World, big: list[list[bytes]], valid: int) -> tuple[list[bytes], list[bytes]]:
    """`valid` tweets around the `big` entries, all read by a processor that died: (big ids, valid ids)."""
    half = valid // 2
    before = world.abandon([tweet(n) for n in range(half)])
    middle = world.abandon(big)
    after = world.abandon([tweet(n) for n in range(half, valid)])
    return middle, before + after


def _key(n: int) -> bytes:
    """The tweet key tweet(n) is written to."""
    fields = tweet(n)
    return b"tweet:" + fields[fields.index(b"id") + 1]


def _the_dead_letter(world: World) -> tuple[dict[bytes, bytes], list[bytes]]:
    """The one dead letter in the dead-letter stream (whichever layout), as `dead-letter show` reads it."""
    entries = command(world.client, "XRANGE", world.keys.dead_letter, "-", "+")
    heads = [entry_id for entry_id, fields in entries if not is_part(list(fields))]
    assert len(heads) == 1, heads
    client = connect(settings_for(world.server, world.names))
    try:
        letter = dead_letter_tools.show_dead_letter(client, world.keys, heads[0])
    finally:
        client.close()
    assert letter is not None
    return letter.metadata, letter.original


def _deliveries(world: World) -> dict[bytes, int]:
    return {row[0]: row[3] for row in pending_rows(world.client, world.stream, world.group)}


@pytest.fixture
def slowlog(world8: World) -> Iterator[redis.Redis]:
    """SLOWLOG recording every command over 50 ms, restored afterwards."""
    client = world8.client
    before = str(client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"])
    client.config_set("slowlog-log-slower-than", 50_000)
    client.slowlog_reset()
    yield client
    client.config_set("slowlog-log-slower-than", before)


def _scripts_over_50_ms(client: redis.Redis) -> list[tuple[int, list[bytes]]]:
    return [
        (entry["duration"], entry["command"][:40])
        for entry in client.slowlog_get(128)
        if entry["command"].split(b" ", 1)[0].upper() in (b"EVAL", b"EVALSHA", b"FCALL")
    ]


def test_an_entry_past_max_deliveries_is_dead_lettered_without_being_read(world8: World) -> None:
    """The XPENDING row says it was delivered too often: it is claimed with JUSTID and moved as it is, even
    when reading it would be over every bound."""
    big = _many_fields(40_000)  # about 600 kB of RESP: over both lowered bounds
    (poison,), _valid = _abandon_between(world8, [big], 2)
    set_deliveries(world8.client, world8.stream, world8.group, PROCESSOR, [poison], 11)
    age(world8.client, world8.stream, world8.group, PROCESSOR, [poison], IDLE_ENOUGH_MS)
    summary = world8.run(**SMALL_BOUNDS)
    assert (summary.counts.processed, summary.counts.dead_lettered) == (2, 1)
    metadata, original = _the_dead_letter(world8)
    assert metadata[b"dlq:reason"] == b"max-deliveries"
    assert metadata[b"dlq:deliveries"] == b"11"
    assert original == big
    assert world8.pending() == set()
    assert {_key(n) for n in range(2)} == tweet_keys(world8.client)


def test_an_entry_over_the_entry_bound_is_dead_lettered_as_too_large_and_its_neighbours_are_written(
    world8: World, slowlog: redis.Redis
) -> None:
    big = _many_fields(40_000)
    (culprit,), _valid = _abandon_between(world8, [big], 6)
    summary = world8.run(**SMALL_BOUNDS)
    assert (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed) == (6, 1, 0)
    assert {_key(n) for n in range(6)} == tweet_keys(world8.client)
    for n in range(6):
        assert hash_fields(world8.client, _key(n)) == expected_hash(tweet(n))
    metadata, original = _the_dead_letter(world8)
    assert metadata[b"dlq:reason"] == b"too-large"
    assert metadata[b"dlq:original-id"] == culprit
    assert original == big
    assert world8.pending() == set()
    assert [] == _scripts_over_50_ms(slowlog)


def test_an_entry_over_the_entry_bound_is_too_large_also_when_its_page_is_under_the_page_bound(
    world8: World,
) -> None:
    """Whether an entry is too large is the entry's own size, not its neighbours': one entry over
    ENTRY_MAX_BYTES alone in a page that fits PAGE_MAX_BYTES is dead-lettered as too-large too, never
    written, as it is when a bigger page is read a few entries at a time."""
    big = [*_many_fields(10_000), b"id", b"too-big"]  # about 150 kB of RESP: over 64 kB, under 1 MiB
    (culprit,), _valid = _abandon_between(world8, [big], 2)
    summary = world8.run(ENTRY_MAX_BYTES=64 * 1024, PAGE_MAX_BYTES=1 << 20)
    assert (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed) == (2, 1, 0)
    assert b"tweet:too-big" not in tweet_keys(world8.client)
    metadata, original = _the_dead_letter(world8)
    assert (metadata[b"dlq:reason"], metadata[b"dlq:original-id"]) == (b"too-large", culprit)
    assert original == big
    assert world8.pending() == set()


def test_an_entry_just_over_the_entry_bound_is_too_large_also_when_its_page_is_read_narrowed(
    world8: World,
) -> None:
    """A page read a few entries at a time judges a reply over its bound only after a receive has passed it,
    so an entry less than a receive over ENTRY_MAX_BYTES may be read whole there; it is too large all the
    same. Its neighbours make the page's XCLAIM reply far over PAGE_MAX_BYTES, so the page is narrowed."""
    bound = 64 * 1024
    big = [b"id", b"just-over", b"text", b"x" * (bound + 4000)]  # over by less than a receive
    neighbours = [[b"id", b"near-%d" % n, b"text", b"y" * 20_000] for n in range(4)]
    middle, _valid = _abandon_between(world8, [*neighbours[:2], big, *neighbours[2:]], 2)
    summary = world8.run(ENTRY_MAX_BYTES=bound, PAGE_MAX_BYTES=bound)
    assert (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed) == (6, 1, 0)
    assert b"tweet:just-over" not in tweet_keys(world8.client)
    assert hash_fields(world8.client, b"tweet:near-3") == expected_hash(neighbours[3])
    metadata, _original = _the_dead_letter(world8)
    assert (metadata[b"dlq:reason"], metadata[b"dlq:original-id"]) == (b"too-large", middle[2])


def test_a_page_over_the_page_bound_is_narrowed_and_every_entry_is_handled(world8: World) -> None:
    """Each entry is under the entry bound, together they are over the page's: every one is still handled,
    none is charged a delivery for its neighbours."""
    bigs = [[*_many_fields(2000), b"id", b"big-%d" % n] for n in range(12)]  # ~30 kB of RESP each
    _big_ids, _valid = _abandon_between(world8, bigs, 4)
    summary = world8.run(**SMALL_BOUNDS)
    assert (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed) == (16, 0, 0)
    assert hash_fields(world8.client, b"tweet:big-3") == expected_hash(bigs[3])
    assert world8.pending() == set()


def test_moving_a_huge_dead_letter_blocks_redis_in_no_script_for_long(
    world8: World, slowlog: redis.Redis
) -> None:
    """A poison entry of 400,000 fields (about 1 s for one Lua call to copy) reaches the dead-letter stream
    whole, with no script of the monitor over 50 ms, and the monitor never holds it whole."""
    big = _many_fields(400_000, b"v")
    _produce_raw(world8.server.address, world8.stream, big, 1)
    crash_after_reading(world8.client, world8.stream, world8.group, PROCESSOR, 1)
    (poison,) = world8.pending()
    set_deliveries(world8.client, world8.stream, world8.group, PROCESSOR, [poison], 11)
    age(world8.client, world8.stream, world8.group, PROCESSOR, [poison], IDLE_ENOUGH_MS)
    cycle = world8.cycle()
    tracemalloc.start()
    try:
        summary = cycle.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.counts.dead_lettered == 1
    assert [] == _scripts_over_50_ms(slowlog)
    assert peak < 20_000_000, peak  # read whole, its 800,000 values alone would take about 40 MB
    metadata, original = _the_dead_letter(world8)
    assert (metadata[b"dlq:reason"], original) == (b"max-deliveries", big)
    assert world8.pending() == set()


def test_a_key_over_the_servers_limit_fails_alone_and_is_charged_alone(world8: World) -> None:
    """`tweet:<id>` over proto-max-bulk-len makes Redis drop the connection: the page is narrowed, its
    neighbours are written, only the culprit keeps its delivery, and past MAX_DELIVERIES it is
    dead-lettered."""
    client = world8.client
    before = str(client.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    limit = 1024 * 1024
    client.config_set("proto-max-bulk-len", limit)
    try:
        culprit_fields = [b"id", b"x" * (limit - 3), b"text", b"over the limit as a key"]
        (culprit,), _valid = _abandon_between(world8, [culprit_fields], 2)
        bounds = {"ENTRY_MAX_BYTES": 4 * limit, "MAX_DELIVERIES": 1}
        first = world8.run(**bounds)
        assert first.counts.processed == 2
        assert {_key(0), _key(1)} == tweet_keys(client)
        assert _deliveries(world8) == {culprit: 2}
        assert dead_letters(client, world8.keys.dead_letter) == []
        age(
            client,
            world8.stream,
            world8.group,
            world8.names["MONITORING_CONSUMER_NAME"],
            [culprit],
            IDLE_ENOUGH_MS,
        )
        world8.run(**bounds)  # delivered twice before: past MAX_DELIVERIES=1, moved unread
        metadata, original = _the_dead_letter(world8)
        assert metadata[b"dlq:reason"] == b"max-deliveries"
        assert original == culprit_fields
        assert world8.pending() == set()
    finally:
        client.config_set("proto-max-bulk-len", before)


def test_a_refused_write_of_a_huge_key_logs_a_bounded_line(world8: World) -> None:
    client = world8.client
    world8.abandon([tweet(n, id="i" * 200_000 + str(n)) for n in range(3)])
    before = str(client.config_get("maxmemory")["maxmemory"])
    client.config_set("maxmemory", 1)  # every write refused with OOM
    try:
        with capture_logs("bounded-lines") as lines:
            configure_logging(logging.INFO, info_to_stdout=False)
            summary = world8.run()
    finally:
        client.config_set("maxmemory", before)
    assert summary.counts.failed == 3
    assert lines and max(map(len, lines)) <= 2000, max(map(len, lines))
    assert any("OOM" in line for line in lines)


def test_a_huge_log_message_is_cut_in_the_hosts_logs() -> None:
    with capture_logs("cut") as lines:
        configure_logging(logging.INFO, info_to_stdout=False)
        for _ in range(3):
            logging.getLogger("handler.test").warning("value %r", b"x" * 1_000_000)
    assert len(lines) == 3 and all(len(line) <= 2000 for line in lines)


def test_dead_letter_list_and_count_read_only_what_they_show(world8: World) -> None:
    """Four dead letters of about 1.6 MB of RESP each: listing and counting them holds a few kB each."""
    big = _many_fields(100_000)
    _produce_raw(world8.server.address, world8.stream, big, 4)
    crash_after_reading(world8.client, world8.stream, world8.group, PROCESSOR, 4)
    age(world8.client, world8.stream, world8.group, PROCESSOR, list(world8.pending()), IDLE_ENOUGH_MS)
    assert (
        world8.run(ENTRY_MAX_BYTES=64 * 1024 * 1024, PAGE_MAX_BYTES=64 * 1024 * 1024).counts.dead_lettered
        == 4
    )
    settings = settings_for(world8.server, world8.names)
    client = connect(settings)
    keys = world8.keys
    try:
        tracemalloc.start()
        rows = dead_letter_tools.list_dead_letters(client, keys, 20, newest_first=False)
        count = dead_letter_tools.count_dead_letters(client, keys)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        client.close()
    assert len(rows) == 4 and count == 4
    assert all(row.field_count == 100_000 and row.metadata[b"dlq:reason"] == b"missing-id" for row in rows)
    assert peak < 6_000_000, peak  # two receive buffers of 1 MB; read whole, about 36 MB


def test_the_monitor_stays_under_its_memory_bound_whatever_the_entries(world8: World) -> None:
    """1,000 entries of 20,000 two-byte pairs between six valid tweets (the page's XCLAIM reply alone needs
    about 1.7 GB): under a 1.5 GB address-space limit the command line writes the tweets, dead-letters the
    rest and exits 0."""
    half = [tweet(n) for n in range(3)]
    world8.abandon(half)
    _produce_raw(world8.server.address, world8.stream, _many_fields(20_000), 1000)
    crash_after_reading(world8.client, world8.stream, world8.group, PROCESSOR, 1000)
    world8.abandon([tweet(n) for n in range(3, 6)])
    age(world8.client, world8.stream, world8.group, PROCESSOR, list(world8.pending()), IDLE_ENOUGH_MS)
    env = env_for(world8.server, world8.names)
    started = time.monotonic()
    done = subprocess.run(
        ["prlimit", f"--as={1_500_000_000}", sys.executable, "-m", "handler", "reclaim"],
        env=env,
        cwd=APP_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {_key(n) for n in range(6)} == tweet_keys(world8.client)
    assert world8.pending() == set(), time.monotonic() - started


def test_poison_deleted_while_pending_is_counted_as_deleted(world: World) -> None:
    """Past MAX_DELIVERIES and deleted from the stream: acknowledged and counted as deleted, on every
    version (from 7.0 XCLAIM ... JUSTID drops it; before, it comes back and the move acknowledges it)."""
    (poison,) = world.abandon([_many_fields(5)])
    set_deliveries(world.client, world.stream, world.group, PROCESSOR, [poison], 11)
    age(world.client, world.stream, world.group, PROCESSOR, [poison], IDLE_ENOUGH_MS)
    world.client.xdel(world.stream, poison)
    summary = world.run()
    assert (summary.counts.deleted, summary.counts.dead_lettered) == (1, 0)
    assert world.pending() == set()


def test_a_huge_entry_acknowledged_while_the_page_is_claimed_is_not_read(
    world8: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processor acknowledges a huge entry between the monitor's XPENDING and its XCLAIM: XCLAIM skips
    it, and the monitor asks whether it is still in the stream without reading it whole."""
    (valid,) = world8.abandon([tweet(0)])
    _produce_raw(world8.server.address, world8.stream, _many_fields(800_000, b"v"), 1)
    crash_after_reading(world8.client, world8.stream, world8.group, PROCESSOR, 1)
    (big,) = world8.pending() - {valid}
    age(world8.client, world8.stream, world8.group, PROCESSOR, [big], IDLE_ENOUGH_MS)

    def processor_finishes_it_meanwhile(rows: list[PendingRow], min_idle_ms: int) -> list[bytes]:
        ids = claimable_ids(rows, min_idle_ms)
        world8.client.xack(world8.stream, world8.group, big)
        return ids

    monkeypatch.setattr("handler.reclaim.page.claimable_ids", processor_finishes_it_meanwhile)
    cycle = world8.cycle(**SMALL_BOUNDS)
    tracemalloc.start()
    try:
        summary = cycle.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (summary.counts.processed, summary.counts.deleted, summary.counts.dead_lettered) == (1, 0, 0)
    assert world8.pending() == set()
    assert peak < 20_000_000, peak  # read whole, its 1,600,000 values alone would take about 80 MB


def test_redis_stalling_while_a_huge_dead_letter_is_relayed_is_a_timeout_like_any_other(
    world8: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stops answering (stopped for 1.6 s, REDIS_TIMEOUT_SEC=1) just as the relay starts reading the
    entry: a timeout, retried on fresh connections, and the entry is dead-lettered once."""
    (valid,) = world8.abandon([tweet(0)])
    big = _many_fields(400_000, b"v")
    _produce_raw(world8.server.address, world8.stream, big, 1)
    crash_after_reading(world8.client, world8.stream, world8.group, PROCESSOR, 1)
    (poison,) = world8.pending() - {valid}
    set_deliveries(world8.client, world8.stream, world8.group, PROCESSOR, [poison], 11)
    age(world8.client, world8.stream, world8.group, PROCESSOR, [poison], IDLE_ENOUGH_MS)
    process = world8.server.process
    assert process is not None
    signal_redis = process.send_signal
    stalled: list[threading.Timer] = []

    class StallingOnce(RawReply):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__(sock)
            if not stalled:
                signal_redis(signal.SIGSTOP)
                stalled.append(threading.Timer(1.6, signal_redis, (signal.SIGCONT,)))
                stalled[0].start()

    monkeypatch.setattr("handler.reclaim.dead_letter.RawReply", StallingOnce)
    try:
        summary = world8.run(REDIS_TIMEOUT_SEC=1, **SMALL_BOUNDS)
    finally:
        for timer in stalled:
            timer.join()
    assert stalled
    assert (summary.counts.processed, summary.counts.dead_lettered, summary.counts.failed) == (1, 1, 0)
    metadata, original = _the_dead_letter(world8)
    assert (metadata[b"dlq:original-id"], original) == (poison, big)
    assert world8.pending() == set()


def test_poison_with_a_value_over_the_servers_limit_is_still_dead_lettered(world8: World) -> None:
    """A value over proto-max-bulk-len (the limit lowered after it was written, or the entry built by a
    script) cannot be relayed: Redis drops the connection at the dead letter's XADD. Past MAX_DELIVERIES the
    entry is still moved, by one script, byte-exact, and its neighbour written."""
    client = world8.client
    before = str(client.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    limit = 1024 * 1024
    culprit_fields = [b"id", b"over", b"text", b"y" * (2 * limit)]
    try:
        (culprit,), _valid = _abandon_between(world8, [culprit_fields], 2)
        client.config_set("proto-max-bulk-len", limit)
        set_deliveries(client, world8.stream, world8.group, PROCESSOR, [culprit], 11)
        age(client, world8.stream, world8.group, PROCESSOR, [culprit], IDLE_ENOUGH_MS)
        summary = world8.run()
        assert (summary.counts.processed, summary.counts.dead_lettered) == (2, 1), summary.counts
        metadata, original = _the_dead_letter(world8)
        assert (metadata[b"dlq:reason"], original) == (b"max-deliveries", culprit_fields)
        assert world8.pending() == set()
    finally:
        client.config_set("proto-max-bulk-len", before)


def test_an_entry_over_the_servers_reply_limit_fails_alone_and_is_charged_alone(world8: World) -> None:
    """A client-output-buffer-limit under one valid entry's size (within ENTRY_MAX_BYTES) makes Redis drop
    the connection at every reply that carries it: its neighbours are still written, only it keeps its
    delivery, and past MAX_DELIVERIES it is dead-lettered."""
    client = world8.client
    before = str(client.config_get("client-output-buffer-limit")["client-output-buffer-limit"])
    culprit_fields = [b"id", b"big", b"text", b"y" * (3 << 20)]
    try:
        (culprit,), _valid = _abandon_between(world8, [culprit_fields], 4)
        client.config_set("client-output-buffer-limit", "normal 1mb 0 0")
        first = world8.run(MAX_DELIVERIES=1)
        assert (first.counts.processed, first.counts.failed) == (4, 1), first.counts
        assert {_key(n) for n in range(4)} == tweet_keys(client)
        assert _deliveries(world8) == {culprit: 2}
        monitor = world8.names["MONITORING_CONSUMER_NAME"]
        age(client, world8.stream, world8.group, monitor, [culprit], IDLE_ENOUGH_MS)
        second = world8.run(MAX_DELIVERIES=1)  # delivered twice: moved unread
        assert second.counts.dead_lettered == 1, second.counts
    finally:
        client.config_set("client-output-buffer-limit", before)
    metadata, original = _the_dead_letter(world8)
    assert (metadata[b"dlq:reason"], original) == (b"max-deliveries", culprit_fields)
    assert world8.pending() == set()
