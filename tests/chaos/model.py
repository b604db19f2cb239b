"""What the checker knows: the model of every entry (its fields, its tweet key, its deliveries and its fate)
that each step updates and each check compares with Redis, and the numbers a run reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TypeAlias

from tests.chaos.kinds import (
    MAX_DELIVERIES,
)

EntryKey: TypeAlias = tuple[str, bytes]  # (stream, entry id): two streams may hold the same id


@dataclass
class Model:
    """What the checker knows the world did to each entry."""

    entries: dict[EntryKey, list[bytes]] = field(default_factory=dict)  # flat fields
    tweet_of: dict[EntryKey, bytes | None] = field(default_factory=dict)  # tweet:<id>, or None without an id
    delivered: set[EntryKey] = field(default_factory=set)  # read by the group at least once
    reads: Counter[EntryKey] = field(default_factory=Counter)
    abnormal_since: dict[EntryKey, int] = field(default_factory=dict)  # abnormal invocations when delivered
    processed: set[EntryKey] = field(default_factory=set)  # acknowledged by a processor
    half_written: set[EntryKey] = field(default_factory=set)  # a processor wrote it and crashed
    deleted: set[EntryKey] = field(default_factory=set)
    poison: set[EntryKey] = field(default_factory=set)
    resolved: set[EntryKey] = field(default_factory=set)  # its dead letter replayed or purged
    wrong_type_ids: set[bytes] = field(default_factory=set)
    abnormal: int = 0  # invocations that may have spent a delivery of every entry pending then
    max_deliveries: int = MAX_DELIVERIES  # the smallest any invocation so far used
    # The delivery promise, entry by entry (tests/chaos/__init__.py). `count` is each delivered entry's
    # times_delivered as last read (every step), plus the deliveries known since: lo of its interval.
    count: dict[EntryKey, int] = field(default_factory=dict)
    refused: Counter[EntryKey] = field(default_factory=Counter)  # attempts refused: deliveries given back
    died: Counter[EntryKey] = field(default_factory=Counter)  # deliveries spent by attempts that failed
    # The current step: per invocation, the deliveries it may have spent on each pending entry (0: none, a
    # 200 or every write refused); those a previous step's late commands may add; the smallest
    # MAX_DELIVERIES of its invocations (None: it ran none); when it began.
    spends: list[int] = field(default_factory=list)
    late: int = 0
    step_max: int | None = None
    step_began: float = 0.0
    # Entries that left the pending list: the count before that step, the deliveries its invocations other
    # than the one that took the entry may have spent first, and the step's smallest MAX_DELIVERIES.
    left: dict[EntryKey, tuple[int, int, int]] = field(default_factory=dict)
    lettered_pending: set[EntryKey] = field(default_factory=set)  # a dead letter seen while still pending

    def add(self, entry: EntryKey, fields: list[bytes]) -> None:
        self.entries[entry] = fields
        self.tweet_of[entry] = _tweet_key(fields)


@dataclass
class Stats:
    steps: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    checks: int = 0
    fates: Counter[str] = field(default_factory=Counter)


def _tweet_key(fields: list[bytes]) -> bytes | None:
    """tweet:<id> as HSET would use it (the later of repeated ids), or None without a usable id."""
    value = None
    for name, item in zip(fields[0::2], fields[1::2], strict=True):
        if name == b"id":
            value = item
    return b"tweet:" + value if value else None
