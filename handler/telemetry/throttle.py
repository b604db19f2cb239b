"""At most once every so many seconds, across threads. A destination that stays down fails every export
interval, and the gauges that cannot read Redis warn at every reading: a throttle is what keeps each of
them to one line now and then instead of one per attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throttle:
    """`due()` is true the first time, then again only once `every` seconds (by `clock`) have passed since
    it last was; one decision at a time, whichever thread asks."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def due(self) -> bool:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self.every:
                return False
            self._last = now
            return True
