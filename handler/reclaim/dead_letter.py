"""Moving a poison entry to the dead-letter stream in one atomic server-side step.

A dead letter is a new entry in the dead-letter stream. Its first fields are metadata, each named with the
reserved prefix `dlq:` and always in this order (`dlq:version` first, so readers can tell the layout);
after them come the original entry's fields and values exactly as they were, in their original order. A
stream entry keeps order and repeated names, so an original field that happens to start with `dlq:` is still
told apart by position: the metadata is always the first METADATA_FIELD_COUNT pairs.
"""

from __future__ import annotations

from enum import IntEnum

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


class MoveOutcome(IntEnum):
    NOT_OURS = 0  # another consumer owns it now, or it was acknowledged already: nothing changed
    DEAD_LETTERED = 1
    DELETED = 2  # gone from the stream: acknowledged, nothing to keep


# KEYS: stream, dead-letter stream (same hash slot).
# ARGV: group, consumer, entry id, reason, deliveries, time in ms, detail, max length (0: unbounded).
# The acknowledgement comes first and the dead letter is written only if it removed the entry from the
# pending list, and only while this consumer owns it: a retry, a crash or a competing monitor can never
# leave an entry dead-lettered twice, in both places, or in neither.
MOVE_TO_DEAD_LETTER_LUA = """
local stream, dead_letter = KEYS[1], KEYS[2]
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local row = redis.call('XPENDING', stream, group, id, id, 1)
if #row == 0 or row[1][2] ~= consumer then
  return 0
end
local entry = redis.call('XRANGE', stream, id, id)
if redis.call('XACK', stream, group, id) == 0 then
  return 0
end
if #entry == 0 then
  return 2
end
local fields = {
  'dlq:version', '1', 'dlq:original-id', id, 'dlq:stream', stream, 'dlq:group', group,
  'dlq:reason', ARGV[4], 'dlq:deliveries', ARGV[5], 'dlq:consumer', consumer,
  'dlq:time-ms', ARGV[6], 'dlq:detail', ARGV[7]
}
for _, value in ipairs(entry[1][2]) do
  fields[#fields + 1] = value
end
local maxlen = tonumber(ARGV[8])
if maxlen > 0 then
  redis.call('XADD', dead_letter, 'MAXLEN', '~', maxlen, '*', unpack(fields))
else
  redis.call('XADD', dead_letter, '*', unpack(fields))
end
return 1
"""


# KEYS: dead-letter stream, main stream (same hash slot). ARGV: metadata pair count, then dead-letter IDs.
# Each dead letter goes back to the main stream with its original fields (a new entry, so the group delivers
# it again) and leaves the dead-letter stream in the same atomic step: a crash never duplicates or drops one.
REPLAY_LUA = """
local replayed = 0
local skip = 2 * tonumber(ARGV[1])
for i = 2, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #entry > 0 then
    local fields = entry[1][2]
    if fields[1] == 'dlq:version' and fields[2] == '1' and #fields > skip then
      local original = {}
      for j = skip + 1, #fields do
        original[#original + 1] = fields[j]
      end
      redis.call('XADD', KEYS[2], '*', unpack(original))
      redis.call('XDEL', KEYS[1], ARGV[i])
      replayed = replayed + 1
    end
  end
end
return replayed
"""


def split_dead_letter(fields: list[bytes]) -> tuple[dict[bytes, bytes], list[bytes]]:
    """A dead letter's flat field list -> (metadata, the original fields in order)."""
    cut = 2 * METADATA_FIELD_COUNT
    head = fields[:cut]
    return dict(zip(head[::2], head[1::2], strict=True)), fields[cut:]
