"""A real backlog for the benchmark: N tweets left pending by a crashed processor, reset between runs,
and verified after each one (pending list empty, every hash equal to its message)."""

from __future__ import annotations

import time
from typing import Any

import redis

from handler.dev.samples import GROUP, STREAM, tweet_id
from handler.reclaim.rules import next_id

CRASHED = "consumer-crashed"
MIN_IDLE_SEC = 1
CHUNK = 10_000
USERS = ["john_doe", "joanna", "priya_s", "arjun", "maria.l", "li_wei"]
PLACES = ["Mumbai, India", "London, England", "Berlin", "São Paulo, Brasil", "Tokyo", "New Delhi, India"]
TAGS = ["covid19,Medicine", "", "hello,world", "cov19", "MedTech,Health,covid19", ""]


def tweet(number: int) -> list[bytes]:
    """Realistic fields in the producer's order: about 200 bytes, like a v1.1 sample tweet."""
    text = f"Day {number % 365}: hello world, this is what a tweet about #covid19 and medicine looks like"
    text += f" ({number})"
    return [b"hashtags", TAGS[number % 6].encode(), b"id", tweet_id(number),
            b"location", PLACES[number % 6].encode(), b"text", text.encode(),
            b"user", USERS[number % 6].encode()]  # fmt: skip


def raw(response: Any, **options: Any) -> Any:
    return response


def raw_client(port: int, **options: Any) -> redis.Redis:
    """A client whose stream replies stay as the server sent them; `options` e.g. TLS (ssl=True, …)."""
    client = redis.Redis(host="127.0.0.1", port=port, protocol=2, **options)
    for command in ("XREADGROUP", "XRANGE", "XPENDING", "XCLAIM"):
        client.set_response_callback(command, raw)
    return client


def produce(client: redis.Redis, count: int) -> None:
    client.delete(STREAM)
    for start in range(0, count, CHUNK):
        pipe = client.pipeline(transaction=False)
        for number in range(start, min(start + CHUNK, count)):
            pipe.execute_command("XADD", STREAM, "*", *tweet(number))  # type: ignore[no-untyped-call]
        pipe.execute()


def abandon(client: redis.Redis, count: int, tweets: Any = None) -> None:
    """Reset to the crash: no tweet hashes, a fresh group whose processor read the stream's first `count`
    entries (usually all of them) and died; the group's last-delivered ID is then moved to the end, so
    nothing else is ever pending. `client` talks to the stream's node; `tweets` (a cluster client, when the
    hashes are spread) to theirs."""
    for start in range(0, count, CHUNK):
        (tweets or client).unlink(*[b"tweet:" + tweet_id(n) for n in range(start, min(start + CHUNK, count))])
    client.delete("{tweets_stream}:dead-letter", "{tweets_stream}:cursor:" + GROUP)
    client.execute_command("XGROUP", "DESTROY", STREAM, GROUP)  # type: ignore[no-untyped-call]
    client.execute_command("XGROUP", "CREATE", STREAM, GROUP, "0")  # type: ignore[no-untyped-call]
    read = 0
    while read < count:
        entries = client.execute_command(  # type: ignore[no-untyped-call]
            "XREADGROUP", "GROUP", GROUP, CRASHED, "COUNT", min(CHUNK, count - read), "STREAMS", STREAM, ">"
        )
        if not entries:
            break
        read += len(entries[0][1])
    client.execute_command("XGROUP", "SETID", STREAM, GROUP, "$")  # type: ignore[no-untyped-call]
    time.sleep(MIN_IDLE_SEC + 0.05)


def verify(client: redis.Redis, count: int, tweets: Any = None) -> str | None:
    """None when each of the stream's first `count` tweets is in its hash exactly and nothing is pending;
    else what is wrong."""
    pending = client.execute_command("XPENDING", STREAM, GROUP)[0]  # type: ignore[no-untyped-call]
    if pending:
        return f"{pending} entries still pending"
    start: bytes | str = "-"
    checked = 0
    while checked < count:
        entries = client.execute_command(  # type: ignore[no-untyped-call]
            "XRANGE", STREAM, start, "+", "COUNT", min(CHUNK, count - checked)
        )
        if not entries:
            break
        pipe = (tweets or client).pipeline(transaction=False)
        for _, fields in entries:
            pipe.hgetall(b"tweet:" + fields[3])
        for (_, fields), stored in zip(entries, pipe.execute(), strict=True):
            if stored != dict(zip(fields[::2], fields[1::2], strict=True)):
                return f"tweet:{fields[3].decode()} differs from its message"
        checked += len(entries)
        start = next_id(entries[-1][0])
    return None if checked == count else f"checked {checked} of {count} tweets"
