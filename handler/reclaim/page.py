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
from handler.logs import clip
from handler.reclaim.dead_letter import (
    MOVE_TO_DEAD_LETTER_LUA,
    MoveOutcome,
    move_arguments,
    parse_move_reply,
    relay_move,
)
from handler.reclaim.give_back import give_back_command
from handler.reclaim.rules import (
    DeadLetter,
    DeadLetterReason,
    PendingRow,
    claimable_ids,
    decide,
    resp_bytes_over,
)
from handler.reclaim.summary import Counts, Incidents
from handler.reclaim.write_order import Ticket, WriteOrder
from handler.transport.failures import LOST_CONNECTION, FailureKind, code_of, kind_of
from handler.transport.topology import Node, Topology
from handler.transport.wire import Channel, RawReply, ReplyTooLarge, Wire, pack, pack_hsets

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
    entry_max_bytes: int = 8 << 20  # ENTRY_MAX_BYTES
    page_max_bytes: int = 16 << 20  # PAGE_MAX_BYTES


# A poison entry read whole is moved by one Lua call when it is this small (that call then takes well under a
# millisecond); a bigger one is relayed a piece at a time (dead_letter.relay_move), so that no script of the
# monitor holds Redis for long (docs/performance.md).
SCRIPT_MOVE_MAX_BYTES = 64 * 1024
# Entries a narrowed page asks for in one round trip: Redis makes every reply asked for, even those the
# monitor then gives up reading (PAGE_MAX_BYTES), so a page of big entries is not asked for whole each time.
_READ_AT_ONCE = 128


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
    # (entry id, fields) of what XCLAIM returned; None when its reply was over PAGE_MAX_BYTES (the entries
    # were claimed, but are read a few at a time: _handle_narrowed)
    entries: list[tuple[bytes, list[bytes]]] | None
    deleted: int  # asked for, but gone from the stream: acknowledged
    poison: list[bytes] = field(default_factory=list)  # delivered too often: claimed with JUSTID, never read


def handle_page(
    channel: Channel, rows: list[PendingRow], config: PageSettings, order: WriteOrder, turn: int
) -> PageResult:
    """Claim, write, acknowledge and dead-letter one page of XPENDING rows; returns its counts.

    Two steps, each retried on fresh connections (and, on a cluster, a fresh slot map) after a
    connection error: claiming, then writing and acknowledging what was claimed. The second step is
    retried with the entries in hand, because claiming them again would return nothing: they are no
    longer idle, and would only come back to a later cycle with one more delivery counted.
    `turn` is the page's place in the order pages were handed out (write_order.py).

    What the page may cost is bounded whatever the producer wrote: an entry its XPENDING row says was
    delivered more than MAX_DELIVERIES times is claimed with JUSTID and moved unread; an XCLAIM reply over
    PAGE_MAX_BYTES is given up (its connection closed) and the page read again a few entries at a time,
    each over ENTRY_MAX_BYTES dead-lettered as too-large (_handle_narrowed); and a second step that keeps
    losing the connection while Redis answers is narrowed down to the entry at fault (_finish_or_narrow).
    """
    ids = claimable_ids(rows, config.min_idle_ms)
    if not ids:
        order.give_up_turn(turn)
        return PageResult(Counts(), Incidents())
    limit, poison = config.max_deliveries, []
    if limit and any(row.deliveries > limit for row in rows):
        too_often = {row.entry_id for row in rows if row.deliveries > limit}
        poison = [i for i in ids if i in too_often]
        ids = [i for i in ids if i not in too_often]
    try:
        claim = channel.run(partial(_claim, ids=ids, poison=poison, config=config))
        deleted = 0
        if len(claim.poison) < len(poison):
            deleted = channel.run(partial(_gone, ids=poison, claimed=claim.poison, config=config))
    except BaseException:
        order.abandon()  # before passing the turn: the next page must not go on to a failing Redis
        order.give_up_turn(turn)
        raise
    deliveries = {row.entry_id: row.deliveries for row in rows}
    dead: list[tuple[bytes, DeadLetter]] = [
        (entry_id, _delivered_too_often(deliveries[entry_id], limit)) for entry_id in claim.poison
    ]
    if claim.entries is None:
        narrowed = _handle_narrowed(channel, ids, dead, config, order, turn, deliveries)
        narrowed.counts.deleted += deleted
        return narrowed
    writes = _sort(claim.entries, dead, deliveries, config)
    ticket = order.register(turn, writes.keys)
    try:
        outcome = _finish_or_narrow(channel, writes, dead, ticket, order, deliveries, config)
    except BaseException:
        order.abandon()  # before done(): a page waiting for this one must not go on to Redis
        raise
    finally:
        order.done(ticket)
    outcome.counts.claimed = len(claim.entries) + len(claim.poison)
    outcome.counts.deleted += claim.deleted + deleted
    return PageResult(outcome.counts, outcome.alerts)


