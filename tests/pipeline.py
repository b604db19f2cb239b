"""What the tests read back from the pipeline around the monitor: pending rows, hashes, dead letters, and
waiting for a cycle to start claiming. Producing, crashing and aging entries is handler/dev/backlog.py's
(the benchmarks play the pipeline too), named here as well so that a test imports it from one place."""

from __future__ import annotations

import time
from typing import Any

from handler.dev.backlog import (
    IDLE_ENOUGH_MS,
    abandon,
    age,
    command,
    crash_after_reading,
    create_group,
    expected_hash,
    produce,
    raw,
    set_deliveries,
)
from handler.dev.samples import GROUP, STREAM, tweet
from handler.reclaim.dead_letter import split_dead_letter
from handler.transport.client import Client

__all__ = [
    "IDLE_ENOUGH_MS",
    "abandon",
    "age",
    "command",
    "crash_after_reading",
    "create_group",
    "dead_letters",
    "expected_hash",
    "hash_fields",
    "pending_ids_of",
    "pending_rows",
    "produce",
    "raw",
    "set_deliveries",
    "tweet",
    "tweet_keys",
    "wait_until_claiming",
]


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


def dead_letters(client: Client, key: str) -> list[tuple[dict[bytes, bytes], list[bytes]]]:
    entries = command(client, "XRANGE", key, "-", "+")
    return [split_dead_letter(list(fields)) for _, fields in entries]


def tweet_keys(client: Client) -> set[bytes]:
    return {bytes(key) for key in client.scan_iter(match=b"tweet:*", count=1000)}


PIPELINE_DEAD_LETTER = "{tweets_stream}:dead-letter"  # the pipeline's own stream's dead letters


def abandon_in_pipeline(
    client: Client, entries: list[list[bytes]], consumer: str = "consumer-crashed"
) -> list[bytes]:
    """abandon() into the pipeline's own stream and group (tweets_stream, redisearch_app_group)."""
    return abandon(client, STREAM, GROUP, entries, consumer)
