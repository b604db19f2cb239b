"""The pipeline around the monitor, played for real: the producer's XADD, a processor that reads and then
crashes, and the clock (idle times set with XCLAIM's IDLE option instead of sleeping)."""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from handler.dev.samples import sample_tweet
from handler.reclaim.dead_letter import split_dead_letter
from handler.transport.client import Client


def raw(*args: Any) -> Any:
    return args[0]


def raw_client(client: Client) -> Client:
    """The same connection pool, with stream replies left as the server sent them (flat field lists).
    A test's cluster client (LocalCluster.client) leaves them raw already."""
    if isinstance(client, RedisCluster):
        return client
    copy = redis.Redis(connection_pool=client.connection_pool)
    for command in ("XRANGE", "XPENDING", "XCLAIM", "XREADGROUP"):
        copy.set_response_callback(command, raw)
    return copy


def tweet(number: int, **changes: str) -> list[bytes]:
    """A tweet as the producer writes it: fields in alphabetical order, string values."""
    fields = {**sample_tweet(number), **changes}
    return [part.encode() for pair in fields.items() for part in pair]


def command(client: Client, *args: Any) -> Any:
    """A command whose reply stays as the server sent it."""
    return raw_client(client).execute_command(*args)  # type: ignore[no-untyped-call]


def create_group(client: Client, stream: str, group: str) -> None:
    command(client, "XGROUP", "CREATE", stream, group, "$", "MKSTREAM")


def produce(client: Client, stream: str, entries: list[list[bytes]]) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.execute_command("XADD", stream, "*", *fields)
    return [bytes(entry_id) for entry_id in pipe.execute()]


def crash_after_reading(client: Client, stream: str, group: str, consumer: str, count: int) -> None:
    """A processor reads `count` entries and dies before acknowledging any of them."""
    command(client, "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, ">")


def age(client: Client, stream: str, group: str, owner: str, ids: list[bytes], idle_ms: int) -> None:
    """Make entries look idle for idle_ms without changing owner or delivery count (XCLAIM IDLE JUSTID)."""
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        command(client, "XCLAIM", stream, group, owner, 0, *chunk, "IDLE", idle_ms, "JUSTID")


IDLE_ENOUGH_MS = 60_000  # the tests run the monitor with MIN_IDLE_TIME_SEC of 10 or less


def abandon(
    client: Client,
    stream: str,
    group: str,
    entries: list[list[bytes]],
    consumer: str = "consumer-crashed",
    idle_ms: int = IDLE_ENOUGH_MS,
) -> list[bytes]:
    """Produce entries, let a processor read them all and crash, and make them look idle for idle_ms
    (0 leaves them fresh, as a live processor's)."""
    ids = produce(client, stream, entries)
    crash_after_reading(client, stream, group, consumer, len(ids))
    if idle_ms:
        age(client, stream, group, consumer, ids, idle_ms)
    return ids


def set_deliveries(client: Client, stream: str, group: str, owner: str, ids: list[bytes], count: int) -> None:
    command(client, "XCLAIM", stream, group, owner, 0, *ids, "RETRYCOUNT", count, "JUSTID")


def pending_rows(client: Client, stream: str, group: str) -> list[tuple[bytes, bytes, int, int]]:
    rows = command(client, "XPENDING", stream, group, "-", "+", 1_000_000)
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def pending_ids_of(client: Client, stream: str, group: str, consumer: str) -> set[bytes]:
    return {row[0] for row in pending_rows(client, stream, group) if row[1] == consumer.encode()}


def wait_until_claiming(client: Client, stream: str, group: str, consumer: str, timeout: float = 30) -> None:
    """Until the monitor `consumer` owns pending entries: its cycle has claimed work, not yet acknowledged."""
    deadline = time.monotonic() + timeout
    # The summary form of XPENDING (counts per consumer) answers at once even for a long pending list, so
    # polling it every 2 ms does not slow the server down, and it catches a page that is claimed and
    # acknowledged within a few milliseconds.
    while not _owns_pending(client, stream, group, consumer):
        if time.monotonic() > deadline:
            raise AssertionError("the cycle never started claiming")
        time.sleep(0.002)


def _owns_pending(client: Client, stream: str, group: str, consumer: str) -> bool:
    summary = command(client, "XPENDING", stream, group)
    return any(bytes(name) == consumer.encode() for name, _ in summary[3] or [])


def hash_fields(client: Client, key: bytes) -> dict[bytes, bytes]:
    fields: Any = client.hgetall(key)
    return {bytes(k): bytes(v) for k, v in fields.items()}


def expected_hash(fields: list[bytes]) -> dict[bytes, bytes]:
    """What HSET leaves for a flat field list: the later of repeated names wins."""
    return dict(zip(fields[::2], fields[1::2], strict=True))


def dead_letters(client: Client, key: str) -> list[tuple[dict[bytes, bytes], list[bytes]]]:
    entries = command(client, "XRANGE", key, "-", "+")
    return [split_dead_letter(list(fields)) for _, fields in entries]


def tweet_keys(client: Client) -> set[bytes]:
    return {bytes(key) for key in client.scan_iter(match=b"tweet:*", count=1000)}