def _gone(channel: Channel, ids: list[bytes], claimed: list[bytes], config: PageSettings) -> int:
    """Of the poison asked for with JUSTID and not returned, how many are no longer pending: from Redis 7.0
    XCLAIM drops an entry deleted from the stream (before, it is returned, and the move acknowledges it).
    Counted as deleted without XRANGE, which would read a poison entry whole."""
    keys, returned = config.keys, set(claimed)
    missing = [i for i in ids if i not in returned]
    wire = channel.wire(config.topology.node_of(keys.stream).pool)
    rows = wire.call([pack((b"XPENDING", keys.stream, keys.group, i, i, 1)) for i in missing], len(missing))
    _raise_first_error(rows)
    return sum(1 for row in rows if not row)


def _delivered_too_often(deliveries: int, limit: int) -> DeadLetter:
    return DeadLetter(
        DeadLetterReason.MAX_DELIVERIES,
        f"delivered {deliveries} times, more than MAX_DELIVERIES={limit}",
        True,
    )


def _sort(
    entries: list[tuple[bytes, list[bytes]]],
    dead: list[tuple[bytes, DeadLetter]],
    deliveries: dict[bytes, int],
    config: PageSettings,
) -> _Writes:
    """Claimed entries read whole: the tweets to write, returned, and the dead letters, added to `dead`.
    An entry over ENTRY_MAX_BYTES is too large however it came to be read: its page was under
    PAGE_MAX_BYTES, or a narrowed read judged its bound only after a receive had passed it (wire.py)."""
    writes = _Writes()
    for entry_id, fields in entries:
        if resp_bytes_over(entry_id, fields, config.entry_max_bytes):
            dead.append((entry_id, _too_large(entry_id, config)))
            continue
        decision = decide(fields, deliveries[entry_id], config.max_deliveries)
        if isinstance(decision, bytes):
            writes.entry_ids.append(entry_id)
            writes.keys.append(decision)
            writes.fields.append(fields)
        else:
            dead.append((entry_id, _to_move(decision, fields)))
    return writes


def _too_large(entry_id: bytes, config: PageSettings) -> DeadLetter:
    """An entry over ENTRY_MAX_BYTES: moved a piece at a time (relayed), never by one script."""
    log.warning("entry %s is over ENTRY_MAX_BYTES: dead-lettered as too-large", clip(entry_id))
    detail = f"over ENTRY_MAX_BYTES={config.entry_max_bytes} bytes of RESP"
    return DeadLetter(DeadLetterReason.TOO_LARGE, detail, True)


def _to_move(letter: DeadLetter, fields: list[bytes]) -> DeadLetter:
    """A poison entry read whole: moved by one script if it is small, else relayed (SCRIPT_MOVE_MAX_BYTES)."""
    if sum(map(len, fields)) + 16 * len(fields) > SCRIPT_MOVE_MAX_BYTES:
        return letter._replace(relayed=True)
    return letter


