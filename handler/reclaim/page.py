"""One page of the reclaim cycle: claim its idle entries, write them, acknowledge them, dead-letter poison.

Every command here is safe to repeat after a lost reply: a repeated XCLAIM finds the entries no longer idle
and returns nothing (they stay pending under this consumer and come back after min-idle); HSET of the same
fields, WAIT and XACK are idempotent; XRANGE and XPENDING only read; the dead-letter and give-back
scripts check ownership and pending state before they change anything. So a page is retried step by step:
the claim, then the writes and acknowledgements with the claimed entries in hand.

On a cluster the tweet hashes live on other nodes than the stream. Each node's writes go out as one batch,
all nodes at once, and a node that has replicas is asked to WAIT for one of them before the entries are
acknowledged on the stream's node: otherwise a failover could keep the acknowledgement and lose the tweet.

Writes of one tweet in different pages reach Redis in stream order (write_order.py); a write or dead letter
refused for a passing reason leaves its entry pending with its delivery given back (give_back.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

import redis

from handler.keys import StreamKeys
from handler.reclaim.dead_letter import MOVE_TO_DEAD_LETTER_LUA, MoveOutcome, move_arguments, parse_move_reply
from handler.reclaim.give_back import give_back_command
from handler.reclaim.rules import (
    DeadLetter,
    DeadLetterReason,
    PendingRow,
    claimable_ids,
    decide,
)
from handler.reclaim.summary import Counts, Incidents
from handler.reclaim.write_order import Ticket, WriteOrder
from handler.transport.failures import FailureKind, code_of, kind_of
from handler.transport.topology import Node, Topology
from handler.transport.wire import Channel, Wire, pack, pack_hsets

log = logging.getLogger(__name__)

WAIT_FOR_REPLICA_MS = 1000  # at most; and at most half the socket timeout, so WAIT never times the socket out


@dataclass(frozen=True)
class PageSettings:
    keys: StreamKeys
    topology: Topology
    min_idle_ms: int
    max_deliveries: int
    dead_letter_maxlen: int = 0
    wait_for_replica_ms: int = WAIT_FOR_REPLICA_MS


_COUNTS_ONLY = frozenset({int})  # the reply types of a page of HSETs that all succeeded


@dataclass
class _Writes:
    """A page's tweets to write, position by position: lists, not an object per entry (a page makes
    thousands, and an object each was a large share of the handler's CPU per entry: docs/performance.md)."""

    entry_ids: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)  # tweet:<id>
    fields: list[list[bytes]] = field(default_factory=list)


@dataclass
class _Outcome:
    """What one attempt at a page's second step decided, entry by entry."""

    written: list[bytes] = field(default_factory=list)
    dead: list[tuple[bytes, DeadLetter]] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)  # left pending: their delivery is given back
    counts: Counts = field(default_factory=Counts)
    alerts: Incidents = field(default_factory=Incidents)


@dataclass(frozen=True)
class PageResult:
    counts: Counts
    alerts: Incidents


@dataclass(frozen=True)
class _Claim:
    entries: list[tuple[bytes, list[bytes]]]  # (entry id, fields) of what XCLAIM returned
    deleted: int  # asked for, but gone from the stream: acknowledged


def handle_page(
    channel: Channel, rows: list[PendingRow], config: PageSettings, order: WriteOrder, turn: int
) -> PageResult:
    """Claim, write, acknowledge and dead-letter one page of XPENDING rows; returns its counts.

    Two steps, each retried on fresh connections (and, on a cluster, a fresh slot map) after a
    connection error: claiming, then writing and acknowledging what was claimed. The second step is
    retried with the entries in hand, because claiming them again would return nothing: they are no
    longer idle, and would only come back to a later cycle with one more delivery counted.
    `turn` is the page's place in the order pages were handed out (write_order.py).
    """
    ids = claimable_ids(rows, config.min_idle_ms)
    if not ids:
        order.give_up_turn(turn)
        return PageResult(Counts(), Incidents())
    try:
        claim = channel.run(partial(_claim, ids=ids, config=config))
    except BaseException:
        order.abandon()  # before passing the turn: the next page must not go on to a failing Redis
        order.give_up_turn(turn)
        raise
    deliveries = {row.entry_id: row.deliveries for row in rows}
    writes = _Writes()
    dead: list[tuple[bytes, DeadLetter]] = []
    for entry_id, fields in claim.entries:
        decision = decide(fields, deliveries[entry_id], config.max_deliveries)
        if isinstance(decision, bytes):
            writes.entry_ids.append(entry_id)
            writes.keys.append(decision)
            writes.fields.append(fields)
        else:
            dead.append((entry_id, decision))
    ticket = order.register(turn, writes.keys)
    try:
        outcome = channel.run(
            partial(_finish, writes=writes, dead=dead, ticket=ticket, order=order, deliveries=deliveries,
                    config=config)
        )  # fmt: skip
    except BaseException:
        order.abandon()  # before done(): a page waiting for this one must not go on to Redis
        raise
    finally:
        order.done(ticket)
    outcome.counts.claimed = len(claim.entries)
    outcome.counts.deleted += claim.deleted
    return PageResult(outcome.counts, outcome.alerts)


