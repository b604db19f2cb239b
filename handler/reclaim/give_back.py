"""Giving a refused attempt's delivery back.

Each XCLAIM counts a delivery, and MAX_DELIVERIES dead-letters an entry delivered too often: that budget is
for processing that fails on the entry itself. When the monitor's own attempt is refused for a passing
reason (Redis out of memory, read-only, a missing permission, no replica confirming, a dead letter that could
not be written), the entry stays pending and its delivery count is set back to what it was before the claim.
So an outage of any length dead-letters nothing, while an attempt that ends because the monitor died or timed
out still counts, and an entry that kills the monitor still reaches the dead-letter stream.

Only while the monitor's consumer name still holds the entry is its delivery given back (checked in the same
script), so an entry a processor or a monitor under another name has claimed since is never touched.
Monitors that share MONITORING_CONSUMER_NAME are one consumer to Redis: among them a stalled one may reset
the count of an entry another has claimed since, which changes a count, never an entry.
"""

from __future__ import annotations

from collections.abc import Iterable

from handler.keys import StreamKeys
from handler.transport.wire import pack

# KEYS: stream. ARGV: group, consumer, then pairs of entry id and its delivery count before the claim.
GIVE_BACK_LUA = """
local given = 0
for i = 3, #ARGV, 2 do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #row > 0 and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', row[1][3],
               'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    given = given + 1
  end
end
return given
"""


def give_back_command(keys: StreamKeys, deliveries_before: Iterable[tuple[bytes, int]]) -> bytes:
    """The packed EVAL that sets each entry's delivery count back, if this consumer still holds it."""
    pairs = [part for entry_id, count in deliveries_before for part in (entry_id, count)]
    return pack((b"EVAL", GIVE_BACK_LUA, 1, keys.stream, keys.group, keys.consumer, *pairs))
