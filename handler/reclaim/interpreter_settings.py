"""The interpreter's settings while a sweep runs: on small machines the cycle's pace is set by its Python
work and its waits, and two of CPython's defaults cost it throughput there.

- The GIL switch interval: a worker whose reply has arrived should not wait the default 5 ms for another
  to yield the GIL while Redis sits idle.
- The cyclic garbage collector: a page's replies are tens of thousands of new lists and bytes, so the
  collector runs hundreds of times per sweep, and each older-generation pass walks every object of the
  process (in `serve`: FastAPI, pydantic, telemetry). Nothing the hot path keeps forms a reference cycle, so
  reference counting frees it all the same.

What each gains, as measured, is in docs/performance.md.

The invariant: the settings are the process's own again when the last sweep ends, however it ends (an
exception, KeyboardInterrupt between any two steps here). Sweeps may overlap (a caller's own threads): the
first one in changes the settings and the last one out restores them; a collector the process had disabled
itself stays disabled.

The cost, bounded: cyclic garbage made while the collector is paused waits for its next pass, at most one
sweep later (CYCLE_TIME_BUDGET_SEC, plus timeouts). The sweep's own cycles are few (the exception that
fails a sweep, with its traceback); other threads of the process (`serve`'s event loop, a /metrics scrape,
the telemetry export) keep allocating meanwhile, and their cyclic garbage is collected after the sweep.
"""

from __future__ import annotations

import gc
import sys
import threading

SWITCH_INTERVAL_SEC = 0.001


class _SweepSettings:
    """Counts the sweeps running in this process; the first one in and the last one out change settings.
    A context manager itself, so that nothing runs between entering and the `with` block's protection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sweeps = 0
        self._saved_switch_interval = 0.0
        self._collector_was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._sweeps:
                self._sweeps += 1
                return
            try:
                self._saved_switch_interval = sys.getswitchinterval()
                self._collector_was_enabled = gc.isenabled()
                self._sweeps = 1  # from here on, whatever was changed is restored
                sys.setswitchinterval(SWITCH_INTERVAL_SEC)
                gc.disable()
            except BaseException:
                if self._sweeps:
                    self._sweeps = 0
                    self._restore()
                raise

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._sweeps -= 1
            if self._sweeps == 0:
                self._restore()

    def _restore(self) -> None:
        try:
            if self._collector_was_enabled:
                gc.enable()
        finally:
            sys.setswitchinterval(self._saved_switch_interval)


_process = _SweepSettings()


def settings_for_sweeping() -> _SweepSettings:
    """The sweep's interpreter settings for the duration of a `with settings_for_sweeping():` block."""
    return _process
