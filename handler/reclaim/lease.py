"""A lease so that only one monitor sweeps a group at a time.

The lease is a key in the stream's hash slot holding its holder's identity, always written with a TTL, so a
lock without expiry is never written: when a holder dies, the lease expires and the next monitor takes it
over. One without a TTL, left by a script or an older version, is given one when found (HOLDER_LUA). The
cursor is saved through the lease (SAVE_CURSOR_LUA), so only the lease's holder moves it.
A running cycle renews it between pages; renewal and release only touch a lease whose value is still this
holder's (compare-and-set in Lua), so a monitor that stalled past the TTL can never extend or delete its
successor's lease. The lease only keeps monitors from duplicating work: correctness never depends on it
(XCLAIM's min-idle and the dead-letter script's ownership check guard every entry).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

import redis

from handler.transport.client import Client, text
from handler.transport.failures import code_of

log = logging.getLogger(__name__)
NO_TTL, GONE = -1, -2  # what PTTL answers for a key without a TTL, and for no key

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lease. ARGV: TTL in ms. After SET NX failed: who holds the lease, and its PTTL. A lease without a
# TTL (left by a script or an older version) would keep every monitor out for ever: it is given one, so it
# is taken over once LEASE_TTL_SEC has passed.
HOLDER_LUA = """
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return {'', -2}
end
if pttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' then
  return {'a key of type ' .. kind, pttl}
end
return {redis.call('GET', KEYS[1]), pttl}
"""
# KEYS: lease, cursor (one hash slot). ARGV: holder, cursor value ('' deletes it), TTL in ms.
SAVE_CURSOR_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return 1
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def holder_identity(consumer: str) -> str:
    """Who holds the lease, in words an operator can act on: consumer, host, process, and a nonce."""
    return f"{consumer}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, client: Client, key: str | bytes, holder: str, ttl_sec: float) -> None:
        self._client = client
        self._key = key
        self.holder = holder
        self._ttl_ms = max(1, round(ttl_sec * 1000))
        self._renew_every = ttl_sec / 3
        self._renewed_at = 0.0
        self.held = False
        self._without = False

    def acquire(self) -> str | None:
        """Take the lease; None when taken, else the current holder's identity. Safe to repeat: a retry
        after a lost reply finds its own identity there and holds the lease."""
        if self._client.set(self._key, self.holder, nx=True, px=self._ttl_ms):
            self.held = True
            self._renewed_at = time.monotonic()
            return None
        try:
            reply: Any = self._client.eval(HOLDER_LUA, 1, self._key, self._ttl_ms)
        except redis.exceptions.ResponseError as exc:
            if code_of(exc) != "NOPERM":
                raise
            # An ACL rule from before +pttl: read the holder as before, without the TTL-less check.
            log.warning(
                "add +pttl to the monitor's ACL rule (a lease left without a TTL is not seen): %s", exc
            )
            reply = [self._client.get(self._key), 0]
        current, pttl = reply[0], int(reply[1])
        if current == self.holder.encode():
            self.held = True
            self._renewed_at = 0.0
            self.keep()  # ours from a lost reply: renew now, its TTL has been running
            return None
        if pttl == NO_TTL:
            log.warning(
                "the sweep lease %s (%s) had no time to live, so no monitor could ever take it: it now "
                "expires in %g s (LEASE_TTL_SEC) and is then taken over",
                text(self._key),
                text(current),
                self._ttl_ms / 1000,
            )
        return "unknown (just expired)" if pttl == GONE or current is None else text(current)

    def save_cursor(self, cursor_key: str | bytes, value: bytes, ttl_ms: int) -> bool:
        """Write (or, for b"", delete) the cursor only while this lease is ours; False when it was not."""
        if self._without:
            if value:
                self._client.set(cursor_key, value, px=ttl_ms)
            else:
                self._client.delete(cursor_key)
            return True
        if not self.held:
            return False
        return bool(self._client.eval(SAVE_CURSOR_LUA, 2, self._key, cursor_key, self.holder, value, ttl_ms))

    def go_without(self) -> None:
        """Sweep without a lease (Redis refused to store one): keep() says yes, release() does nothing."""
        self._without = True

    def keep(self) -> bool:
        """Renew when a third of the TTL has passed; False once the lease is no longer ours."""
        if self._without:
            return True
        if not self.held:
            return False
        if time.monotonic() - self._renewed_at < self._renew_every:
            return True
        renewed = self._client.eval(RENEW_LUA, 1, self._key, self.holder, self._ttl_ms)
        self.held = bool(renewed)
        self._renewed_at = time.monotonic()
        return self.held

    def abandon(self) -> None:
        """Leave the lease to expire by itself (Redis stopped answering)."""
        self.held = False

    def release(self) -> None:
        if self.held:
            self.held = False
            self._client.eval(RELEASE_LUA, 1, self._key, self.holder)
