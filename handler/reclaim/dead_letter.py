"""Moving a poison entry to the dead-letter stream in one atomic server-side step; the dead letter's layout.

A dead letter is a new entry in the dead-letter stream. Its first fields are metadata, each named with the
reserved prefix `dlq:` and always in this order (`dlq:version` first, so readers can tell the layout). Two
layouts, told apart by `dlq:version`:

- `1`, inline: after the metadata come the original entry's fields and values exactly as they were, in
  their original order. A stream entry keeps order and repeated names, so an original field that happens to
  start with `dlq:` is still told apart by position: the metadata is always the first METADATA_FIELD_COUNT
  pairs.
- `2`, continued, for an entry too big for one Lua call (one `unpack()` passes at most about 8,000 values):
  the metadata is followed by `dlq:parts` (how many entries follow) and `dlq:fields` (the original's field
  count), and nothing else. The original fields follow, in order, in the next `dlq:parts` entries of the
  dead-letter stream, each starting with `dlq:part-of` and the head's ID, then a run of whole field pairs.
  The script writes the head and its parts in one atomic step, so they are consecutive.

The invariant the move keeps: an entry is acknowledged only after its dead letter is written, and only by
the consumer that holds it. Redis does not roll a script back, so the order is: check ownership, write, then
acknowledge. The first write is the only one Redis can refuse (the key's type, memory, permissions); once a
script has written, Redis runs its remaining writes even past maxmemory. So a refused move changes nothing:
the entry stays pending, and a retry, a crash or a competing monitor never leaves an entry dead-lettered
twice, in both places, or in neither.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

from redis.connection import ConnectionPool

from handler.transport.wire import RawReply, Wire, pack

METADATA_FIELDS = (
    b"dlq:version",
    b"dlq:original-id",
    b"dlq:stream",
    b"dlq:group",
    b"dlq:reason",
    b"dlq:deliveries",
    b"dlq:consumer",
    b"dlq:time-ms",
    b"dlq:detail",
)
METADATA_FIELD_COUNT = len(METADATA_FIELDS)
INLINE, CONTINUED = b"1", b"2"  # dlq:version of the two layouts
PARTS, FIELD_COUNT, PART_OF = b"dlq:parts", b"dlq:fields", b"dlq:part-of"
# Values one XADD of a continued dead letter carries (whole pairs), well below Lua's unpack() limit.
VALUES_PER_CALL = 7000


class MoveOutcome(IntEnum):
    NOT_OURS = 0  # another consumer owns it now, or it was acknowledged already: nothing changed
    DEAD_LETTERED = 1
    DELETED = 2  # gone from the stream: acknowledged, nothing to keep
    NOT_WRITTEN = 3  # a relayed move whose dead letter Redis did not write: nothing changed, try again later


# KEYS: stream, dead-letter stream (same hash slot).
# ARGV: group, consumer, entry id, reason, deliveries, time in ms, detail, max length (0: unbounded),
# values per XADD. Returns {outcome, dead-letter entries trimmed by the max length}.
MOVE_TO_DEAD_LETTER_LUA = """
local stream, dead_letter = KEYS[1], KEYS[2]
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
-- Lua numbers are doubles: XADD gets the max length as the text it came as, never a rounded number.
local maxlen, per_call = tonumber(ARGV[8]), tonumber(ARGV[9])
local row = redis.call('XPENDING', stream, group, id, id, 1)
if #row == 0 or row[1][2] ~= consumer then
  return {0, 0}
end
local entry = redis.call('XRANGE', stream, id, id)
if #entry == 0 then
  redis.call('XACK', stream, group, id)
  return {2, 0}
end
local original = entry[1][2]
local head = {
  'dlq:version', '1', 'dlq:original-id', id, 'dlq:stream', stream, 'dlq:group', group,
  'dlq:reason', ARGV[4], 'dlq:deliveries', ARGV[5], 'dlq:consumer', consumer,
  'dlq:time-ms', ARGV[6], 'dlq:detail', ARGV[7]
}
local before = 0
if maxlen > 0 then
  before = redis.call('XLEN', dead_letter)
end
local function add(fields, trim)
  if trim and maxlen > 0 then
    return redis.call('XADD', dead_letter, 'MAXLEN', '~', ARGV[8], '*', unpack(fields))
  end
  return redis.call('XADD', dead_letter, '*', unpack(fields))
