"""A backlog of abandoned entries for the fault tests: valid tweets with poison and id-less entries among
them, and the loop that invokes the monitor until nothing is pending."""

from __future__ import annotations

import time
from dataclasses import dataclass

from handler.dev.backlog import CRASHED, IDLE_ENOUGH_MS, abandon, age, command, expected_hash, set_deliveries
from handler.dev.host import FunctionsHost
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, tweet
from handler.transport.client import Client

DEAD_LETTER = "{tweets_stream}:dead-letter"
NAMES = PIPELINE_NAMES
FAST = {"MIN_IDLE_TIME_SEC": "1", "MAX_DELIVERIES": "10", "LEASE_TTL_SEC": "1", "REDIS_TIMEOUT_SEC": "1"}


@dataclass
class Backlog:
    tweets: dict[bytes, dict[bytes, bytes]]  # tweet:<id> -> the hash it must end up as
    bad: set[bytes]  # entry IDs that must end in the dead-letter stream exactly once

    @property
    def size(self) -> int:
        return len(self.tweets) + len(self.bad)


def abandon_backlog(client: Client, valid: int, every: int = 100, offset: int = 0) -> Backlog:
    """Valid tweets with poison (delivered 50 times) and id-less entries spread through them, all read by a
    processor that then crashed, all idle long enough to be reclaimed."""
    entries: list[list[bytes]] = []
    kinds: list[str] = []
    for n in range(offset, offset + valid):
        entries.append(tweet(n))
        kinds.append("valid")
        if n % every == every // 2:
            entries.append([b"text", b"no id here", b"user", b"x"])
            kinds.append("missing-id")
        if n % every == 0:
            entries.append(tweet(n + 10_000_000))
            kinds.append("poison")
    ids = abandon(client, STREAM, GROUP, entries, idle_ms=0)
    poison = [entry_id for entry_id, kind in zip(ids, kinds, strict=True) if kind == "poison"]
    set_deliveries(client, STREAM, GROUP, CRASHED, poison, 50)  # which makes them fresh: aged after
    age(client, STREAM, GROUP, CRASHED, ids, IDLE_ENOUGH_MS)
    tweets = {
        b"tweet:" + fields[3]: expected_hash(fields)
        for fields, kind in zip(entries, kinds, strict=True)
        if kind == "valid"
    }
    bad = {entry_id for entry_id, kind in zip(ids, kinds, strict=True) if kind != "valid"}
    return Backlog(tweets, bad)


def pending_count(client: Client) -> int:
    return int(command(client, "XPENDING", STREAM, GROUP)[0])


def drain(host: FunctionsHost, client: Client, rounds: int = 15) -> None:
    """Invoke until nothing is pending; entries a killed cycle had claimed come back after min-idle."""
    for _ in range(rounds):
        answer = host.invoke()
        if answer.status == 200 and pending_count(client) == 0:
            return
        time.sleep(1.1)
    raise AssertionError(f"{pending_count(client)} entries still pending")
