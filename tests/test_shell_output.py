"""Output fit for a shell: whole dead-letter IDs whatever the width, plain rows when piped, --json on
every read command, a paced and counted replay, and replay/purge --all in flat memory. Real servers and
processes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
import tracemalloc
from functools import partial
from typing import Any

import redis

from handler.dev.host import APP_ROOT
from handler.dev.local_redis import LocalRedis, environment_for
from handler.keys import StreamKeys
from handler.ops import dead_letter_tools
from handler.reclaim.dead_letter import METADATA_FIELDS
from handler.transport.client import Client
from handler.transport.connect import connect
from tests.cli import cli, env_for
from tests.conftest import settings_for
from tests.pipeline import command, create_group, tweet
from tests.world import World


def on_a_terminal(world: World, *args: str, columns: int) -> str:
    """The command's stdout as a terminal `columns` wide shows it (a real pseudo-terminal)."""
    leader, follower = pty.openpty()
    env = {**env_for(world.server, world.names), "COLUMNS": str(columns), "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "handler", *args],
        env=env,
        cwd=APP_ROOT,
        stdout=follower,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def add_dead_letters(client: redis.Redis, key: str, count: int) -> list[bytes]:
    """`count` inline dead letters written straight into the dead-letter stream, as the monitor lays them."""
    ids: list[bytes] = []
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(count, start + 5000)):
            metadata = [
                b"1",
                b"%d-0" % (n + 1),
                b"s",
                b"g",
                b"no-id",
                b"1",
                b"c",
                b"0",
                b"a long detail " * 8,
            ]
            fields = [part for pair in zip(METADATA_FIELDS, metadata, strict=True) for part in pair]
            pipe.execute_command("XADD", key, "*", *fields, *tweet(n))  # type: ignore[no-untyped-call]
        ids += [bytes(i) for i in pipe.execute()]
    return ids


def test_dead_letter_list_prints_whole_ids_on_a_narrow_terminal_and_plain_rows_when_piped(
    world8: World,
) -> None:
    ids = add_dead_letters(world8.client, world8.keys.dead_letter, 3)
    shown = on_a_terminal(world8, "dead-letter", "list", columns=60)
    assert all(entry_id.decode() in shown for entry_id in ids), shown
    piped = cli(world8, "dead-letter", "list", COLUMNS="40")
    rows = piped.stdout.splitlines()
    assert 4 == len(rows), piped.stdout  # a header and one row per dead letter
    assert [row.split("\t")[0] for row in rows[1:]] == [entry_id.decode() for entry_id in ids]
    assert all("\x1b" not in row for row in rows)  # no colours or box drawing in a pipe


def test_every_read_command_has_json(world8: World) -> None:
    ids = add_dead_letters(world8.client, world8.keys.dead_letter, 2)
    world8.abandon([tweet(1)])
    listed = json.loads(cli(world8, "dead-letter", "list", "--json").stdout)
    assert [row["id"] for row in listed] == [entry_id.decode() for entry_id in ids]
    shown = json.loads(cli(world8, "dead-letter", "show", ids[0].decode(), "--json").stdout)
    assert shown["id"] == ids[0].decode()
    checked = json.loads(cli(world8, "check", "--json").stdout)
    assert {row["verdict"] for row in checked} <= {"PASS", "FAIL", "WARN", "SKIP"}
    assert any(row["check"] == "connectivity" and "one endpoint" in row["detail"] for row in checked)
    pruned = json.loads(cli(world8, "consumers", "prune", "--idle-sec", "0", "--dry-run", "--json").stdout)
    assert pruned["dry_run"] is True and isinstance(pruned["consumers"], list)
    status = json.loads(cli(world8, "status", "--json").stdout)
    assert status["pending"] == 1


def test_replay_count_takes_the_oldest(world8: World) -> None:
    ids = add_dead_letters(world8.client, world8.keys.dead_letter, 5)
    done = cli(world8, "dead-letter", "replay", "--count", "2")
    assert 0 == done.returncode and "replayed 2 of 2" in done.stdout, done.stdout + done.stderr
    left = [bytes(row[0]) for row in command(world8.client, "XRANGE", world8.keys.dead_letter, "-", "+")]
    assert left == ids[2:]


def test_replay_rate_paces_the_entries(world8: World) -> None:
    add_dead_letters(world8.client, world8.keys.dead_letter, 30)
    began = time.monotonic()
    done = cli(world8, "dead-letter", "replay", "--all", "--rate", "20")
    took = time.monotonic() - began
    assert 0 == done.returncode and "replayed 30 of 30" in done.stdout, done.stderr
    assert took >= 30 / 20 - 1  # the last second's batch may start at once: never faster than that
    assert 30 == world8.client.xlen(world8.stream)


def _replay_all(monitor: Client, keys: StreamKeys) -> int:
    return dead_letter_tools.replay(monitor, keys, dead_letter_tools.oldest_ids(monitor, keys))


