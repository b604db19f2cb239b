"""Pure decisions of the reclaim cycle, over parsed XPENDING rows and claimed entries; no I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from handler.keys import TWEET_KEY_PREFIX

MAX_SEQUENCE = 2**64 - 1
U64_DIGITS = len(str(MAX_SEQUENCE))
START, END = b"-", b"+"


class DeadLetterReason(StrEnum):
    """Short, stable words an operator can filter dead letters on."""

    MAX_DELIVERIES = "max-deliveries"
    MISSING_ID = "missing-id"
    WRITE_FAILED = "write-failed"
    TOO_LARGE = "too-large"  # over ENTRY_MAX_BYTES: moved without being read whole


class PendingRow(NamedTuple):
    """One row of XPENDING's extended form (a tuple: a page holds thousands of them)."""

    entry_id: bytes
    consumer: bytes
    idle_ms: int
    deliveries: int


class DeadLetter(NamedTuple):
    reason: DeadLetterReason
    detail: str = ""
    relayed: bool = (
        False  # moved by the monitor a piece at a time (dead_letter.relay_move), not by one script
    )


def parse_pending_count(reply: Sequence[object]) -> int:
    """XPENDING summary: [count, smallest id, greatest id, [[consumer, count], ...]]."""
    count = reply[0]
    if not isinstance(count, int):
        raise TypeError(f"XPENDING's summary did not start with a count: {reply!r:.200}")
    return count


def parse_pending_rows(reply: Sequence[Sequence[Any]]) -> list[PendingRow]:
    """XPENDING's extended form: [[id, consumer, idle ms, deliveries], ...]."""
    return list(map(PendingRow._make, reply))


def claimable_ids(rows: Sequence[PendingRow], min_idle_ms: int) -> list[bytes]:
    """IDs idle at least min-idle. XCLAIM re-checks on the server; this only avoids asking in vain."""
    return [row.entry_id for row in rows if row.idle_ms >= min_idle_ms]


def parse_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or b"0")


def next_id(entry_id: bytes) -> bytes:
    """The smallest stream ID after entry_id: Redis 6.0 has no exclusive `(` ranges."""
    ms, seq = parse_id(entry_id)
    if seq < MAX_SEQUENCE:
        return b"%d-%d" % (ms, seq + 1)
    return b"%d-0" % (ms + 1)


def walk_start(cursor: bytes | None) -> bytes:
    """Where one invocation's walk starts: where the last one stopped, else the head. It walks to the end
    and never wraps round within an invocation (the next one starts from the head again), so one
    invocation meets the entries in stream order, and writes them so (write_order.py)."""
    if cursor is None or cursor in (START, b"0-0"):
        return START
    return cursor


def is_stream_id(value: bytes) -> bool:
    """`<ms>-<seq>` with both parts unsigned 64-bit integers: what XPENDING accepts as a range bound."""
    ms, dash, seq = value.partition(b"-")
    return bool(dash) and _is_u64(ms) and _is_u64(seq)


def _is_u64(part: bytes) -> bool:
    return part.isdigit() and len(part) <= U64_DIGITS and int(part) <= MAX_SEQUENCE


def stream_field(fields: Sequence[bytes], name: bytes) -> bytes | None:
    """The value of a field as HSET would leave it: with repeated names the later one wins."""
    names = fields[0::2]
    count = names.count(name)
    if count == 1:  # the usual case, found in C
        return fields[2 * names.index(name) + 1]
    value = None
    if count:
        for index in range(0, len(fields) - 1, 2):
            if fields[index] == name:
                value = fields[index + 1]
    return value


def _bulk_bytes(value: bytes) -> int:
    """`$<length>\r\n<value>\r\n`."""
    return len(value) + len(str(len(value))) + 5


def resp_bytes_over(entry_id: bytes, fields: Sequence[bytes], bound: int) -> bool:
    """Whether an entry as Redis sends it (`*2`, its ID, `*<n>`, each field and value) is over `bound` bytes
    of RESP: the measure ENTRY_MAX_BYTES is in, whichever way the entry was read."""
    payload = sum(map(len, fields))
    if payload + 32 * (len(fields) + 2) <= bound:  # 32: more than any header and CRLFs of one bulk string
        return False
    headers = 4 + len(str(len(fields))) + 3
    return headers + _bulk_bytes(entry_id) + sum(map(_bulk_bytes, fields)) > bound


def decide(fields: Sequence[bytes], deliveries_before: int, max_deliveries: int) -> bytes | DeadLetter:
    """What to do with one claimed entry: the tweet key to write its fields to, as the processor would
    (then acknowledge it), or why to dead-letter it. (A bare key, not an object: one per message.)"""
    if max_deliveries and deliveries_before > max_deliveries:
        return DeadLetter(
            DeadLetterReason.MAX_DELIVERIES,
            f"delivered {deliveries_before} times, more than MAX_DELIVERIES={max_deliveries}",
        )
    tweet_id = stream_field(fields, b"id")
    if not tweet_id:
        reason = "no 'id' field" if tweet_id is None else "the 'id' field is empty"
        return DeadLetter(DeadLetterReason.MISSING_ID, reason)
    return TWEET_KEY_PREFIX + tweet_id