end
local added = 1
if #head + #original <= per_call then
  for _, value in ipairs(original) do
    head[#head + 1] = value
  end
  add(head, true)
else
  local parts = math.ceil(#original / per_call)
  head[2] = '2'
  head[#head + 1] = 'dlq:parts'
  head[#head + 1] = tostring(parts)
  head[#head + 1] = 'dlq:fields'
  head[#head + 1] = tostring(#original / 2)
  local head_id = add(head, true)
  for first = 1, #original, per_call do
    local part = {'dlq:part-of', head_id}
    for index = first, math.min(first + per_call - 1, #original) do
      part[#part + 1] = original[index]
    end
    add(part, false)
  end
  added = 1 + parts
end
redis.call('XACK', stream, group, id)
local trimmed = 0
if maxlen > 0 then
  trimmed = before + added - redis.call('XLEN', dead_letter)
end
return {1, trimmed}
"""


def move_arguments(
    group: str,
    consumer: str,
    entry_id: bytes,
    reason: str,
    deliveries: int,
    time_ms: int,
    detail: str,
    maxlen: int,
) -> tuple[object, ...]:
    """ARGV of MOVE_TO_DEAD_LETTER_LUA, in its order."""
    return (group, consumer, entry_id, reason, deliveries, time_ms, detail, maxlen, VALUES_PER_CALL)


def parse_move_reply(reply: Sequence[int]) -> tuple[MoveOutcome, int]:
    """(what happened, how many dead-letter entries the max length trimmed)."""
    return MoveOutcome(int(reply[0])), int(reply[1])


def split_dead_letter(fields: list[bytes]) -> tuple[dict[bytes, bytes], list[bytes]]:
    """A dead letter's flat field list -> (metadata, the original fields it holds inline, in order).

    A continued dead letter (version 2) holds none inline: its metadata then also has dlq:parts and
    dlq:fields, and the original fields are in the parts that follow it (join_parts)."""
    cut = 2 * METADATA_FIELD_COUNT
    head, rest = fields[:cut], fields[cut:]
    metadata = dict(zip(head[::2], head[1::2], strict=True))
    if metadata.get(b"dlq:version") == CONTINUED:
        metadata.update(zip(rest[::2], rest[1::2], strict=True))
        return metadata, []
    return metadata, rest


def is_part(fields: Sequence[bytes]) -> bool:
    """A continuation entry of a continued dead letter, not a dead letter of its own."""
    return len(fields) >= 2 and fields[0] == PART_OF  # noqa: PLR2004  (the field and the head's id)


def join_parts(head_id: bytes, metadata: dict[bytes, bytes], parts: Sequence[Sequence[Any]]) -> list[bytes]:
    """The original fields of a continued dead letter from the entries that follow its head ([id, fields]
    each, as XRANGE gives them); ValueError when they are not all there (trimmed, or deleted by hand)."""
    expected = int(metadata.get(PARTS, b"0"))
    fields: list[bytes] = []
    for part in parts[:expected]:
        values = list(part[1])
        if not is_part(values) or values[1] != head_id:
            break
        fields += values[2:]
        expected -= 1
    if expected or len(fields) != 2 * int(metadata.get(FIELD_COUNT, b"0")):
        raise ValueError(f"dead letter {head_id.decode()} is missing some of its parts")
    return fields


# The relayed move (relay_move). KEYS: stream, dead-letter stream. ARGV: group, consumer, entry id, the head's
# ID, an unused slot, then the parts' IDs. Returns {outcome, the dead-letter stream's length after}. Runs
# inside the transaction that wrote the head and its parts, right after them, so that nothing can come
# between: it only reads the head (the metadata, or an inline dead letter of at most VALUES_PER_CALL
# values), the entry's pending row, and acknowledges or deletes by ID.
COMMIT_RELAYED_MOVE_LUA = """
local stream, dead_letter = KEYS[1], KEYS[2]
local group, consumer, id, head = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local written = redis.call('XRANGE', dead_letter, head, head)
if #written == 0 or written[1][2][1] ~= 'dlq:version' or written[1][2][4] ~= id then
  return {3, 0}
end
local row = redis.call('XPENDING', stream, group, id, id, 1)
if #row == 0 or row[1][2] ~= consumer then
  redis.call('XDEL', dead_letter, head)
  for index = 6, #ARGV do
    redis.call('XDEL', dead_letter, ARGV[index])
  end
  return {0, 0}
end
redis.call('XACK', stream, group, id)
return {1, redis.call('XLEN', dead_letter)}
"""
# The relayed dead letter's IDs are chosen by the monitor (its parts must name the head's ID, and the
# transaction's commands are fixed before it runs): this far ahead of Redis's clock, so that no ID Redis
# generates meanwhile ("*") reaches them. Later dead letters then take IDs after them, a minute ahead at most.
RELAY_ID_LEAD_MS = 60_000
RANDOM_SEQ_BITS, PART_SEQ_BITS = 40, 23  # a head's sequence number, and room after it for its parts
INLINE_RELAY_BYTES = 64 * 1024  # a relayed dead letter this small is inline (the commit script reads it)
_reserved_lock = threading.Lock()
_last_reserved_ms = 0
_RELAY_FLUSH_BYTES = 256 * 1024  # what the relay collects before writing it on


def _reserve_ms(redis_time_ms: int) -> int:
    """A millisecond of its own for each relayed dead letter of this process (ID <ms>-<seq> for the head,
    the sequence numbers after it for its parts)."""
    global _last_reserved_ms  # noqa: PLW0603  (one reservation counter per process, under its lock)
    with _reserved_lock:
        _last_reserved_ms = max(redis_time_ms + RELAY_ID_LEAD_MS, _last_reserved_ms + 1)
        return _last_reserved_ms


def relay_move(
    pool: ConnectionPool,
    stream: str,
    dead_letter: str,
    group: str,
    consumer: str,
    entry_id: bytes,
    reason: str,
    deliveries: int,
    detail: str,
    maxlen: int,
) -> tuple[MoveOutcome, int]:
    """Move one entry to the dead-letter stream without reading it whole and without a long script.

    A Lua move copies the entry inside one call, blocking every client of Redis for as long as that takes
    (about a second for a million fields, however it is sliced: a script cannot read part of an entry). The
    monitor instead streams `XRANGE <id> <id>` from one connection into a transaction on another, a piece at
    a time (its memory stays at about RECV_BYTES whatever the entry's size): MULTI, the continued layout's
    head and parts (XADD with IDs chosen ahead, _reserve_ms), then COMMIT_RELAYED_MOVE_LUA, EXEC. The
    transaction runs as one step, so the move stays exactly-once: the script checks, right after the writes
    and before anything else runs, that the monitor still holds the entry, and acknowledges it, or deletes
    what was written. Nothing is written before EXEC: a crash, a timeout or a refusal (OOM, WRONGTYPE) at any
    point leaves the entry pending and the dead-letter stream as it was. Returns (outcome, entries trimmed).
    """
    source, target = Wire(pool), Wire(pool)
    try:
        ((seconds, micros),) = target.call([pack((b"TIME",))], 1)
        ms = _reserve_ms(int(seconds) * 1000 + int(micros) // 1000)
        source.send(pack((b"XRANGE", stream, entry_id, entry_id)), 0)
        reply = RawReply(source.socket())
        if reply.header(b"*") == 0:  # deleted from the stream: the ordinary move acknowledges it
            (result,) = target.call(
                [
                    pack(
                        (
                            b"EVAL",
                            MOVE_TO_DEAD_LETTER_LUA,
                            2,
                            stream,
                            dead_letter,
                            *move_arguments(
                                group,
                                consumer,
                                entry_id,
                                reason,
                                deliveries,
                                int(time.time() * 1000),
                                detail,
                                maxlen,
                            ),
                        )
                    )
                ],
                1,
            )
            if isinstance(result, Exception):
                raise result
            return parse_move_reply(result)
        reply.header(b"*")  # [id, fields]
        reply.bulk(len(entry_id) + 2)
        values = _Values(reply, reply.header(b"*"))
        # Small enough for one Lua call of the replay, and for the commit script to read back in a moment:
        # the inline layout, as the scripted move writes it. Else the continued one, whose head is small.
        inline = values.fit(INLINE_RELAY_BYTES, VALUES_PER_CALL - 2 * METADATA_FIELD_COUNT)
        parts = 0 if inline else -(-values.count // VALUES_PER_CALL)
        # A random sequence number: two processes that reserve the same millisecond (two monitors under one
        # consumer name, without the lease) must not take each other's dead letter for their own.
        seq = secrets.randbits(RANDOM_SEQ_BITS) << PART_SEQ_BITS
        head_id = b"%d-%d" % (ms, seq)
        part_ids = [b"%d-%d" % (ms, seq + n) for n in range(1, parts + 1)]
        metadata = (
            b"dlq:version",
            INLINE if inline else CONTINUED,
            b"dlq:original-id",
            entry_id,
            b"dlq:stream",
            stream,
            b"dlq:group",
            group,
            b"dlq:reason",
            reason,
            b"dlq:deliveries",
            deliveries,
            b"dlq:consumer",
            consumer,
            b"dlq:time-ms",
            int(time.time() * 1000),
            b"dlq:detail",
            detail,
        )
        out = _Outbox(target)
        out.add(pack((b"MULTI",)) + pack((b"XLEN", dead_letter)))  # the length before, to count a trim
        # The max length trims with the head, as the scripted move's XADD does.
        add_head = (b"XADD", dead_letter, *((b"MAXLEN", b"~", maxlen) if maxlen else ()), head_id, *metadata)
        if inline:
            out.add(_with_more_arguments(pack(add_head), values.count))
            values.relay(values.count, out.add)
        else:
            out.add(pack((*add_head, PARTS, parts, FIELD_COUNT, values.count // 2)))
        for part_id, first in zip(
            part_ids, range(0, values.count if parts else 0, VALUES_PER_CALL), strict=True
        ):
            count = min(VALUES_PER_CALL, values.count - first)
            # The command's own header counts the part's values too: they follow it, relayed as RESP.
            out.add(_with_more_arguments(pack((b"XADD", dead_letter, part_id, PART_OF, head_id)), count))
            values.relay(count, out.add)
        out.add(
            pack(
                (
                    b"EVAL",
                    COMMIT_RELAYED_MOVE_LUA,
                    2,
                    stream,
                    dead_letter,
                    group,
                    consumer,
                    entry_id,
                    head_id,
                    maxlen,
                    *part_ids,
                )
            )
        )
        out.add(pack((b"EXEC",)))
        out.send(5 + parts)  # MULTI's OK, QUEUED for XLEN, the head, each part and the script, EXEC's reply
        *queued, executed = target.read(5 + parts)
        for answer in (*queued, executed):
            if isinstance(answer, Exception):
                raise answer
        before, result = executed[0], executed[-1]
        if isinstance(result, Exception):
            raise result
        outcome, after = parse_move_reply(result)
        trimmed = before + 1 + parts - after if outcome == MoveOutcome.DEAD_LETTERED else 0
        return outcome, max(0, trimmed)
    except BaseException:
        source.mark_broken()
        target.mark_broken()
        raise
    finally:
        source.close()
        target.close()


class _Values:
    """An entry's values as they stream in, the first few held back to choose the layout (fit)."""

    def __init__(self, reply: RawReply, count: int) -> None:
        self.reply, self.count = reply, count
        self._held: deque[bytes] = deque()  # whole values read ahead, as RESP
        self._header: int | None = None  # the length of a value whose header alone was read ahead

    def fit(self, max_bytes: int, max_values: int) -> bool:
        """Whether every value fits in `max_bytes` and `max_values`, reading at most that much ahead."""
        if self.count > max_values:
            return False
        size = 0
        while len(self._held) < self.count:
            length = self.reply.header(b"$")
            size += length
            if size > max_bytes:
                self._header = length
                return False
            self._held.append(b"$%d\r\n" % length + b"".join(self.reply.pieces(length + 2)))
        return True

    def relay(self, count: int, emit: Callable[[bytes], None]) -> None:
        """Hand the next `count` values on as RESP: those read ahead first, then as they arrive."""
        while count and self._held:
            emit(self._held.popleft())
            count -= 1
        if count and self._header is not None:
            emit(b"$%d\r\n" % self._header)
            for piece in self.reply.pieces(self._header + 2):
                emit(piece)
            self._header = None
            count -= 1
        if count:
            self.reply.relay(count, emit)


class _Outbox:
    """What the relay writes, sent on once it holds _RELAY_FLUSH_BYTES."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._pieces: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size >= _RELAY_FLUSH_BYTES:
            self.send(0)

    def send(self, replies: int) -> None:
        self._wire.send(b"".join(self._pieces), replies)
        self._pieces, self._size = [], 0


def _with_more_arguments(command: bytes, more: int) -> bytes:
    """A packed command whose argument count is raised by `more` (their RESP follows it)."""
    header, _, rest = command.partition(b"\r\n")
    return b"*%d\r\n" % (int(header[1:]) + more) + rest
