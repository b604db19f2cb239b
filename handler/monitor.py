"""The monitor: the one object between the edges (the HTTP app, the CLI) and the core.

It owns what lives as long as the process: the Redis connection, the cycle over the streams, the metrics and
their export. An edge asks it for a cycle and gets a value back, a CycleSummary or a CycleFailed, never an
exception: failures are translated here, once (`failure_of`), so the app's 503 and 500 and the CLI's exit 1
cannot drift apart. Only what ends a process (KeyboardInterrupt, SystemExit) goes through.

Metrics and telemetry are opt-in (`serve` and `run` have them; `reclaim` stays lean: no prometheus_client).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from handler.errors import MonitorError, RedisUnavailableError
from handler.reclaim.streams import StreamsCycle
from handler.reclaim.summary import CycleFailure, CycleSummary
from handler.settings import MonitorSettings
from handler.telemetry import OFF, Telemetry
from handler.transport.connect import RedisConnection, tls_hint
from handler.transport.failures import REDIS_FAILURES, is_unavailable

if TYPE_CHECKING:
    from handler.metrics import Metrics

log = logging.getLogger(__name__)

ALREADY_RUNNING = "a cycle is already running here"


@dataclass(frozen=True)
class CycleFailed:
    """A cycle that ended in a failure: what kind (the `outcome` of tweets_monitor_cycles_total) and what to
    tell the operator."""

    outcome: CycleFailure
    message: str

    @property
    def unavailable(self) -> bool:
        """Redis could not do the work now (HTTP 503); otherwise something must be fixed (HTTP 500)."""
        return self.outcome == CycleFailure.REDIS_UNAVAILABLE


def failure_of(exc: Exception, settings: MonitorSettings) -> CycleFailed:
    """The one translation of a failure into what the edges report. A Redis failure that escaped the
    cycle's own wording is named by its kind (failures.py); anything else is unexpected, and logged with
    its traceback, which says what to fix."""
    if isinstance(exc, RedisUnavailableError):
        return CycleFailed(CycleFailure.REDIS_UNAVAILABLE, str(exc))
    if isinstance(exc, MonitorError):
        return CycleFailed(CycleFailure.ERROR, str(exc))
    if isinstance(exc, REDIS_FAILURES):
        outcome = CycleFailure.REDIS_UNAVAILABLE if is_unavailable(exc) else CycleFailure.ERROR
        hint = tls_hint(settings, exc)
        return CycleFailed(outcome, f"Redis at {settings.redis_shown}: {type(exc).__name__}: {exc}{hint}")
    log.error("unexpected failure of the reclaim cycle", exc_info=exc)
    return CycleFailed(CycleFailure.ERROR, f"unexpected failure of the reclaim cycle: {exc!r}")


class Monitor:
    """One per process: cycles over STREAM_NAME's streams, at most one at a time, each observed by the
    metrics and the telemetry when they are on."""

    def __init__(
        self,
        settings: MonitorSettings,
        connection: RedisConnection | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.connection = connection or RedisConnection(settings)  # connects on first use
        self.cycle = StreamsCycle(self.connection, settings)
        self.metrics = metrics
        if metrics is not None:
            metrics.watch_group(self.connection, settings, self.cycle.streams)
        self.telemetry: Telemetry = OFF
        self._one_at_a_time = threading.Lock()

    @classmethod
    def observed(cls, settings: MonitorSettings) -> Monitor:
        """With metrics (prometheus_client, imported only now)."""
        from handler.metrics import Metrics  # noqa: PLC0415

        return cls(settings, metrics=Metrics())

    def start_telemetry(self, *, export_logs: bool, wait: bool) -> Telemetry:
        """The metrics' export, when the environment asks for it (see handler/telemetry)."""
        from handler.telemetry import start_telemetry  # noqa: PLC0415  (no OpenTelemetry unless asked)

        if self.metrics is not None:
            self.telemetry = start_telemetry(self.metrics, export_logs=export_logs, wait=wait)
        return self.telemetry

    def run_scheduled(self, should_stop: Callable[[], bool]) -> CycleSummary | CycleFailed:
        """A cycle the timer (or `run`) started: recorded as the heartbeat once it completes."""
        return self._run(self.cycle.run_scheduled, should_stop)

    def run_once(self, should_stop: Callable[[], bool]) -> CycleSummary | CycleFailed:
        """A cycle an operator started (`reclaim`): it records no heartbeat, so it cannot hide a stopped
        timer."""
        return self._run(self.cycle.run, should_stop)

    def _run(
        self, cycle: Callable[[Callable[[], bool]], CycleSummary], should_stop: Callable[[], bool]
    ) -> CycleSummary | CycleFailed:
        if not self._one_at_a_time.acquire(blocking=False):
            busy = CycleSummary.skipped_because(ALREADY_RUNNING)
            log.info(busy.log_line())
            self._observe(busy)
            return busy
        try:
            summary = cycle(should_stop)
        except Exception as exc:  # translated at this one boundary (failure_of)
            failure = failure_of(exc, self.settings)
            if self.metrics is not None:
                self.metrics.observe_failure(failure.outcome)
            return failure
        finally:
            self._one_at_a_time.release()
        self._observe(summary)
        return summary

    def _observe(self, summary: CycleSummary) -> None:
        if self.metrics is not None:
            self.metrics.observe(summary, self.settings.STREAM_NAME)
        self.telemetry.observe(summary)

    def close(self) -> None:
        self.telemetry.stop()  # flushes for at most 2 s, before the gauges' connection closes
        self.connection.close()
