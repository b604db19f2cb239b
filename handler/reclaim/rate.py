"""RECLAIM_MAX_RATE: entries claimed per second, per invocation and across all its streams (0: unlimited).

A drain of a million abandoned entries competes with the live processors for the same Redis; the cap keeps
the drain's share steady. Pages are made small enough (a quarter of a second's worth) and handed out no
earlier than they are due, so over any window of ten seconds the entries claimed stay within a tenth of the
cap: a page of p entries can move a window's count by at most p, and p <= rate / 4 = 2.5 % of ten seconds'
worth. Pure: the clock and the sleep are passed in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

PAGES_PER_SECOND = 4


class ClaimPacer:
    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._started: float | None = None
        self._handed_out = 0

    def page_size(self, configured: int) -> int:
        if not self.rate:
            return configured
        return max(1, min(configured, math.floor(self.rate / PAGES_PER_SECOND)))

    def due_in(self) -> float:
        """Seconds until the next page may be handed out (0 when it may go now)."""
        if not self.rate or self._started is None:
            return 0.0
        return max(0.0, self._started + self._handed_out / self.rate - self._clock())

    def wait(self) -> None:
        late = self.due_in()
        if late > 0:
            self._sleep(late)

    def handed_out(self, entries: int) -> None:
        if self._started is None:
            self._started = self._clock()
        self._handed_out += entries