def _claim(channel: Channel, ids: list[bytes], poison: list[bytes], config: PageSettings) -> _Claim:
    keys = config.keys
    pool = config.topology.node_of(keys.stream).pool
    wire = channel.wire(pool)
    head = (b"XCLAIM", keys.stream, keys.group, keys.consumer, config.min_idle_ms)
    commands = [pack((*head, *poison, b"JUSTID"))] if poison else []
    if ids:
        commands.append(pack((*head, *ids)))
    wire.send(b"".join(commands), len(commands))
    claimed_poison: list[bytes] = []
    if poison:
        (justid,) = wire.read(1)
        if isinstance(justid, Exception):
            if ids:
                channel.drop(pool)  # the page's XCLAIM reply is left unread: a new connection next time
            raise justid
        claimed_poison = [entry_id for entry_id in justid if entry_id is not None]
    if not ids:
        return _Claim([], 0, claimed_poison)
    try:
        (reply,) = wire.read_bounded(1, config.page_max_bytes)
    except ReplyTooLarge as exc:
        channel.drop(pool)
        log.warning(
            "this page's XCLAIM reply is over PAGE_MAX_BYTES (%s): reading it a few entries at a time", exc
        )
        return _Claim(None, 0, claimed_poison)
    if isinstance(reply, Exception):
        raise reply
    # Before Redis 7.0 an entry deleted from the stream comes back as nil and stays pending.
    entries = [(item[0], item[1]) for item in reply if item is not None and item[0] is not None]
    deleted = 0
    if len(entries) < len(ids):
        returned = {entry_id for entry_id, _ in entries}
        missing = [i for i in ids if i not in returned]
        rows = wire.call(
            [pack((b"XPENDING", keys.stream, keys.group, i, i, 1)) for i in missing], len(missing)
        )
        _raise_first_error(rows)
        consumer = keys.consumer.encode()
        if any(row and row[0][1] == consumer for row in rows):
            # Held but not returned: claimed by an attempt whose reply was lost (this is a retry), or deleted
            # before Redis 7.0 (a nil): read again a few at a time, whatever their size.
            return _Claim(None, 0, claimed_poison)
        deleted = acknowledge_deleted(
            wire, keys, [i for i, row in zip(missing, rows, strict=True) if not row]
        )
    return _Claim(entries, deleted, claimed_poison)


def _handle_narrowed(
    channel: Channel,
    ids: list[bytes],
    poison: list[tuple[bytes, DeadLetter]],
    config: PageSettings,
    order: WriteOrder,
    turn: int,
    deliveries: dict[bytes, int],
) -> PageResult:
    """A page whose XCLAIM reply was over PAGE_MAX_BYTES: its entries were claimed, so they are read again
    with XRANGE, a few at a time (at most PAGE_MAX_BYTES of them, each at most ENTRY_MAX_BYTES), and each
    batch written and acknowledged before the next is read. An entry over ENTRY_MAX_BYTES is dead-lettered
    as too-large without being read further. Its keys are not known before it writes, so the page takes the
    write order exclusively (write_order.py)."""
    ticket = order.register_exclusive(turn)
    total, claimed, dead = _Outcome(), len(poison), list(poison)
    try:
        order.wait_for_older_writes(ticket)
        pending = channel.run(partial(_held, ids=ids, config=config))
        claimed += len(pending)
        at_once = _READ_AT_ONCE
        while pending or dead:
            entries: list[tuple[bytes, list[bytes]]] = []
            deleted: list[bytes] = []
            read, too_large = 0, None
            if pending:
                entries, deleted, read, too_large, at_once = _read_or_skip(
                    channel, pending, at_once, total, config
                )
            if too_large is not None:
                dead.append((pending[read], _too_large(pending[read], config)))
                read += 1
            pending = pending[read:]
            writes = _sort(entries, dead, deliveries, config)
            del entries
            outcome = _finish_or_narrow(channel, writes, dead, ticket, order, deliveries, config)
            if deleted:
                stream_wire = partial(_acknowledge_deleted_step, candidates=deleted, config=config)
                outcome.counts.deleted += channel.run(stream_wire)
            _merge(total, outcome)
            dead = []
    except BaseException:
        order.abandon()
        raise
    finally:
        order.done(ticket)
    total.counts.claimed = claimed
    return PageResult(total.counts, total.alerts)


def _read_or_skip(
    channel: Channel, pending: list[bytes], at_once: int, total: _Outcome, config: PageSettings
) -> tuple[list[tuple[bytes, list[bytes]]], list[bytes], int, bytes | None, int]:
    """_read_some of the first `at_once` of `pending`, and how many to read next time. When Redis keeps
    dropping the connection but answers, they are read one at a time down to the entry at fault: Redis drops
    it at every reply that carries that entry (one over its client-output-buffer-limit, say), which is then
    passed over, left pending with its delivery counted, as in _finish_or_narrow (past MAX_DELIVERIES it is
    moved unread)."""
    try:
        return *channel.run(partial(_read_some, ids=pending[:at_once], config=config)), at_once
    except LOST_CONNECTION as exc:
        if not _tied_to_an_entry(exc, channel, config):
            raise
        if at_once > 1:
            return [], [], 0, None, 1
        total.counts.failed += 1
        total.alerts.refuse("write", "LOST", clip(str(exc)))
        log.warning(
            "entry %s makes Redis drop the connection when read (%s): left pending, its delivery counted",
            clip(pending[0]),
            clip(str(exc)),
        )
        return [], [], 1, None, _READ_AT_ONCE


