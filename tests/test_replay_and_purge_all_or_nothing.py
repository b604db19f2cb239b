"""`dead-letter replay` and `purge` finish or change nothing: a user missing any one right they need sees
nothing added, nothing deleted, and a message naming the right to add. Inline and continued (too big for
one Lua call) dead letters, as the monitor's own cycle lays them, on Redis 6.0, 6.2 and 8.2; each command
a real `python -m handler` process signed in as an ACL user."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import redis

from tests.cli import cli
from tests.pipeline import command
from tests.world import World

PASSWORD = "pw-replay"


def run_as(world: World, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(world, *args, REDIS_USERNAME=user, REDIS_PASSWORD=PASSWORD)


def add_user(client: redis.Redis, name: str, *rule: str) -> str:
    command(client, "ACL", "SETUSER", name, "reset", "on", ">" + PASSWORD, *rule)
    return name


def without(right: str) -> tuple[str, ...]:
    """Every command on every key, except `right`."""
    return ("~*", "+@all", "-" + right)


def big_entry(pairs: int) -> list[bytes]:
    """An entry without an `id` field (dead-lettered as missing-id), `pairs` fields long."""
    return [part for n in range(pairs) for part in (b"field-%d" % n, b"value-%d" % n)]


def dead_letter_world(world: World, inline: int, continued: int) -> None:
    """Dead letters as the monitor's cycle writes them: `inline` small entries without an id, and
    `continued` ones of 4,000 fields (beyond one Lua call), plus live entries in the stream."""
    world.abandon([[b"text", b"no id %d" % n] for n in range(inline)] + [big_entry(4000)] * continued)
    summary = world.run()
    assert inline + continued == summary.counts.dead_lettered
    world.client.xadd(world.stream, {"id": "live", "text": "a live tweet"})


def snapshot(world: World) -> tuple[Any, Any]:
    """Everything replay and purge may change: the stream's entries and the dead-letter stream's."""
    return (
        command(world.client, "XRANGE", world.stream, "-", "+"),
        command(world.client, "XRANGE", world.keys.dead_letter, "-", "+"),
    )


def test_replay_under_the_rule_security_md_gave_changes_nothing_run_after_run(world: World) -> None:
    """The monitor's rule as security.md gave it (+xadd and +eval, no +xdel): the add ran, the delete was
    refused, and each run added another copy (6 -> 9 entries over three runs)."""
    dead_letter_world(world, inline=3, continued=0)
    rule = (
        "resetkeys",
        "~" + world.stream,
        "~{" + world.stream + "}:*",
        "~tweet:*",
        "-@all",
        "+xpending",
        "+xclaim",
        "+xack",
        "+xrange",
        "+xadd",
        "+xlen",
        "+type",
        "+hset",
        "+eval",
        "+get",
        "+set",
        "+del",
        "+pexpire",
        "+pttl",
        "+time",
        "+ping",
        "+client|setname",
        "+info",
        "+command",
        "+cluster|slots",
        "+wait",
    )
    user = add_user(world.client, "documented-" + world.stream[-6:], *rule)
    before = snapshot(world)
    for _ in range(3):
        done = run_as(world, user, "dead-letter", "replay", "--all")
        assert 1 == done.returncode, done.stdout + done.stderr
        assert "+xdel" in done.stderr, done.stderr
        assert before == snapshot(world)


def test_a_continued_dead_letter_is_not_replayed_without_xdel(world: World) -> None:
    """The continued path ignored the delete's result: 'replayed 1 of 1', exit 0, a 4,000-field copy added
    and the dead letter left in place, on every run."""
    dead_letter_world(world, inline=0, continued=1)
    user = add_user(world.client, "no-xdel-" + world.stream[-6:], *without("xdel"))
    before = snapshot(world)
    for _ in range(2):
        done = run_as(world, user, "dead-letter", "replay", "--all")
        assert 1 == done.returncode, done.stdout + done.stderr
        assert "replayed 1" not in done.stdout
        assert "+xdel" in done.stderr, done.stderr
        assert before == snapshot(world)


REPLAY_RIGHTS = ["xadd", "xdel", "xrange", "xpending", "eval", "type", "watch", "multi", "exec"]


@pytest.mark.parametrize("right", REPLAY_RIGHTS)
def test_replay_missing_any_one_right_changes_nothing_and_names_it(world: World, right: str) -> None:
    dead_letter_world(world, inline=2, continued=1)
    user = add_user(world.client, f"no-{right}-{world.stream[-6:]}", *without(right))
    before = snapshot(world)
    done = run_as(world, user, "dead-letter", "replay", "--all")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert f"+{right}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert before == snapshot(world)


@pytest.mark.parametrize("right", ["xdel", "xrange"])
@pytest.mark.parametrize("how", ["--all", "ids"])
def test_purge_missing_any_one_right_changes_nothing_and_names_it(world: World, right: str, how: str) -> None:
    dead_letter_world(world, inline=2, continued=1)
    user = add_user(world.client, f"no-{right}-{world.stream[-6:]}", *without(right))
    ids = [bytes(entry[0]).decode() for entry in snapshot(world)[1]]
    before = snapshot(world)
    chosen = ["--all"] if how == "--all" else ids
    done = run_as(world, user, "dead-letter", "purge", *chosen, "--yes")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert f"+{right}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert before == snapshot(world)


def test_replay_into_a_main_stream_of_another_type_changes_nothing(world: World) -> None:
    """Every transaction result is checked: the continued path's add refused (WRONGTYPE) is said, and
    neither the dead letter nor the key is touched."""
    dead_letter_world(world, inline=0, continued=1)
    user = add_user(world.client, "admin-" + world.stream[-6:], "~*", "+@all")
    dead_before = snapshot(world)[1]
    world.client.delete(world.stream)
    world.client.set(world.stream, "not a stream")
    done = run_as(world, user, "dead-letter", "replay", "--all")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert b"not a stream" == world.client.get(world.stream)
    assert dead_before == command(world.client, "XRANGE", world.keys.dead_letter, "-", "+")


def test_replay_and_purge_with_every_right_still_work(world: World) -> None:
    dead_letter_world(world, inline=2, continued=2)
    user = add_user(world.client, "admin-" + world.stream[-6:], "~*", "+@all")
    length = world.client.xlen(world.stream)
    done = run_as(world, user, "dead-letter", "replay", "--count", "3")
    assert 0 == done.returncode and "replayed 3 of 3" in done.stdout, done.stdout + done.stderr
    assert length + 3 == world.client.xlen(world.stream)
    done = run_as(world, user, "dead-letter", "purge", "--all", "--yes")
    assert 0 == done.returncode and "purged 1 of 1" in done.stdout, done.stdout + done.stderr
    assert 0 == world.client.xlen(world.keys.dead_letter)


def test_purging_a_parts_id_leaves_its_dead_letter_whole(world: World) -> None:
    """Only a dead letter's own ID is purged (with its parts): a part's ID named by mistake deleted that part,
    and its dead letter could no longer be replayed."""
    dead_letter_world(world, inline=0, continued=1)
    user = add_user(world.client, "admin-" + world.stream[-6:], "~*", "+@all")
    head, part = [bytes(entry[0]).decode() for entry in snapshot(world)[1]][:2]
    before = snapshot(world)
    done = run_as(world, user, "dead-letter", "purge", part, "--yes")
    assert 0 == done.returncode and "purged 0 of 1" in done.stdout, done.stdout + done.stderr
    assert before == snapshot(world)
    done = run_as(world, user, "dead-letter", "replay", head)
    assert 0 == done.returncode and "replayed 1 of 1" in done.stdout, done.stdout + done.stderr


def test_replaying_an_id_that_is_no_stream_id_among_good_ones_changes_nothing(world: World) -> None:
    """Every dead letter of a batch is read before the first write: a bad ID after good ones stops the
    batch before anything moved (it stopped after moving the ones before it)."""
    dead_letter_world(world, inline=2, continued=0)
    user = add_user(world.client, "admin-" + world.stream[-6:], "~*", "+@all")
    ids = [bytes(entry[0]).decode() for entry in snapshot(world)[1]]
    before = snapshot(world)
    done = run_as(world, user, "dead-letter", "replay", *ids, "not-an-id")
    assert 1 == done.returncode and "XRANGE" in done.stderr, done.stdout + done.stderr
    assert before == snapshot(world)
