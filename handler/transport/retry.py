"""The one retry policy for talking to Redis: a lost connection or a timeout is retried twice, after 0.1 s and
0.4 s, on a fresh connection; then the error goes up and the invocation answers 503.

Every command the monitor sends is safe to repeat (see reclaim/page.py). redis-py's own retries are off
(connect.py), so a server that stops answering costs at most three timeouts: each attempt waits at most
REDIS_TIMEOUT_SEC (the socket's connect and read timeout), and an invocation that meets such a server answers
within 3 x REDIS_TIMEOUT_SEC + 1 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from handler.transport.failures import LOST_CONNECTION

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_DELAYS_SEC = (0.1, 0.4)  # two retries: a blip is ridden out, a dead server fails the cycle in seconds


def with_retries(call: Callable[[], T], before_retry: Callable[[BaseException], None] | None = None) -> T:
    """`call()`, retried after a connection error or a timeout; `before_retry(error)` runs before each
    retry (close connections, read a cluster's slot map again)."""
    for delay in (*RETRY_DELAYS_SEC, None):
        try:
            return call()
        except LOST_CONNECTION as exc:
            if delay is None:
                raise
            log.warning("lost the connection to Redis (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            if before_retry is not None:
                before_retry(exc)
    raise AssertionError("unreachable")
