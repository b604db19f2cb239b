"""The interpreter's settings while a sweep runs: the cycle's hot path is CPU-bound in Python on small
machines, and two of CPython's defaults cost it throughput there.

- The GIL switch interval: a worker whose reply has arrived should not wait the default 5 ms for another
  to yield the GIL while Redis sits idle (measured +5-10 % on 2 cores, bench/reclaim_bench.py).
- The cyclic garbage collector: a page's replies are tens of thousands of new lists and bytes, so the
  collector runs hundreds of times per cycle, and each older-generation pass walks every object of the
  process (in `serve`: FastAPI, pydantic, telemetry). Nothing the hot path keeps forms a reference cycle, so
  reference counting frees it all the same; pausing the collector during a sweep measured +8-12 % on TLS at
  1 ms (docs/performance.md). Memory stays flat: a page is freed when its worker lets go of it.

The invariant: the settings are the process's own again when the last sweep ends, whatever happened inside
(an exception, a signal). Sweeps may overlap (a caller's own threads): the first one in changes the
settings and the last one out restores them; a collector the process had disabled itself stays disabled.
Cyclic garbage made meanwhile (an exception's traceback on a retry) waits for the collector's next pass.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH_INTERVAL_SEC = 0.001


class _HotPath:
    """Counts the sweeps running in this process; the first one in and the last one out change settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sweeps = 0
        self._saved_switch_interval = 0.0
        self._collector_was_enabled = False

    def enter(self) -> None:
        with self._lock:
            if self._sweeps == 0:
                self._saved_switch_interval = sys.getswitchinterval()
                self._collector_was_enabled = gc.isenabled()
                sys.setswitchinterval(SWITCH_INTERVAL_SEC)
                gc.disable()
            self._sweeps += 1

    def leave(self) -> None:
        with self._lock:
            self._sweeps -= 1
            if self._sweeps == 0:
                sys.setswitchinterval(self._saved_switch_interval)
                if self._collector_was_enabled:
                    gc.enable()


_process = _HotPath()


@contextmanager
def hot_path() -> Iterator[None]:
    """The sweep's interpreter settings for the duration of the `with` block."""
    _process.enter()
    try:
        yield
    finally:
        _process.leave()
