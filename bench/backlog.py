"""A real backlog for the benchmark: N tweets left pending by a crashed processor, reset between runs,
and verified after each one (pending list empty, every hash equal to its message). The producer, the
crashing processor and the raw replies are the tests' (handler/dev/backlog.py)."""

from __future__ import annotations

import time
from typing import Any

import redis

from handler.dev import backlog, samples
from handler.dev.backlog import CRASHED, command, crash_after_reading, expected_hash
from handler.dev.samples import GROUP, STREAM, tweet_id
from handler.reclaim.rules import next_id

MIN_IDLE_SEC = 1
CHUNK = 10_000


def tweet(number: int) -> list[bytes]:
    """The sample tweet with a longer text: about 200 bytes, like a v1.1 sample tweet (160 of them its
    fields and values), the size the results in bench/results/ were measured with."""
    text = f"Day {number % 365}: hello world, this is what a tweet about #covid19 and medicine looks like"
    return samples.tweet(number, text=f"{text} in 2021 ({number})")


def produce(client: redis.Redis, count: int) -> None:
    """A stream of `count` tweets, made anew."""
    client.delete(STREAM)
    for start in range(0, count, CHUNK):
        backlog.produce(client, STREAM, [tweet(n) for n in range(start, min(start + CHUNK, count))])


def abandon(client: redis.Redis, count: int, tweets: Any = None) -> None:
    """Reset to the crash: no tweet hashes, a fresh group whose processor read the stream's first `count`
    entries (usually all of them) and died; the group's last-delivered ID is then moved to the end, so
    nothing else is ever pending. `client` talks to the stream's node; `tweets` (a cluster client, when the
    hashes are spread) to theirs."""
    for start in range(0, count, CHUNK):
        (tweets or client).unlink(*[b"tweet:" + tweet_id(n) for n in range(start, min(start + CHUNK, count))])
    client.delete("{tweets_stream}:dead-letter", "{tweets_stream}:cursor:" + GROUP)
    command(client, "XGROUP", "DESTROY", STREAM, GROUP)
    command(client, "XGROUP", "CREATE", STREAM, GROUP, "0")
    read = 0
    while read < count:
        just_read = crash_after_reading(client, STREAM, GROUP, CRASHED, min(CHUNK, count - read))
        if not just_read:
            break
        read += just_read
    command(client, "XGROUP", "SETID", STREAM, GROUP, "$")
    time.sleep(MIN_IDLE_SEC + 0.05)


def verify(client: redis.Redis, count: int, tweets: Any = None) -> str | None:
    """None when each of the stream's first `count` tweets is in its hash exactly and nothing is pending;
    else what is wrong."""
    pending = command(client, "XPENDING", STREAM, GROUP)[0]
    if pending:
        return f"{pending} entries still pending"
    start: bytes | str = "-"
    checked = 0
    while checked < count:
        entries = command(client, "XRANGE", STREAM, start, "+", "COUNT", min(CHUNK, count - checked))
        if not entries:
            break
        pipe = (tweets or client).pipeline(transaction=False)
        for _, fields in entries:
            pipe.hgetall(b"tweet:" + fields[3])
        for (_, fields), stored in zip(entries, pipe.execute(), strict=True):
            if stored != expected_hash(fields):
                return f"tweet:{fields[3].decode()} differs from its message"
        checked += len(entries)
        start = next_id(entries[-1][0])
    return None if checked == count else f"checked {checked} of {count} tweets"
