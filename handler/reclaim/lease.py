"""A lease so that only one monitor sweeps a group at a time.

The lease is a key in the stream's hash slot holding its holder's identity, always written with a TTL, so a
lock without expiry cannot exist: when a holder dies, the lease expires and the next monitor takes it over.
A running cycle renews it between pages; renewal and release only touch a lease whose value is still this
holder's (compare-and-set in Lua), so a monitor that stalled past the TTL can never extend or delete its
successor's lease. The lease only keeps monitors from duplicating work: correctness never depends on it
(XCLAIM's min-idle and the dead-letter script's ownership check guard every entry).
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from handler.transport.client import Client, text

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
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
        current = self._client.get(self._key)
        if current == self.holder.encode():
            self.held = True
            self._renewed_at = 0.0
            self.keep()  # ours from a lost reply: renew now, its TTL has been running
            return None
        return "unknown (just expired)" if current is None else text(current)

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