def _held(channel: Channel, ids: list[bytes], config: PageSettings) -> list[bytes]:
    """Of `ids`, those this consumer now holds (what a given-up XCLAIM claimed), in their order."""
    keys = config.keys
    wire = channel.wire(config.topology.node_of(keys.stream).pool)
    replies = wire.call([pack((b"XPENDING", keys.stream, keys.group, i, i, 1)) for i in ids], len(ids))
    _raise_first_error(replies)
    consumer = keys.consumer.encode()
    return [i for i, row in zip(ids, replies, strict=True) if row and row[0][1] == consumer]


def _read_some(
    channel: Channel, ids: list[bytes], config: PageSettings
) -> tuple[list[tuple[bytes, list[bytes]]], list[bytes], int, bytes | None]:
    """Read entries from the head of `ids` with XRANGE, up to PAGE_MAX_BYTES in all: (entries read, those
    found deleted, how many of `ids` were read, and the ID of the next one if it alone is over
    ENTRY_MAX_BYTES). Reading is only reading: safe to repeat."""
    keys = config.keys
    pool = config.topology.node_of(keys.stream).pool
    wire = channel.wire(pool)
    ids = ids[:_READ_AT_ONCE]
    wire.send(b"".join(pack((b"XRANGE", keys.stream, i, i)) for i in ids), len(ids))
    too_large = None
    try:
        replies = wire.read_bounded(len(ids), config.entry_max_bytes, config.page_max_bytes)
    except ReplyTooLarge as exc:
        channel.drop(pool)
        replies = exc.replies
        if exc.one or not replies:
            too_large = ids[len(replies)]
    _raise_first_error(replies)
    entries = [(reply[0][0], reply[0][1]) for reply in replies if reply]
    deleted = [entry_id for entry_id, reply in zip(ids, replies, strict=False) if not reply]
    return entries, deleted, len(replies), too_large


def _acknowledge_deleted_step(channel: Channel, candidates: list[bytes], config: PageSettings) -> int:
    wire = channel.wire(config.topology.node_of(config.keys.stream).pool)
    return acknowledge_deleted(wire, config.keys, candidates)


def _merge(total: _Outcome, outcome: _Outcome) -> None:
    total.written += outcome.written
    total.dead += outcome.dead
    total.refused += outcome.refused
    total.counts += outcome.counts
    total.alerts += outcome.alerts


def _finish_or_narrow(
    channel: Channel,
    writes: _Writes,
    dead: list[tuple[bytes, DeadLetter]],
    ticket: Ticket,
    order: WriteOrder,
    deliveries: dict[bytes, int],
    config: PageSettings,
) -> _Outcome:
    """The second step, retried on fresh connections; when every attempt lost the connection but Redis
    still answers, the failure is taken to be one entry's (a key or reply over a server limit, say): the
    step is tried again on halves, then on single entries, so the valid entries are written and only the
    culprit is left pending, its delivery counted."""
    step = partial(_finish, ticket=ticket, order=order, deliveries=deliveries, config=config)
    try:
        return channel.run(partial(step, writes=writes, dead=dead))
    except LOST_CONNECTION as exc:
        if not _tied_to_an_entry(exc, channel, config):
            raise
        log.warning("a page's writes lost the connection although Redis answers (%s): narrowing it down", exc)
    total, dead = _Outcome(), list(dead)
    units: list[tuple[str, int]] = [("w", i) for i in range(len(writes.keys))] + [
        ("d", i) for i in range(len(dead))
    ]
    stack = [units]
    while stack:
        group = stack.pop()
        part = _Writes(
            [writes.entry_ids[i] for kind, i in group if kind == "w"],
            [writes.keys[i] for kind, i in group if kind == "w"],
            [writes.fields[i] for kind, i in group if kind == "w"],
        )
        part_dead = [dead[i] for kind, i in group if kind == "d"]
        try:
            _merge(total, step(channel, writes=part, dead=part_dead))
            continue
        except LOST_CONNECTION as exc:
            channel.close()
            if not _tied_to_an_entry(exc, channel, config):
                raise
            error = exc
        if len(group) > 1:
            half = len(group) // 2
            stack += [group[half:], group[:half]]  # the first half next: stream order
            continue
        kind, index = group[0]
        if kind == "d" and dead[index][1].relayed:
            # Redis refused to be sent this entry's values (one over proto-max-bulk-len, say), which only a
            # script can copy: moved by one, as without the relay's rights (_scripted_move).
            dead[index] = (dead[index][0], dead[index][1]._replace(relayed=False))
            stack.append(group)
            continue
        entry_id = writes.entry_ids[index] if kind == "w" else dead[index][0]
        total.counts.failed += 1
        total.alerts.refuse("write" if kind == "w" else "dead-letter", "LOST", clip(str(error)))
        log.warning(
            "entry %s makes Redis drop the connection (%s): left pending, its delivery counted",
            clip(entry_id),
            clip(str(error)),
        )
    return total