def _claim(channel: Channel, ids: list[bytes], config: PageSettings) -> _Claim:
    keys = config.keys
    wire = channel.wire(config.topology.node_of(keys.stream).pool)
    (reply,) = wire.call(
        [pack((b"XCLAIM", keys.stream, keys.group, keys.consumer, config.min_idle_ms, *ids))], 1
    )
    if isinstance(reply, Exception):
        raise reply
    # Before Redis 7.0 an entry deleted from the stream comes back as nil and stays pending.
    entries = [(item[0], item[1]) for item in reply if item is not None and item[0] is not None]
    deleted = 0
    if len(entries) < len(ids):
        returned = {entry_id for entry_id, _ in entries}
        deleted = acknowledge_deleted(wire, keys, [i for i in ids if i not in returned])
    return _Claim(entries, deleted)


def _finish(
    channel: Channel,
    writes: _Writes,
    dead: list[tuple[bytes, DeadLetter]],
    ticket: Ticket,
    order: WriteOrder,
    deliveries: dict[bytes, int],
    config: PageSettings,
) -> _Outcome:
    """Write the claimed tweets, acknowledge them, dead-letter the rest, and give the deliveries of refused
    attempts back; safe to repeat as a whole."""
    stream_node = config.topology.node_of(config.keys.stream)
    outcome = _Outcome(dead=list(dead))
    order.wait_for_older_writes(ticket)
    _write(channel, config, stream_node, writes, outcome)
    stream_wire = channel.wire(stream_node.pool)
    _acknowledge_and_dead_letter(stream_wire, config, outcome, deliveries)
    if outcome.refused:
        _give_back(stream_wire, config, outcome.refused, deliveries)
    return outcome


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
    channel: Channel,
    config: PageSettings,
    stream_node: Node,
    writes: _Writes,
    outcome: _Outcome,
    only: list[int] | None = None,
) -> None:
    """One HSET per entry, sent to every node at once; only writes that succeeded (and, on a cluster node
    with replicas, reached one) are acknowledged later. Writes refused with MOVED (the slot map is older
    than a resharding) are sent once more (`only` their positions) after the map is read again."""
    if not writes.keys:
        return
    topology, wait_ms = config.topology, config.wait_for_replica_ms
    keys, fields, entry_ids = writes.keys, writes.fields, writes.entry_ids
    batches: list[tuple[Node, list[int], Wire, bool]] = []
    moved: list[int] = []
    refusals: dict[tuple[str, str], list[str]] = {}  # (node, reason) -> messages: one log line each
    for node, indices in _by_node(topology, keys, only).items():
        wire = channel.wire(node.pool)
        # The stream's own node replicates the HSETs before the XACK that follows them, in order.
        wait = node is not stream_node and node.replicas > 0
        if len(indices) == len(keys):  # one node: the page as it is
            data = pack_hsets(zip(keys, fields, strict=True))
        else:
            data = pack_hsets((keys[i], fields[i]) for i in indices)
        wire.send(data + pack((b"WAIT", 1, wait_ms)) if wait else data, len(indices) + wait)
        batches.append((node, indices, wire, wait))
    for node, indices, wire, wait in batches:
        results = wire.read(len(indices) + wait)
        copied = _reached_a_replica(node, results.pop(), wait_ms) if wait else True
        # The usual case, checked in C: every HSET answered its count (an int), none an error reply.
        if copied and len(results) == len(indices) and set(map(type, results)) == _COUNTS_ONLY:
            outcome.written.extend(entry_ids[i] for i in indices)
            continue
        for index, result in zip(indices, results, strict=True):
            entry_id = entry_ids[index]
            error = result if isinstance(result, Exception) else None
            if error is None and copied:
                outcome.written.append(entry_id)
            elif error is None:
                _refuse(outcome, entry_id, "write", "NOREPLICAS", f"{node.name}: no replica confirmed")
            elif kind_of(error) == FailureKind.WRONG_TYPE:  # can never succeed
                outcome.dead.append((entry_id, DeadLetter(DeadLetterReason.WRITE_FAILED, str(error))))
            else:
                again = moved if only is None else None  # sent once more at most
                _write_refused(config, node, keys[index], index, entry_id, error, outcome, refusals, again)
    _log_refusals(refusals)
    if moved:
        topology.refresh_if_stale()  # once, whichever page worker gets there first
        _write(channel, config, stream_node, writes, outcome, moved)


