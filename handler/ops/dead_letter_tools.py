"""Operating on the dead-letter stream: list, show, replay into the main stream, purge.

Both layouts of a dead letter (reclaim/dead_letter.py) are read here: a continued one is shown, replayed and
purged together with its parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis

from handler.errors import MonitorError
from handler.keys import StreamKeys, display_name
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
from handler.transport.client import Client, command, server_holding
from handler.transport.failures import FailureKind, kind_of

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


def list_dead_letters(
    client: Client, keys: StreamKeys, count: int, newest_first: bool
) -> list[DeadLetterEntry]:
    """Up to `count` dead letters, oldest (or newest) first."""
    found: list[DeadLetterEntry] = []
    verb, start, end = ("XREVRANGE", b"+", b"-") if newest_first else ("XRANGE", b"-", b"+")
    while len(found) < count:
        entries = command(client, verb, keys.dead_letter, start, end, "COUNT", count)
        if not entries:
            break
        found += _heads(entries)
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
        entries = command(client, "XRANGE", keys.dead_letter, start, "+", "COUNT", batch)
        if not entries:
            return
        yield [entry_id for entry_id, fields in entries if not (heads_only and is_part(list(fields)))]
        start = next_id(entries[-1][0])


# KEYS: dead-letter stream, main stream (same hash slot). ARGV: metadata pair count, group, then dead-letter
# IDs.
# Each inline dead letter goes back to the main stream with its original fields (a new entry, so the group
# delivers it again) and leaves the dead-letter stream in the same atomic step. The first write (XADD) is the
# only one Redis can refuse; then nothing has changed. Continued dead letters (too big for a Lua call) are
# returned for the caller to replay with a transaction.
REPLAY_LUA = """
redis.call('XPENDING', KEYS[2], ARGV[2])  -- NOGROUP when the group is gone: nothing is replayed
local replayed, continued = 0, {}
local skip = 2 * tonumber(ARGV[1])
for i = 3, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #entry > 0 and entry[1][2][1] == 'dlq:version' then
    local fields = entry[1][2]
    if fields[2] == '1' and #fields > skip then
      local original = {}
      for j = skip + 1, #fields do
        original[#original + 1] = fields[j]
      end
      redis.call('XADD', KEYS[2], '*', unpack(original))
      redis.call('XDEL', KEYS[1], ARGV[i])
      replayed = replayed + 1
    elseif fields[2] == '2' then
      continued[#continued + 1] = ARGV[i]
    end
  end
end
return {replayed, continued}
"""
# Deletes a dead letter and its parts only if the main stream is a stream, so that inside a transaction an
# XADD refused for the key's type is not followed by the deletion. KEYS: main stream, dead-letter stream.
DELETE_IF_REPLAYED_LUA = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then
  return 0
end
return redis.call('XDEL', KEYS[2], unpack(ARGV))
"""
REPLAY_BATCH = 100  # inline dead letters moved per atomic script call


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


def replay(
    client: Client,
    keys: StreamKeys,
    ids: Iterable[bytes | str],
    progress: Callable[[int], None] = lambda done: None,
    rate: float = 0,
) -> int:
    """Move dead letters back to the main stream, each with exactly its original fields, removed from the
    dead-letter stream in the same atomic step; returns how many moved. A dead letter already replayed or
    purged is skipped; a continued one whose parts are gone is skipped with a warning. `ids` is read a batch
    at a time; `rate` caps entries per second (0: as fast as Redis takes them)."""
    moved = 0
    pacer = ClaimPacer(rate)  # the same pacing as RECLAIM_MAX_RATE: batches of a quarter second's worth
    pending = iter(ids)
    while batch := list(islice(pending, pacer.page_size(REPLAY_BATCH))):
        pacer.wait()
        pacer.handed_out(len(batch))
        try:
            replayed, continued = command(
                client, "EVAL", REPLAY_LUA, 2, keys.dead_letter, keys.stream, METADATA_FIELD_COUNT,
                keys.group, *batch,
            )  # fmt: skip
        except redis.exceptions.ResponseError as exc:
            if kind_of(exc) == FailureKind.NO_GROUP:
                raise _group_gone(keys, moved, exc) from exc
            raise
        moved += int(replayed)
        for entry_id in continued:
            moved += _replay_continued(server_holding(client, keys.dead_letter), keys, entry_id)
        progress(len(batch))
    return moved


def _replay_continued(node: redis.Redis, keys: StreamKeys, entry_id: bytes) -> int:
    """A continued dead letter, with a transaction: its fields do not fit one Lua call. WATCH on the
    dead-letter stream makes it all-or-nothing against a concurrent replay or purge."""
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
                    raise _group_gone(keys, 0, exc) from exc
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
            command(pipe, "EVAL", DELETE_IF_REPLAYED_LUA, 2, keys.stream, keys.dead_letter, letter.entry_id,
                    *letter.part_ids)  # fmt: skip
            try:
                added, _ = pipe.execute(raise_on_error=False)
            except redis.exceptions.WatchError:
                continue
            if isinstance(added, Exception):
                raise MonitorError(f"cannot replay {entry_id.decode()} into '{keys.stream}': {added}")
            return 1
    raise MonitorError(f"the dead-letter stream kept changing while replaying {entry_id.decode()}: try again")


def _group_gone(keys: StreamKeys, moved: int, exc: Exception) -> MonitorError:
    """Replayed entries would sit in a stream no group reads: refuse, having changed nothing more."""
    already = f" ({moved:,} were replayed before it went)" if moved else " (nothing was replayed)"
    return MonitorError(
        f"the consumer group '{keys.group}' on '{display_name(keys.stream)}' does not exist, so nobody would "
        f"read replayed entries{already}: create the group as the processor does, then replay ({exc})"
    )


def purge_all(client: Client, keys: StreamKeys, progress: Callable[[int], None] = lambda done: None) -> int:
    """Every entry of the dead-letter stream, parts left behind by a trim included, deleted a batch at a
    time (memory stays flat); returns how many dead letters (not parts) were removed."""
    removed = 0
    while entries := command(client, "XRANGE", keys.dead_letter, "-", "+", "COUNT", PURGE_BATCH):
        heads = sum(1 for _, fields in entries if not is_part(list(fields)))
        client.xdel(keys.dead_letter, *[entry_id for entry_id, _ in entries])
        removed += heads
        progress(heads)
    return removed


def purge(client: Client, keys: StreamKeys, ids: Sequence[bytes | str]) -> int:
    """Delete the named dead letters for good, each with its parts; returns how many were removed."""
    removed = 0
    for start in range(0, len(ids), PURGE_BATCH):
        batch = list(ids[start : start + PURGE_BATCH])
        # The dead-letter stream's own node: a cluster pipeline would parse XRANGE into dicts, losing
        # repeated field names (the node clients leave stream replies raw, connect.py).
        pipe = server_holding(client, keys.dead_letter).pipeline(transaction=False)
        for entry_id in batch:
            command(pipe, "XRANGE", keys.dead_letter, entry_id, entry_id)
        parts: list[bytes] = []
        for found in pipe.execute():
            for head in _heads(found):
                removed += 1
                if head.metadata.get(b"dlq:version") == CONTINUED:
                    following = command(
                        client, "XRANGE", keys.dead_letter, next_id(head.entry_id), "+", "COUNT",
                        int(head.metadata[PARTS]),
                    )  # fmt: skip
                    parts += [
                        part_id
                        for part_id, fields in following
                        if is_part(list(fields)) and fields[1] == head.entry_id
                    ]
        client.xdel(keys.dead_letter, *batch, *parts)
    return removed