def _tied_to_an_entry(error: BaseException, channel: Channel, config: PageSettings) -> bool:
    """Whether a lost connection may be one entry's doing: Redis dropped it (a timeout says the server or
    the network stalled, never narrowed down) and still answers PING on a fresh connection, once."""
    if isinstance(error, redis.exceptions.TimeoutError):
        return False
    pool = config.topology.node_of(config.keys.stream).pool
    channel.close()
    try:
        channel.wire(pool).call([pack((b"PING",))], 1)
    except LOST_CONNECTION:
        channel.close()
        return False
    return True


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
    rows = wire.call(
        [pack((b"XPENDING", keys.stream, keys.group, entry_id, entry_id, 1)) for entry_id in candidates],
        len(candidates),
    )
    _raise_first_error(rows)
    in_stream = _in_stream(wire, keys.stream, candidates)
    deleted, to_ack = 0, []
    consumer = keys.consumer.encode()
    for entry_id, still_in_stream, pending_row in zip(candidates, in_stream, rows, strict=True):
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


def _in_stream(wire: Wire, stream: str, ids: list[bytes]) -> list[bool]:
    """Whether each entry is still in the stream, without holding one whole: an entry found is read off the
    wire and dropped as it arrives (it may be over every bound: the processor finished it meanwhile)."""
    wire.send(b"".join(pack((b"XRANGE", stream, entry_id, entry_id)) for entry_id in ids), 0)
    try:
        reply, found = RawReply(wire.socket()), []
        for _ in ids:
            entries = reply.header(b"*")
            for _ in range(entries):
                reply.header(b"*")  # [id, fields]
                reply.relay(1, _dropped)
                reply.relay(reply.header(b"*"), _dropped)
            found.append(entries > 0)
    except BaseException:
        wire.mark_broken()
        raise
    return found


def _dropped(_piece: bytes) -> None:
    pass


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
                letter = DeadLetter(DeadLetterReason.WRITE_FAILED, clip(str(error)))
                outcome.dead.append((entry_id, _to_move(letter, fields[index])))
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
    message, code = clip(str(error)), code_of(error)
    if kind_of(error) == FailureKind.CLUSTER_CHANGED:
        config.topology.mark_stale()
        if code == "MOVED" and moved is not None:
            moved.append(index)
            return
    _refuse(outcome, entry_id, "write", code, message)
    refusals.setdefault((node.name, code), []).append(f"{clip(key)}: {clip(message)}")


def _log_refusals(refusals: dict[tuple[str, str], list[str]]) -> None:
    for (name, code), messages in refusals.items():
        log.warning(
            "%s refused %d of this page's writes (%s), left pending for a later cycle; the first: %s",
            name,
            len(messages),
            code,
            messages[0],
        )


def _refuse(outcome: _Outcome, entry_id: bytes, step: str, reason: str, message: str) -> None:
    outcome.counts.failed += 1
    outcome.refused.append(entry_id)
    outcome.alerts.refuse(step, reason, message)


