"""One page of the reclaim cycle: claim its idle entries, write them, acknowledge them, dead-letter poison.

Every command here is safe to repeat after a lost reply: a repeated XCLAIM finds the entries no longer idle
and returns nothing (they stay pending under this consumer and come back after min-idle); HSET of the same
fields, WAIT and XACK are idempotent; XRANGE and XPENDING only read; the dead-letter script checks ownership
and pending state before it changes anything. So a page is retried step by step: the claim, then the
writes and acknowledgements with the claimed entries in hand.

On a cluster the tweet hashes live on other nodes than the stream. Each node's writes go out as one batch,
all nodes at once, and a node that has replicas is asked to WAIT for one of them before the entries are
acknowledged on the stream's node: otherwise a failover could keep the acknowledgement and lose the tweet.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

import redis

from handler.keys import StreamKeys
from handler.reclaim.dead_letter import MOVE_TO_DEAD_LETTER_LUA, MoveOutcome
from handler.reclaim.rules import (
    DeadLetter,
    DeadLetterReason,
    PendingRow,
    claimable_ids,
    decide,
    is_permanent_write_error,
)
from handler.reclaim.summary import Counts
from handler.transport.topology import Node, Topology
from handler.transport.wire import Channel, Wire, pack, pack_hsets

log = logging.getLogger(__name__)

WAIT_FOR_REPLICA_MS = 1000  # at most; and at most half the socket timeout, so WAIT never times the socket out
CLUSTER_CHANGED = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")


@dataclass(frozen=True)
class PageSettings:
    keys: StreamKeys
    topology: Topology
    min_idle_ms: int
    max_deliveries: int
    dead_letter_maxlen: int = 0
    wait_for_replica_ms: int = WAIT_FOR_REPLICA_MS


@dataclass
class _Outcome:
    written: list[bytes] = field(default_factory=list)
    dead: list[tuple[bytes, DeadLetter]] = field(default_factory=list)


@dataclass(frozen=True)
class PageResult:
    counts: Counts
    cluster_changed: bool  # a node answered MOVED/ASK/CLUSTERDOWN/TRYAGAIN: read the slot map again


@dataclass(frozen=True)
class _Claim:
    entries: list[tuple[bytes, list[bytes]]]  # (entry id, fields) of what XCLAIM returned
    deleted: int  # asked for, but gone from the stream: acknowledged


def handle_page(channel: Channel, rows: list[PendingRow], config: PageSettings) -> PageResult:
    """Claim, write, acknowledge and dead-letter one page of XPENDING rows; returns its counts.

    Two steps, each retried on fresh connections (and, on a cluster, a fresh slot map) after a
    connection error: claiming, then writing and acknowledging what was claimed. The second step is
    retried with the entries in hand, because claiming them again would return nothing: they are no
    longer idle, and would only come back to a later cycle with one more delivery counted.
    """
    ids = claimable_ids(rows, config.min_idle_ms)
    if not ids:
        return PageResult(Counts(), cluster_changed=False)
    claim = channel.run(partial(_claim, ids=ids, config=config))
    deliveries = {row.entry_id: row.deliveries for row in rows}
    counts, cluster_changed = channel.run(partial(_finish, claim=claim, deliveries=deliveries, config=config))
    counts.claimed = len(claim.entries)
    counts.deleted += claim.deleted
    return PageResult(counts, cluster_changed)


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
    channel: Channel, claim: _Claim, deliveries: dict[bytes, int], config: PageSettings
) -> tuple[Counts, bool]:
    """Write the claimed tweets, acknowledge them and dead-letter the rest; safe to repeat as a whole."""
    stream_node = config.topology.node_of(config.keys.stream)
    counts = Counts()
    outcome = _Outcome()
    writes: list[tuple[bytes, bytes, list[bytes]]] = []  # (entry id, tweet key, fields)
    for entry_id, fields in claim.entries:
        decision = decide(fields, deliveries[entry_id], config.max_deliveries)
        if isinstance(decision, bytes):
            writes.append((entry_id, decision, fields))
        else:
            outcome.dead.append((entry_id, decision))
    cluster_changed = _write(channel, config, stream_node, writes, outcome, counts)
    _acknowledge_and_dead_letter(channel.wire(stream_node.pool), config, outcome, deliveries, counts)
    return counts, cluster_changed


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
    writes: list[tuple[bytes, bytes, list[bytes]]],
    outcome: _Outcome,
    counts: Counts,
) -> bool:
    """One HSET per entry, sent to every node at once; only writes that succeeded (and, on a cluster node
    with replicas, reached one) are acknowledged later. True when a node said the cluster changed."""
    cluster_changed = False
    if not writes:
        return cluster_changed
    topology, wait_ms = config.topology, config.wait_for_replica_ms
    by_node: dict[Node, list[int]] = {}
    for index, (_, key, _) in enumerate(writes):
        by_node.setdefault(topology.node_of(key), []).append(index)
    batches: list[tuple[Node, list[int], Wire, bool]] = []
    for node, indices in by_node.items():
        wire = channel.wire(node.pool)
        # The stream's own node replicates the HSETs before the XACK that follows them, in order.
        wait = node is not stream_node and node.replicas > 0
        data = pack_hsets((writes[i][1], writes[i][2]) for i in indices)
        wire.send(data + pack((b"WAIT", 1, wait_ms)) if wait else data, len(indices) + wait)
        batches.append((node, indices, wire, wait))
    for node, indices, wire, wait in batches:
        results = wire.read(len(indices) + wait)
        copied = _reached_a_replica(node, results.pop(), wait_ms) if wait else True
        for index, result in zip(indices, results, strict=True):
            entry_id, key, _ = writes[index]
            if not isinstance(result, Exception):
                if copied:
                    outcome.written.append(entry_id)
                else:
                    counts.failed += 1
                continue
            message = str(result)
            if is_permanent_write_error(message):
                outcome.dead.append((entry_id, DeadLetter(DeadLetterReason.WRITE_FAILED, message)))
                continue
            counts.failed += 1
            cluster_changed = cluster_changed or message.startswith(CLUSTER_CHANGED)
            log.warning("writing %r failed, left pending for a later cycle: %s", key, message)
    return cluster_changed


def _reached_a_replica(node: Node, reply: object, wait_ms: int) -> bool:
    if isinstance(reply, int) and reply >= 1:
        return True
    log.warning(
        "node %s has not copied this page's writes to a replica within %d ms (WAIT answered %r): they "
        "stay pending for a later cycle", node.name, wait_ms, reply,
    )  # fmt: skip
    return False


def _acknowledge_and_dead_letter(
    wire: Wire,
    config: PageSettings,
    outcome: _Outcome,
    deliveries: dict[bytes, int],
    counts: Counts,
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