def _by_node(topology: Topology, keys: list[bytes], only: list[int] | None) -> dict[Node, list[int]]:
    """Positions in `keys` by node: all of them, or only those in `only`."""
    if only is None:
        return topology.by_node(keys)
    grouped = topology.by_node([keys[i] for i in only])
    return {node: [only[i] for i in found] for node, found in grouped.items()}


def _write_refused(
    config: PageSettings,
    node: Node,
    key: bytes,
    index: int,
    entry_id: bytes,
    error: Exception,
    outcome: _Outcome,
    refusals: dict[tuple[str, str], list[str]],
    moved: list[int] | None,
) -> None:
    """A write refused for a passing reason. Refused with MOVED (the slot map is older than a
    resharding), and `moved` given: kept to be sent again to the slot's new node. Otherwise left pending,
    its delivery given back, and gathered for one log line per node and reason."""
    message, code = str(error), code_of(error)
    if kind_of(error) == FailureKind.CLUSTER_CHANGED:
        config.topology.mark_stale()
        if code == "MOVED" and moved is not None:
            moved.append(index)
            return
    _refuse(outcome, entry_id, "write", code, message)
    refusals.setdefault((node.name, code), []).append(f"{key!r}: {message}")


def _log_refusals(refusals: dict[tuple[str, str], list[str]]) -> None:
    for (name, code), messages in refusals.items():
        log.warning(
            "%s refused %d of this page's writes (%s), left pending for a later cycle; the first: %s",
            name, len(messages), code, messages[0],
        )  # fmt: skip


def _refuse(outcome: _Outcome, entry_id: bytes, step: str, reason: str, message: str) -> None:
    outcome.counts.failed += 1
    outcome.refused.append(entry_id)
    outcome.alerts.refuse(step, reason, message)


def _reached_a_replica(node: Node, reply: object, wait_ms: int) -> bool:
    if isinstance(reply, int) and reply >= 1:
        return True
    log.warning(
        "node %s has not copied this page's writes to a replica within %d ms (WAIT answered %r): they "
        "stay pending for a later cycle", node.name, wait_ms, reply,
    )  # fmt: skip
    return False


def _acknowledge_and_dead_letter(
    wire: Wire, config: PageSettings, outcome: _Outcome, deliveries: dict[bytes, int]
) -> None:
    keys = config.keys
    commands = []
    if outcome.written:
        commands.append(pack((b"XACK", keys.stream, keys.group, *outcome.written)))
    now_ms = int(time.time() * 1000)
    for entry_id, letter in outcome.dead:
        arguments = move_arguments(
            keys.group, keys.consumer, entry_id, letter.reason.value, deliveries[entry_id], now_ms,
            letter.detail, config.dead_letter_maxlen,
        )  # fmt: skip
        commands.append(
            pack((b"EVAL", MOVE_TO_DEAD_LETTER_LUA, 2, keys.stream, keys.dead_letter, *arguments))
        )
    if not commands:
        return
    results = wire.call(commands, len(commands))
    if outcome.written:
        ack_result = results.pop(0)
        if isinstance(ack_result, Exception):
            raise ack_result
        outcome.counts.processed += len(outcome.written)
    for (entry_id, letter), result in zip(outcome.dead, results, strict=True):
        if isinstance(result, Exception):
            message = str(result)
            _refuse(outcome, entry_id, "dead-letter", code_of(result), message)
            log.warning("dead-lettering %s was refused, left pending: %s", entry_id.decode(), message)
            continue
        moved, trimmed = parse_move_reply(result)
        outcome.alerts.dead_letters_trimmed += trimmed
        if moved == MoveOutcome.DEAD_LETTERED:
            outcome.counts.dead_lettered += 1
            log.warning("dead-lettered %s (%s): %s", entry_id.decode(), letter.reason.value, letter.detail)
        elif moved == MoveOutcome.DELETED:
            outcome.counts.deleted += 1


def _give_back(wire: Wire, config: PageSettings, refused: list[bytes], deliveries: dict[bytes, int]) -> None:
    """Refused attempts do not spend the delivery budget (give_back.py); if Redis refuses this too (it is
    read-only, say), the deliveries stay counted and the next cycle tries again."""
    (reply,) = wire.call([give_back_command(config.keys, ((i, deliveries[i]) for i in refused))], 1)
    if isinstance(reply, Exception):
        log.warning("could not give the deliveries of %d refused entries back: %s", len(refused), reply)


def _raise_first_error(replies: list[object]) -> None:
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
