"""Operating on the dead-letter stream: list, show, replay into the main stream, purge.

Both layouts of a dead letter (reclaim/dead_letter.py) are read here: a continued one is shown, replayed and
purged together with its parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NoReturn

import redis

from handler.errors import MonitorError
from handler.keys import StreamKeys, display_name, key_name, raw_name
from handler.ops.rights import MissingRightError, is_refused_right, needs
from handler.reclaim.dead_letter import (
    CONTINUED,
    FIELD_COUNT,
    METADATA_FIELD_COUNT,
    PARTS,
    is_part,
    join_parts,
    split_dead_letter,
)
from handler.reclaim.rate import ClaimPacer
from handler.reclaim.rules import next_id
from handler.transport.client import Client, command, server_holding, text
from handler.transport.failures import FailureKind, kind_of
from handler.transport.wire import RawReply, Wire, pack

REPLAY_ATTEMPTS = 100  # a replay that keeps meeting concurrent changes gives up with a message
log = logging.getLogger(__name__)
PURGE_BATCH = 1000


@dataclass(frozen=True)
class DeadLetterEntry:
    entry_id: bytes
    metadata: dict[bytes, bytes]
    original: list[bytes]  # for a continued dead letter, filled in only when its parts were read
    part_ids: list[bytes] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """A JSON-friendly summary line."""
        meta = {
            k.decode().removeprefix("dlq:"): v.decode(errors="replace")
            for k, v in self.metadata.items()
            if k not in (PARTS, FIELD_COUNT)
        }
        return {"id": self.entry_id.decode(), **meta, "fields": self.field_count}

    @property
    def field_count(self) -> int:
        return int(self.metadata.get(FIELD_COUNT, len(self.original) // 2))


def _heads(entries: Sequence[Any]) -> list[DeadLetterEntry]:
    """Dead letters from XRANGE's entries, leaving out the parts of continued ones."""
    parsed = []
    for entry_id, fields in entries:
        values = list(fields)
        if not is_part(values):
            metadata, original = split_dead_letter(values)
            parsed.append(DeadLetterEntry(entry_id, metadata, original))
    return parsed


# What the listing keeps of each entry it reads: the metadata, dlq:parts and dlq:fields (a continued dead
# letter's), each value cut to SKIM_VALUE_BYTES; the rest of the entry is read off the wire and dropped.
SKIM_VALUES = 2 * METADATA_FIELD_COUNT + 4
SKIM_VALUE_BYTES = 4096


def _skim(
    client: Client, keys: StreamKeys, verb: str, start: bytes | str, end: bytes | str, count: int, keep: int
) -> list[tuple[bytes, list[bytes], int]]:
    """`XRANGE`/`XREVRANGE` of the dead-letter stream, read as it streams in: (ID, its first `keep` values,
    how many values it has) per entry. Memory stays flat in the size of the dead letters: a 20 MB one costs
    what its first fields do."""
    pool = server_holding(client, keys.dead_letter).connection_pool
    wire = Wire(pool)
    try:
        wire.send(pack((verb, keys.dead_letter, start, end, "COUNT", count)), 0)
        reply = RawReply(wire.socket())
        entries = []
        for _ in range(reply.header(b"*")):
            reply.header(b"*")
            entry_id = reply.bulk(SKIM_VALUE_BYTES) or b""
            values = reply.header(b"*")
            kept = [reply.bulk(SKIM_VALUE_BYTES) or b"" for _ in range(min(keep, values))]
            reply.relay(values - len(kept), _dropped)
            entries.append((entry_id, kept, values))
        return entries
    except BaseException:
        wire.mark_broken()
        raise
    finally:
        wire.close()


def _dropped(_piece: bytes) -> None:
    """What _skim does with the values it does not keep."""


