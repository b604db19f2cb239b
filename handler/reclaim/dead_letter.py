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

from collections.abc import Sequence
from enum import IntEnum
from typing import Any

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
    group: str, consumer: str, entry_id: bytes, reason: str, deliveries: int, time_ms: int, detail: str,
    maxlen: int,
) -> tuple[object, ...]:  # fmt: skip
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