def _reached_a_replica(node: Node, reply: object, wait_ms: int) -> bool:
    if isinstance(reply, int) and reply >= 1:
        return True
    log.warning(
        "node %s has not copied this page's writes to a replica within %d ms (WAIT answered %r): they "
        "stay pending for a later cycle",
        node.name,
        wait_ms,
        reply,
    )
    return False


def _acknowledge_and_dead_letter(
    wire: Wire, config: PageSettings, outcome: _Outcome, deliveries: dict[bytes, int]
) -> None:
    keys = config.keys
    commands = []
    if outcome.written:
        commands.append(pack((b"XACK", keys.stream, keys.group, *outcome.written)))
    now_ms = int(time.time() * 1000)
    scripted = [(entry_id, letter) for entry_id, letter in outcome.dead if not letter.relayed]
    for entry_id, letter in scripted:
        arguments = move_arguments(
            keys.group,
            keys.consumer,
            entry_id,
            letter.reason.value,
            deliveries[entry_id],
            now_ms,
            letter.detail,
            config.dead_letter_maxlen,
        )
        commands.append(
            pack((b"EVAL", MOVE_TO_DEAD_LETTER_LUA, 2, keys.stream, keys.dead_letter, *arguments))
        )
    results = wire.call(commands, len(commands)) if commands else []
    if outcome.written:
        ack_result = results.pop(0)
        if isinstance(ack_result, Exception):
            raise ack_result
        outcome.counts.processed += len(outcome.written)
    for (entry_id, letter), result in zip(scripted, results, strict=True):
        _count_move(outcome, entry_id, letter, result)
    for entry_id, letter in outcome.dead:
        if letter.relayed:
            relayed: object
            try:
                relayed = relay_move(
                    wire.pool,
                    keys.stream,
                    keys.dead_letter,
                    keys.group,
                    keys.consumer,
                    entry_id,
                    letter.reason.value,
                    deliveries[entry_id],
                    letter.detail,
                    config.dead_letter_maxlen,
                )
            except redis.exceptions.ResponseError as exc:
                relayed = exc
                if kind_of(exc) == FailureKind.NOT_PERMITTED:  # an ACL rule without +multi +exec +xdel
                    relayed = _scripted_move(wire, config, entry_id, letter, deliveries[entry_id], exc)
            _count_move(outcome, entry_id, letter, relayed)


def _scripted_move(
    wire: Wire, config: PageSettings, entry_id: bytes, letter: DeadLetter, deliveries: int, refused: Exception
) -> object:
    """The move in one script, when the user may not relay it: right, but it holds Redis for as long as the
    entry takes to copy (docs/security.md lists the rights the relay needs)."""
    log.warning(
        "relaying a dead letter was refused (%s): moving %s with one script",
        clip(str(refused)),
        clip(entry_id),
    )
    keys = config.keys
    arguments = move_arguments(
        keys.group,
        keys.consumer,
        entry_id,
        letter.reason.value,
        deliveries,
        int(time.time() * 1000),
        letter.detail,
        config.dead_letter_maxlen,
    )
    (reply,) = wire.call(
        [pack((b"EVAL", MOVE_TO_DEAD_LETTER_LUA, 2, keys.stream, keys.dead_letter, *arguments))], 1
    )
    return reply


def _count_move(outcome: _Outcome, entry_id: bytes, letter: DeadLetter, result: object) -> None:
    if isinstance(result, Exception):
        message = clip(str(result))
        _refuse(outcome, entry_id, "dead-letter", code_of(result), message)
        log.warning("dead-lettering %s was refused, left pending: %s", clip(entry_id), message)
        return
    moved, trimmed = result if isinstance(result, tuple) else parse_move_reply(result)  # type: ignore[arg-type]
    outcome.alerts.dead_letters_trimmed += trimmed
    if moved == MoveOutcome.DEAD_LETTERED:
        outcome.counts.dead_lettered += 1
        log.warning("dead-lettered %s (%s): %s", clip(entry_id), letter.reason.value, letter.detail)
    elif moved == MoveOutcome.DELETED:
        outcome.counts.deleted += 1
    elif moved == MoveOutcome.NOT_WRITTEN:
        _refuse(outcome, entry_id, "dead-letter", "ERR", "the relayed dead letter was not written")


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