def _skimmed_head(entry_id: bytes, values: list[bytes], total: int) -> DeadLetterEntry:
    """A dead letter's listing from its first values: an inline one's field count from how many it has."""
    metadata, _ = split_dead_letter(values)
    if metadata.get(b"dlq:version") != CONTINUED:
        metadata[FIELD_COUNT] = b"%d" % ((total - 2 * METADATA_FIELD_COUNT) // 2)
    return DeadLetterEntry(entry_id, metadata, [])


def list_dead_letters(
    client: Client, keys: StreamKeys, count: int, newest_first: bool
) -> list[DeadLetterEntry]:
    """Up to `count` dead letters, oldest (or newest) first: only their metadata is kept (_skim)."""
    found: list[DeadLetterEntry] = []
    verb, start, end = ("XREVRANGE", b"+", b"-") if newest_first else ("XRANGE", b"-", b"+")
    while len(found) < count:
        with needs(verb, key=keys.dead_letter):
            entries = _skim(client, keys, verb, start, end, count, SKIM_VALUES)
        if not entries:
            break
        found += [_skimmed_head(*entry) for entry in entries if not is_part(entry[1])]
        last = entries[-1][0]
        if newest_first:
            if last in (b"0-0", b"0-1"):
                break
            start = _previous(last)
        else:
            start = next_id(last)
    return found[:count]


def _previous(entry_id: bytes) -> bytes:
    ms, _, seq = entry_id.partition(b"-")
    return b"%d-%d" % (int(ms), int(seq) - 1) if int(seq) else b"%d-%d" % (int(ms) - 1, 2**64 - 1)


def show_dead_letter(client: Client, keys: StreamKeys, entry_id: str | bytes) -> DeadLetterEntry | None:
    """One dead letter with every original field (a continued one's parts joined); None if there is none."""
    with needs("XRANGE", key=keys.dead_letter):
        entries = command(client, "XRANGE", keys.dead_letter, entry_id, entry_id)
    heads = _heads(entries)
    if not heads:
        return None
    head = heads[0]
    if head.metadata.get(b"dlq:version") != CONTINUED:
        return head
    parts = command(
        client, "XRANGE", keys.dead_letter, next_id(head.entry_id), "+", "COUNT", int(head.metadata[PARTS])
    )
    original = join_parts(head.entry_id, head.metadata, parts)
    return DeadLetterEntry(head.entry_id, head.metadata, original, [part_id for part_id, _ in parts])


def all_ids(
    client: Client, keys: StreamKeys, batch: int = 1000, heads_only: bool = False
) -> Iterator[list[bytes]]:
    """Every entry ID of the dead-letter stream (or only the dead letters' own, without parts), a batch at a
    time, oldest first."""
    start: bytes | str = "-"
    while True:
        with needs("XRANGE", key=keys.dead_letter):
            entries = _skim(client, keys, "XRANGE", start, "+", batch, 2)  # enough to tell a part (is_part)
        if not entries:
            return
        yield [entry_id for entry_id, values, _ in entries if not (heads_only and is_part(values))]
        start = next_id(entries[-1][0])


# Every script here runs each command with pcall and says which one Redis refused: {command, key, error}.
# Redis does not roll a script back, so each is ordered so that a refusal changes nothing: what it reads and
# the rights its writes need come first, and the first write is the only one Redis may refuse.
_FAILED = "local function failed(reply) return type(reply) == 'table' and reply.err ~= nil end\n"

# KEYS: dead-letter stream, main stream (same hash slot). ARGV: group.
# The rights a replay needs, proven before it writes anything: the group exists (NOGROUP: nobody would read
# what is replayed), the dead letters can be read, the main stream's type read (the continued path's
# deletion asks it), and deleted from (XDEL of 0-0, an ID no entry has, deletes nothing). Adding to the main
# stream cannot be tried without writing before Redis 7.0 (ACL checks from scripts came with it): there the
# add is each replay's first write, so a refusal changes nothing. Returns {} or the refused step.
PROVE_REPLAY_LUA = (
    _FAILED
    + """
local steps = {
  {'XPENDING', KEYS[2], ARGV[1]},
  {'XRANGE', KEYS[1], '0-0', '0-0'},
  {'TYPE', KEYS[2]},
  {'XDEL', KEYS[1], '0-0'},
}
for _, step in ipairs(steps) do
  local reply = redis.pcall(unpack(step))
  if failed(reply) then
    return {step[1], step[2], reply.err}
  end
end
if redis.acl_check_cmd and not redis.acl_check_cmd('XADD', KEYS[2], '*', 'field', 'value') then
  return {'XADD', KEYS[2], 'NOPERM the user may not add entries to this key'}
end
return {}
"""
)
# KEYS: dead-letter stream, main stream (same hash slot). ARGV: metadata pair count, group, then dead-letter
# IDs. Each inline dead letter goes back to the main stream with its original fields (a new entry, so the
# group delivers it again) and leaves the dead-letter stream in the same atomic step. Every dead letter is
# read and the right to delete proven before the first write; each XADD comes before its XDEL. Continued
# dead letters (too big for a Lua call) are returned for the caller to replay with a transaction.
# Returns {replayed, continued IDs}, or {replayed, {}, command, key, error} when a step was refused (the
# dead letters replayed before it are whole: added and deleted); {…, error, dead letter, new entry} when a
# dead letter was added but could not be deleted.
REPLAY_LUA = (
    _FAILED
    + """
local reply = redis.pcall('XPENDING', KEYS[2], ARGV[2])  -- NOGROUP when the group is gone
if failed(reply) then
  return {0, {}, 'XPENDING', KEYS[2], reply.err}
end
local skip = 2 * tonumber(ARGV[1])
local inline, continued = {}, {}
for i = 3, #ARGV do
  local entry = redis.pcall('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if failed(entry) then
    return {0, {}, 'XRANGE', KEYS[1], entry.err}
  end
  if #entry > 0 and entry[1][2][1] == 'dlq:version' then
    local fields = entry[1][2]
    if fields[2] == '1' and #fields > skip then
      inline[#inline + 1] = {ARGV[i], fields}
    elseif fields[2] == '2' then
      continued[#continued + 1] = ARGV[i]
    end
  end
end
reply = redis.pcall('XDEL', KEYS[1], '0-0')
if failed(reply) then
  return {0, {}, 'XDEL', KEYS[1], reply.err}
end
local replayed = 0
for _, letter in ipairs(inline) do
  local original = {}
  for j = skip + 1, #letter[2] do
    original[#original + 1] = letter[2][j]
  end
  local added = redis.pcall('XADD', KEYS[2], '*', unpack(original))
  if failed(added) then
    return {replayed, {}, 'XADD', KEYS[2], added.err}
  end
  reply = redis.pcall('XDEL', KEYS[1], letter[1])
  if failed(reply) then
    return {replayed, {}, 'XDEL', KEYS[1], reply.err, letter[1], added}
  end
  replayed = replayed + 1
end
return {replayed, continued}
"""
)
# KEYS: main stream, dead-letter stream. ARGV: a dead letter's ID and its parts' IDs.
# Runs in the continued path's transaction after its XADD: deletes them only if the main stream is a stream,
# so that an XADD refused for the key's type is not followed by the deletion. Returns how many were deleted,
# or the refused step.
DELETE_IF_REPLAYED_LUA = (
    _FAILED
    + """
local kind = redis.pcall('TYPE', KEYS[1])
if failed(kind) then
  return {'TYPE', KEYS[1], kind.err}
end
if kind['ok'] ~= 'stream' then
  return 0
end
local deleted = redis.pcall('XDEL', KEYS[2], unpack(ARGV))
if failed(deleted) then
  return {'XDEL', KEYS[2], deleted.err}
end
return deleted
"""
)
REPLAY_BATCH = 100  # inline dead letters moved per atomic script call
REPLAYED = ("replayed", "continued")  # what REPLAY_LUA answers; a refused step follows them
REFUSED_STEP = ("command", "key", "error")  # a refused step; a dead letter and its new entry may follow


def oldest_ids(client: Client, keys: StreamKeys, limit: int | None = None) -> Iterator[bytes]:
    """The dead letters' own IDs (not their parts), oldest first, read a batch at a time: memory stays flat
    however many there are."""
    given = 0
    for batch in all_ids(client, keys, heads_only=True):
        for entry_id in batch:
            if limit is not None and given >= limit:
                return
            given += 1
            yield entry_id


def count_dead_letters(client: Client, keys: StreamKeys) -> int:
    return sum(len(batch) for batch in all_ids(client, keys, heads_only=True))


def prove_replay_rights(client: Client, keys: StreamKeys) -> None:
    """Every right a replay needs, tried in ways that change nothing, before it writes anything: the script
    (PROVE_REPLAY_LUA), then WATCH, UNWATCH, MULTI and EXEC on one connection (the continued path's
    transaction; a MULTI refused would let what follows run outside it). MissingRightError names the first one
    missing; a group that is gone is said as such."""
    with needs("EVAL", key=keys.dead_letter):
        refused = command(client, "EVAL", PROVE_REPLAY_LUA, 2, keys.dead_letter, keys.stream, keys.group)
    if refused:
        _raise_refused(keys, 0, refused)
    _prove_transactions(server_holding(client, keys.dead_letter), keys.dead_letter)


def _prove_transactions(node: redis.Redis, key: str) -> None:
    connection = node.connection_pool.get_connection()
    steps: list[tuple[tuple[str, ...], str | None]] = [
        (("WATCH", key), key),
        (("UNWATCH",), None),
        (("MULTI",), None),
        (("EXEC",), None),
    ]
    try:
        for words, step_key in steps:
            with needs(words[0], key=step_key):
                connection.send_command(*words)  # type: ignore[no-untyped-call]
                connection.read_response()
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # a WATCH or MULTI may be left on it
        raise
    finally:
        node.connection_pool.release(connection)


def replay(
    client: Client,
    keys: StreamKeys,
    ids: Iterable[bytes | str],
    progress: Callable[[int], None] = lambda done: None,
    rate: float = 0,
) -> int:
    """Move dead letters back to the main stream, each with exactly its original fields, removed from the
    dead-letter stream in the same atomic step; returns how many moved. Every right it needs is proven
    first (prove_replay_rights): a user missing one gets MissingRightError and nothing changes. A dead letter
    already replayed or purged is skipped; a continued one whose parts are gone is skipped with a warning.
    `ids` is read a batch at a time; `rate` caps entries per second (0: as fast as Redis takes them)."""
    prove_replay_rights(client, keys)
    moved = 0
    pacer = ClaimPacer(rate)  # the same pacing as RECLAIM_MAX_RATE: batches of a quarter second's worth
    pending = iter(ids)
    while batch := list(islice(pending, pacer.page_size(REPLAY_BATCH))):
        pacer.wait()
        pacer.handed_out(len(batch))
        with needs("EVAL", key=keys.dead_letter):
            reply = command(
                client,
                "EVAL",
                REPLAY_LUA,
                2,
                keys.dead_letter,
                keys.stream,
                METADATA_FIELD_COUNT,
                keys.group,
                *batch,
            )
        moved += int(reply[0])
        if len(reply) > len(REPLAYED):
            _raise_refused(keys, moved, reply[len(REPLAYED) :])
        for entry_id in reply[1]:
            moved += _replay_continued(server_holding(client, keys.dead_letter), keys, entry_id, moved)
        progress(len(batch))
    return moved


def _raise_refused(keys: StreamKeys, moved: int, step: Sequence[Any]) -> NoReturn:
    """A script's refused step ({command, key, error[, dead letter, new entry]}) as the error to report."""
    verb, key, error = text(step[0]), key_name(bytes(step[1])), text(step[2])
    if kind_of(error) == FailureKind.NO_GROUP:
        raise _group_gone(keys, moved, error)
    already = f"; {moved:,} dead letters were replayed before it, each whole" if moved else ""
    if len(step) > len(
        REFUSED_STEP
    ):  # added, but the dead letter stayed: said, so that it is not replayed twice
        raise MonitorError(
            f"dead letter {text(step[3])} was added to '{display_name(keys.stream)}' as {text(step[4])}, but "
            f"Redis refused to delete it from '{display_name(keys.dead_letter)}' ({error}): delete it with "
            f"`dead-letter purge {text(step[3])}`{already}"
        )
    if is_refused_right(error):
        refusal: MonitorError = MissingRightError((verb,), key, error)
    else:
        refusal = MonitorError(f"Redis refused {verb} on '{display_name(key)}': {error}")
    raise MonitorError(f"{refusal}; {'nothing more' if moved else 'nothing'} was changed{already}") from (
        refusal
    )


def _replay_continued(node: redis.Redis, keys: StreamKeys, entry_id: bytes, moved: int) -> int:
    """A continued dead letter, with a transaction: its fields do not fit one Lua call. WATCH on the
    dead-letter stream makes it all-or-nothing against a concurrent replay or purge. Every reply of the
    transaction is checked: the entry added and its dead letter and parts deleted, or nothing."""
    with node.pipeline(transaction=True) as pipe:
        for _ in range(REPLAY_ATTEMPTS):
            try:
                # Not the main stream: live producers would abort every attempt. The group is checked just
                # before; one destroyed in the instant before EXEC is not seen.
                pipe.watch(keys.dead_letter)  # type: ignore[no-untyped-call]
                command(pipe, "XPENDING", keys.stream, keys.group)  # after WATCH, commands run at once
                letter = show_dead_letter(pipe, keys, entry_id)
            except redis.exceptions.WatchError:
                continue
            except redis.exceptions.ResponseError as exc:
                pipe.unwatch()
                if kind_of(exc) == FailureKind.NO_GROUP:
                    raise _group_gone(keys, moved, exc) from exc
                raise
            except ValueError as exc:
                pipe.unwatch()
                log.warning(
                    "dead letter %s not replayed: %s (see `dead-letter show`)", entry_id.decode(), exc
                )
                return 0
            if letter is None:
                pipe.unwatch()
                return 0  # replayed or purged meanwhile
            pipe.multi()
            command(pipe, "XADD", keys.stream, "*", *letter.original)
            command(
                pipe,
                "EVAL",
                DELETE_IF_REPLAYED_LUA,
                2,
                keys.stream,
                keys.dead_letter,
                letter.entry_id,
                *letter.part_ids,
            )
            try:
                added, deleted = pipe.execute(raise_on_error=False)
            except redis.exceptions.WatchError:
                continue
            except redis.exceptions.ResponseError as exc:  # refused as it was queued: nothing ran
                if is_refused_right(exc):
                    _raise_refused(keys, moved, [b"XADD", raw_name(keys.stream), str(exc)])
                raise
            return _check_transaction(keys, letter, added, deleted, moved)
    raise MonitorError(f"the dead-letter stream kept changing while replaying {entry_id.decode()}: try again")


def _check_transaction(
    keys: StreamKeys, letter: DeadLetterEntry, added: Any, deleted: Any, moved: int
) -> int:
    """1 when the entry was added and its dead letter with every part deleted; MonitorError otherwise."""
    expected = 1 + len(letter.part_ids)
    if isinstance(deleted, list):  # the deletion's script refused a step
        deleted = [*deleted, letter.entry_id, added] if not isinstance(added, Exception) else deleted
        _raise_refused(keys, moved, deleted)
    if isinstance(added, Exception):
        if deleted:  # never expected: the deletion runs only where an add can have succeeded
            raise MonitorError(
                f"Redis refused to add dead letter {letter.entry_id.decode()} to "
                f"'{display_name(keys.stream)}' ({added}) but deleted it: its fields are lost"
            )
        _raise_refused(keys, moved, [b"XADD", raw_name(keys.stream), str(added)])
    if isinstance(deleted, Exception) or deleted != expected:
        raise MonitorError(
            f"dead letter {letter.entry_id.decode()} was added to '{display_name(keys.stream)}' as "
            f"{text(added)}, but deleting it and its {expected - 1} parts answered {deleted!r}: delete what "
            f"is left with `dead-letter purge {letter.entry_id.decode()}`"
        )
    return 1


def _group_gone(keys: StreamKeys, moved: int, exc: Exception | str) -> MonitorError:
    """Replayed entries would sit in a stream no group reads: refuse, having changed nothing more."""
    already = f" ({moved:,} were replayed before it went)" if moved else " (nothing was replayed)"
    return MonitorError(
        f"the consumer group '{keys.group}' on '{display_name(keys.stream)}' does not exist, so nobody would "
        f"read replayed entries{already}: create the group as the processor does, then replay ({exc})"
    )


def prove_purge_rights(client: Client, keys: StreamKeys) -> None:
    """Reading and deleting dead letters, tried before anything is deleted (XDEL of 0-0 deletes nothing)."""
    with needs("XRANGE", key=keys.dead_letter):
        command(client, "XRANGE", keys.dead_letter, "0-0", "0-0")
    with needs("XDEL", key=keys.dead_letter):
        command(client, "XDEL", keys.dead_letter, "0-0")


def purge_all(client: Client, keys: StreamKeys, progress: Callable[[int], None] = lambda done: None) -> int:
    """Every entry of the dead-letter stream, parts left behind by a trim included, deleted a batch at a
    time (memory stays flat); returns how many dead letters (not parts) were removed."""
    prove_purge_rights(client, keys)
    removed = 0
    while entries := command(client, "XRANGE", keys.dead_letter, "-", "+", "COUNT", PURGE_BATCH):
        heads = sum(1 for _, fields in entries if not is_part(list(fields)))
        with needs("XDEL", key=keys.dead_letter):
            command(client, "XDEL", keys.dead_letter, *[entry_id for entry_id, _ in entries])
        removed += heads
        progress(heads)
    return removed


def purge(client: Client, keys: StreamKeys, ids: Sequence[bytes | str]) -> int:
    """Delete the named dead letters for good, each with its parts; returns how many were removed. An ID
    that is not a dead letter's own (a part of one: its dead letter could no longer be replayed) is left."""
    prove_purge_rights(client, keys)
    removed = 0
    for start in range(0, len(ids), PURGE_BATCH):
        batch = list(ids[start : start + PURGE_BATCH])
        # The dead-letter stream's own node: a cluster pipeline would parse XRANGE into dicts, losing
        # repeated field names (the node clients leave stream replies raw, connect.py).
        pipe = server_holding(client, keys.dead_letter).pipeline(transaction=False)
        for entry_id in batch:
            command(pipe, "XRANGE", keys.dead_letter, entry_id, entry_id)
        heads: list[bytes] = []
        parts: list[bytes] = []
        with needs("XRANGE", key=keys.dead_letter):
            found_entries = pipe.execute()
        for found in found_entries:
            for head in _heads(found):
                heads.append(head.entry_id)
                if head.metadata.get(b"dlq:version") == CONTINUED:
                    following = command(
                        client,
                        "XRANGE",
                        keys.dead_letter,
                        next_id(head.entry_id),
                        "+",
                        "COUNT",
                        int(head.metadata[PARTS]),
                    )
                    parts += [
                        part_id
                        for part_id, fields in following
                        if is_part(list(fields)) and fields[1] == head.entry_id
                    ]
        if heads:
            with needs("XDEL", key=keys.dead_letter):
                command(client, "XDEL", keys.dead_letter, *heads, *parts)
        removed += len(heads)
    return removed
