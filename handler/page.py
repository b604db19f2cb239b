"""One page of the reclaim cycle: claim its idle entries, write them, acknowledge them, dead-letter poison.

Every command here is safe to repeat after a lost reply: a repeated XCLAIM finds the entries no longer idle
and returns nothing (they stay pending under this consumer and come back after min-idle); HSET of the same
fields and XACK are idempotent; XRANGE and XPENDING only read; the dead-letter script checks ownership and
pending state before it changes anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from handler.dead_letter import MOVE_TO_DEAD_LETTER_LUA, MoveOutcome
from handler.keys import StreamKeys
from handler.plan import (
    DeadLetter,
    DeadLetterReason,
    PendingRow,
    claimable_ids,
    decide,
    is_permanent_write_error,
)
from handler.wire import Wire, pack, pack_hsets

log = logging.getLogger(__name__)


@dataclass
class PageCounts:
    claimed: int = 0
    processed: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    failed: int = 0

    def add(self, other: PageCounts) -> None:
        self.claimed += other.claimed
        self.processed += other.processed
        self.deleted += other.deleted
        self.dead_lettered += other.dead_lettered
        self.failed += other.failed


@dataclass(frozen=True)
class PageSettings:
    keys: StreamKeys
    min_idle_ms: int
    max_deliveries: int
    dead_letter_maxlen: int = 0


@dataclass
class _Outcome:
    written: list[bytes] = field(default_factory=list)
    dead: list[tuple[bytes, DeadLetter]] = field(default_factory=list)


def handle_page(wire: Wire, rows: list[PendingRow], config: PageSettings) -> PageCounts:
    """Claim, write, acknowledge and dead-letter one page of XPENDING rows; returns its counts."""
    keys = config.keys
    counts = PageCounts()
    ids = claimable_ids(rows, config.min_idle_ms)
    if not ids:
        return counts
    (reply,) = wire.call(
        [pack((b"XCLAIM", keys.stream, keys.group, keys.consumer, config.min_idle_ms, *ids))], 1
    )
    if isinstance(reply, Exception):
        raise reply
    # Before Redis 7.0 an entry deleted from the stream comes back as nil and stays pending.
    entries = [item for item in reply if item is not None and item[0] is not None]
    counts.claimed = len(entries)
    if len(entries) < len(ids):
        returned = {item[0] for item in entries}
        counts.deleted += acknowledge_deleted(wire, keys, [i for i in ids if i not in returned])

    deliveries = {row.entry_id: row.deliveries for row in rows}
    outcome = _Outcome()
    writes: list[tuple[bytes, bytes, list[bytes]]] = []  # (entry id, tweet key, fields)
    max_deliveries = config.max_deliveries
    for entry_id, fields in entries:
        decision = decide(fields, deliveries[entry_id], max_deliveries)
        if isinstance(decision, bytes):
            writes.append((entry_id, decision, fields))
        else:
            outcome.dead.append((entry_id, decision))
    _write(wire, writes, outcome, counts)
    _acknowledge_and_dead_letter(wire, config, outcome, deliveries, counts)
    return counts


def acknowledge_deleted(wire: Wire, keys: StreamKeys, candidates: list[bytes]) -> int:
    """Of the IDs asked for but not returned, acknowledge those gone from the stream.

    An ID missing from XCLAIM's reply may simply not have been idle long enough; only one that no longer
    exists in the stream, and that is either ours now (claimed as nil before 7.0) or no longer pending
    (dropped by XCLAIM from 7.0), counts as deleted.
    """
    commands = []
    for entry_id in candidates:
        commands.append(pack((b"XRANGE", keys.stream, entry_id, entry_id, b"COUNT", 1)))
        commands.append(pack((b"XPENDING", keys.stream, keys.group, entry_id, entry_id, 1)))
    replies = wire.call(commands, len(commands))
    _raise_first_error(replies)
    deleted, to_ack = 0, []
    consumer = keys.consumer.encode()
    for index, entry_id in enumerate(candidates):
        still_in_stream, pending_row = replies[2 * index], replies[2 * index + 1]
        if still_in_stream:
            continue
        if not pending_row:
            deleted += 1
        elif pending_row[0][1] == consumer:
            deleted += 1
            to_ack.append(entry_id)
    if to_ack:
        _raise_first_error(wire.call([pack((b"XACK", keys.stream, keys.group, *to_ack))], 1))
    if deleted:
        log.info("acknowledged %d pending entries deleted from the stream", deleted)
    return deleted


def _write(
    wire: Wire, writes: list[tuple[bytes, bytes, list[bytes]]], outcome: _Outcome, counts: PageCounts
) -> None:
    """One HSET per entry, all written at once; only successful writes are acknowledged later."""
    if not writes:
        return
    results = wire.call([pack_hsets((key, fields) for _, key, fields in writes)], len(writes))
    written = outcome.written
    for (entry_id, key, _), result in zip(writes, results, strict=True):
        if not isinstance(result, Exception):
            written.append(entry_id)
            continue
        message = str(result)
        if is_permanent_write_error(message):
            outcome.dead.append((entry_id, DeadLetter(DeadLetterReason.WRITE_FAILED, message)))
        else:
            counts.failed += 1
            log.warning("writing %r failed, left pending for a later cycle: %s", key, message)


def _acknowledge_and_dead_letter(
    wire: Wire,
    config: PageSettings,
    outcome: _Outcome,
    deliveries: dict[bytes, int],
    counts: PageCounts,
) -> None:
    keys = config.keys
    commands = []
    if outcome.written:
        commands.append(pack((b"XACK", keys.stream, keys.group, *outcome.written)))
    now_ms = int(time.time() * 1000)
    for entry_id, letter in outcome.dead:
        script_keys = (2, keys.stream, keys.dead_letter)
        args = (keys.group, keys.consumer, entry_id, letter.reason.value, deliveries[entry_id], now_ms)
        commands.append(
            pack(
                (
                    b"EVAL",
                    MOVE_TO_DEAD_LETTER_LUA,
                    *script_keys,
                    *args,
                    letter.detail,
                    config.dead_letter_maxlen,
                )
            )
        )
    if not commands:
        return
    results = wire.call(commands, len(commands))
    if outcome.written:
        ack_result = results.pop(0)
        if isinstance(ack_result, Exception):
            raise ack_result
        counts.processed += len(outcome.written)
    for (entry_id, letter), result in zip(outcome.dead, results, strict=True):
        if isinstance(result, Exception):
            counts.failed += 1
            log.warning("dead-lettering %r failed, left pending: %s", entry_id, result)
        elif result == MoveOutcome.DEAD_LETTERED:
            counts.dead_lettered += 1
            log.warning("dead-lettered %s (%s): %s", entry_id.decode(), letter.reason.value, letter.detail)
        elif result == MoveOutcome.DELETED:
            counts.deleted += 1


def _raise_first_error(replies: list[object]) -> None:
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