def _peak_bytes(call: Any) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_replay_all_and_purge_all_keep_memory_flat(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """The peak of replaying (then purging) 60,000 dead letters is that of 6,000: no list of every ID."""
    peaks: dict[str, dict[int, int]] = {"replay": {}, "purge": {}}
    for count in (6_000, 60_000):
        stream = f"{names['STREAM_NAME']}-{count}"
        create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
        settings = settings_for(redis_8, {**names, "STREAM_NAME": stream})
        keys = StreamKeys.from_settings(settings)
        monitor = connect(settings)
        add_dead_letters(client8, keys.dead_letter, count)
        peaks["replay"][count] = _peak_bytes(partial(_replay_all, monitor, keys))
        assert count == client8.xlen(stream)
        add_dead_letters(client8, keys.dead_letter, count)
        peaks["purge"][count] = _peak_bytes(partial(dead_letter_tools.purge_all, monitor, keys))
        assert 0 == client8.xlen(keys.dead_letter)
        monitor.close()
        client8.delete(stream, keys.dead_letter)
    for action, peak in peaks.items():
        assert peak[60_000] < peak[6_000] * 1.5 + 200_000, (action, peak)


# What a tweet, a consumer name or a key may hold to take over an operator's terminal: Rich markup (a
# closing tag that crashes, a link), and escape sequences (window title, clear screen, a line overwritten
# with a verdict, C1 CSI, a right-to-left override).
HOSTILE = (
    "[/x][/b][link=https://evil.example/]click[/link]\x1b]0;pwned-title\x07\x1b[2J\x1b[H"
    "\rall checks PASS\x9b31m\u202eevil"
)
NEVER_RAW = ["\x1b]0;", "\x1b[2J", "\x1b[H", "\x1b]8;", "\x07", "\x9b", "\u202e", "\rall checks PASS"]


def terminal_and_pipe(world: World, *args: str, **settings: str) -> list[str]:
    """The command's whole output (stdout and stderr) on an 80-column terminal, then piped; each run must
    succeed."""
    leader, follower = pty.openpty()
    env = {**env_for(world.server, world.names, **settings), "COLUMNS": "80", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-m", "handler", *args],
        env=env,
        cwd=APP_ROOT,
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert 0 == process.wait(timeout=60), b"".join(chunks).decode(errors="replace")
    os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    piped = cli(env_for(world.server, world.names, **settings), *args)
    assert 0 == piped.returncode, piped.stdout + piped.stderr
    return [terminal, piped.stdout + piped.stderr]


def assert_shown_as_text(outputs: list[str], visible: str = "pwned-title") -> None:
    """Nothing from Redis reached the terminal as markup or as a control sequence: it is all there, as
    text, escapes made visible."""
    for output in outputs:
        assert "Traceback" not in output, output
        for raw in NEVER_RAW:
            assert raw not in output, (raw, output)
        # As read, whatever the width: a table cell wraps (box drawing, padding), Rich styles its own text.
        read = re.sub(r"\x1b\[[0-9;]*m|[\s\u2500-\u257f]", "", output)
        assert visible in read, output
        assert "\\x1b]0;pwned-title\\x07" in read, output


def hostile_dead_letter(world: World) -> bytes:
    """A dead letter whose every metadata value and original field is hostile."""
    metadata = [b"1", HOSTILE.encode(), b"s", b"g", HOSTILE.encode(), b"1", b"c", b"0", HOSTILE.encode()]
    fields = [part for pair in zip(METADATA_FIELDS, metadata, strict=True) for part in pair]
    entry_id = command(world.client, "XADD", world.keys.dead_letter, "*", *fields, HOSTILE, HOSTILE)
    return bytes(entry_id)


def test_consumer_names_and_the_last_refusal_are_text_in_status(world8: World) -> None:
    """A consumer named `proc[/x]` crashed `status`; escapes in names and in the last refusal went through."""
    world8.abandon([tweet(1)], consumer="proc[/x]" + HOSTILE)
    world8.client.set(world8.keys.last_refusal, HOSTILE)
    outputs = terminal_and_pipe(world8, "status")
    assert_shown_as_text(outputs)
    assert all("proc[/x]" in output for output in outputs)


def test_a_dead_letter_is_text_in_show_and_list(world8: World) -> None:
    """A tweet containing `[/b]` crashed `dead-letter show`; `[link=…]` became a link; escapes went through
    `list` on a terminal and piped."""
    entry_id = hostile_dead_letter(world8).decode()
    assert_shown_as_text(terminal_and_pipe(world8, "dead-letter", "show", entry_id))
    listed = terminal_and_pipe(world8, "dead-letter", "list")
    assert_shown_as_text(listed)
    rows = listed[1].splitlines()
    assert 2 == len(rows) and 6 == len(rows[1].split("\t")), rows  # tabs and newlines inside stay escaped


def test_a_tweet_id_is_text_in_the_dry_run(world8: World) -> None:
    """An id `abc[/x]` crashed `reclaim --dry-run` on a terminal."""
    world8.abandon([tweet(1, id="abc[/x]" + HOSTILE)])
    assert_shown_as_text(terminal_and_pipe(world8, "reclaim", "--dry-run")[:1])


def test_consumer_names_are_text_when_pruned(world8: World) -> None:
    world8.abandon([tweet(1)], consumer=HOSTILE, aged=False)
    command(world8.client, "XACK", world8.stream, world8.group, *world8.pending())
    assert_shown_as_text(terminal_and_pipe(world8, "consumers", "prune", "--idle-sec", "0", "--dry-run"))


def test_stream_names_found_by_a_pattern_are_text_in_check(world8: World) -> None:
    stream = world8.stream + ":" + HOSTILE
    create_group(world8.client, stream, world8.group)
    outputs = terminal_and_pipe(world8, "check", STREAM_NAME=world8.stream + ":*")
    assert_shown_as_text(outputs)


def test_every_line_of_check_reads_on_a_terminal(redis_8: LocalRedis, names: dict[str, str]) -> None:
    """`check` is read by people: no line of it is a paragraph (the replicas line says its promise in one
    sentence and leaves the rest to docs/azure-managed-redis.md)."""
    create_group(redis_8.client(), names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
    env = environment_for(redis_8, **names, MIN_IDLE_TIME_SEC="10")
    done = cli(env, "check", timeout=60)
    replicas = [line for line in done.stdout.splitlines() if line.startswith("PASS  replicas:")]
    assert 1 == len(replicas), done.stdout
    assert len(replicas[0]) <= 200, replicas[0]
