"""Removing dead consumers safely (opt-in).

Processors take a new consumer name on every start, so names pile up in the group. XGROUP DELCONSUMER
throws away a consumer's pending entries, so a consumer is removed only when it has nothing pending and has
been idle longer than the threshold, checked and deleted in one Lua call: nothing can be delivered to it
between the check and the delete.
"""

from __future__ import annotations

from typing import Any

from handler.transport.client import Client, text

# KEYS: stream. ARGV: group, idle threshold in ms, 1 to only report, then names never to remove.
PRUNE_LUA = """
local keep = {}
for i = 4, #ARGV do keep[ARGV[i]] = true end
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) and not keep[info['name']] then
    if ARGV[3] ~= '1' then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    end
    removed[#removed + 1] = info['name']
  end
end
return removed
"""


def prune_idle_consumers(
    client: Client, stream: str | bytes, group: str, idle_sec: float, keep: list[str], dry_run: bool = False
) -> list[str]:
    """Remove consumers with nothing pending and idle at least idle_sec; returns their names."""
    idle_ms = round(idle_sec * 1000)
    removed: Any = client.eval(PRUNE_LUA, 1, stream, group, idle_ms, "1" if dry_run else "0", *keep)
    return [text(name) for name in removed]
