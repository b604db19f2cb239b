"""The operator's dead-letter tools: list, show, replay, purge and retention, against real servers."""

from __future__ import annotations

import json
import threading

import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, STREAM
from tests.cli import cli, env_for
from tests.pipeline import (
    PIPELINE_DEAD_LETTER,
    abandon_in_pipeline,
    age,
    command,
    dead_letters,
    set_deliveries,
    tweet,
)
from tests.world import World


def test_replay_refuses_when_the_group_is_gone(world8: World) -> None:
    ids = world8.abandon([tweet(n, id="") for n in range(3)])  # no tweet id: dead-lettered at once
    world8.run()
    dead_letter = world8.keys.dead_letter
    before = dead_letters(world8.client, dead_letter)
    assert 3 == len(before) and len(ids) == 3
    command(world8.client, "XGROUP", "DESTROY", world8.stream, world8.group)
    stream_length = world8.client.xlen(world8.stream)
    env = env_for(world8.server, world8.names)
    done = cli(env, "dead-letter", "replay", "--all")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert "replayed" not in done.stdout
    assert world8.group in done.stderr
    assert before == dead_letters(world8.client, dead_letter)
    assert stream_length == world8.client.xlen(world8.stream)


def test_a_big_dead_letter_is_replayed_while_producers_write_to_the_stream(world8: World) -> None:
    """A continued dead letter is replayed in a transaction that watches the dead-letter stream only: live
    producers writing to the main stream must not abort it."""
    big = [part for n in range(4500) for part in (b"f%d" % n, b"v")]  # past one Lua call, and no id
    world8.abandon([big])
    assert 1 == world8.run().counts.dead_lettered
    stop = threading.Event()

    def produce() -> None:
        producer = world8.server.client()
        while not stop.is_set():
            producer.xadd(world8.stream, {"id": "1", "text": "live"})

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        done = cli(env_for(world8.server, world8.names), "dead-letter", "replay", "--all")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert 0 == done.returncode, done.stderr[-2000:]
    assert "replayed 1 of 1" in done.stdout
    assert 0 == world8.client.xlen(world8.keys.dead_letter)


def dead_lettered(client: redis.Redis, redis_8: LocalRedis, count: int) -> list[bytes]:
    """`count` poison entries (delivered 50 times) moved to the dead-letter stream by a real cycle."""
    ids = abandon_in_pipeline(client, [[*tweet(n), b"text", b"\xffrepeated"] for n in range(count)])
    set_deliveries(client, STREAM, GROUP, "consumer-crashed", ids, 50)
    age(client, STREAM, GROUP, "consumer-crashed", ids, 60_000)
    assert 0 == cli(redis_8, "reclaim").returncode
    return ids


def test_dead_letter_retention_trims_approximately(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon_in_pipeline(group, [[b"text", b"no id", b"n", b"%d" % n] for n in range(600)])
    done = cli(redis_8, "reclaim", DEAD_LETTER_MAXLEN="100")
    assert 600 == json.loads(done.stdout)["dead_lettered"]
    assert 100 <= group.xlen(PIPELINE_DEAD_LETTER) < 600  # MAXLEN ~ trims whole nodes, never below the bound


def test_dead_letter_list_and_show(redis_8: LocalRedis, group: redis.Redis) -> None:
    ids = dead_lettered(group, redis_8, 3)
    listed = json.loads(cli(redis_8, "dead-letter", "list", "--json").stdout)
    assert [i.decode() for i in ids] == [row["original-id"] for row in listed]
    assert {"max-deliveries"} == {row["reason"] for row in listed}
    shown = json.loads(cli(redis_8, "dead-letter", "show", listed[0]["id"], "--json").stdout)
    assert "1394000000000000000" == shown["original"]["id"]
    assert 1 == cli(redis_8, "dead-letter", "show", "1-1").returncode


def test_replay_puts_the_original_fields_back_atomically(redis_8: LocalRedis, group: redis.Redis) -> None:
    dead_lettered(group, redis_8, 250)
    before = group.xlen(STREAM)
    assert "would replay 250" in cli(redis_8, "dead-letter", "replay", "--all", "--dry-run").stdout
    assert 250 == group.xlen(PIPELINE_DEAD_LETTER)
    done = cli(redis_8, "dead-letter", "replay", "--all")
    assert "replayed 250 of 250" in done.stdout, done.stderr
    assert 0 == group.xlen(PIPELINE_DEAD_LETTER)
    replayed = command(group, "XRANGE", STREAM, "-", "+")[before:]
    assert [[*tweet(n), b"text", b"\xffrepeated"] for n in range(250)] == [list(f) for _, f in replayed]


def test_purge_asks_unless_yes(redis_8: LocalRedis, group: redis.Redis) -> None:
    dead_lettered(group, redis_8, 4)
    first = dead_letters(group, PIPELINE_DEAD_LETTER)
    assert 1 == cli(redis_8, "dead-letter", "purge", "--all").returncode  # nobody to answer: refused
    assert 4 == group.xlen(PIPELINE_DEAD_LETTER)
    ids = [e[0] for e in command(group, "XRANGE", PIPELINE_DEAD_LETTER, "-", "+")][:2]
    assert 0 == cli(redis_8, "dead-letter", "purge", *[i.decode() for i in ids], "--yes").returncode
    assert 2 == group.xlen(PIPELINE_DEAD_LETTER)
    assert 0 == cli(redis_8, "dead-letter", "purge", "--all", "--yes").returncode
    assert (0, 4) == (group.xlen(PIPELINE_DEAD_LETTER), len(first))
    assert 2 == cli(redis_8, "dead-letter", "purge").returncode  # neither ids nor --all
