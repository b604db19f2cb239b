"""The heartbeat: when the last scheduled cycle completed, so that a timer that stopped (after a deploy, when
the singleton lease moved) is told apart from a monitor with nothing to do.

Every cycle the timer (`serve`) or `run` completes, empty ones included, records Redis's own time (TIME, so
the clocks of the monitor's instances cannot disagree) in `{stream}:last-cycle:<group>`, in the stream's slot,
through one Lua call on the stream's node (pipelined per node with many streams). With several streams, only
those the invocation's cycles ran on: a stream the invocations do not reach keeps its older time, and `check`
says so. A manual `reclaim` does not record it, so it cannot hide a stopped
timer. The key has no TTL: a heartbeat that expired would read as "no cycle yet" instead of "stopped".
"""

from __future__ import annotations

from typing import Any

from handler.keys import raw_name
from handler.transport.client import Client

# KEYS: the heartbeat key. ARGV: 1 to record now, 0 to read. Returns {now, recorded or false}, each in
# microseconds since the epoch as text (Lua numbers are doubles: whole microseconds fit).
HEARTBEAT_LUA = """
local time = redis.call('TIME')
local now = time[1] .. string.format('%06d', time[2])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[1], now)
  return {now, now}
end
return {now, redis.call('GET', KEYS[1])}
"""
MICROS = 1_000_000


def record(client: Client, key: str) -> None:
    client.eval(HEARTBEAT_LUA, 1, raw_name(key), "1")


def seconds_since(client: Client, key: str) -> float | None:
    """Seconds since the last recorded cycle, by the stream's node's clock; None when none was recorded
    (or the key holds something that is not a heartbeat)."""
    return age_of(client.eval(HEARTBEAT_LUA, 1, raw_name(key), "0"))


def age_of(reply: Any) -> float | None:
    """Seconds since the recorded cycle, from HEARTBEAT_LUA's reply to a read (a pipeline reads many)."""
    now, recorded = reply[0], reply[1]
    if not recorded or not bytes(recorded).isdigit():
        return None
    return max(0.0, (int(now) - int(recorded)) / MICROS)
