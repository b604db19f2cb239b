"""The gate: one log filter on every handler of the root logger (stdout, stderr, the invocations' `Logs`)
and on the log bridge, one per process (`GATE`) since those handlers are the process's.

Exporting runs on the SDK's threads, never in an invocation. What the exporters log there (a refused
connection, each retry, Azure's "Transmission succeeded") is their own business: it is kept off every
handler, and its warnings become the reason a failed export's one warning names
(handler/telemetry/failure_report.py). What reading the registry logs on an export's behalf (the gauges'
"could not read" while Redis is down) passes at most as often as that warning: the invocations say it
anyway, and `tweets_monitor_redis_up` is 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from handler.telemetry.failure_report import WARN_EVERY_SEC, FailureReport
from handler.telemetry.redaction import Secrets
from handler.telemetry.throttle import Throttle

# Loggers whose records are the exporters' own business, wherever they log from.
QUIET_LOGGERS = ("opentelemetry", "azure.monitor.opentelemetry")
# The SDK's own threads (the Azure exporter's SDK-stats and statsbeat readers): they only ever export.
QUIET_THREADS = ("Otel",)


class Gate(logging.Filter):
    """Keeps the exporters' own log records off every handler, and turns failed exports into one warning
    at most every `every` seconds, naming the last reason; lets what reading the registry logs through at
    most as often."""

    def __init__(self, every: float = WARN_EVERY_SEC, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._local = threading.local()
        self._secrets = Secrets()
        self._failures = FailureReport(every, clock, self._secrets)
        self._readings = Throttle(every, clock)

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._local.reading = True
        try:
            yield
        finally:
            self._local.reading = False

    @contextmanager
    def exporting(self) -> Iterator[None]:
        """Whatever is logged in this thread meanwhile is the exporter's (azure-core, urllib3 included)."""
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    def hide(self, secret: str) -> None:
        self._secrets.hide(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._local, "reading", False) and record.levelno >= logging.WARNING:
            return self._first_in_a_while(record)
        quiet = (
            getattr(self._local, "depth", 0) > 0
            or threading.current_thread().name.startswith(QUIET_THREADS)
            or any(record.name == name or record.name.startswith(name + ".") for name in QUIET_LOGGERS)
        )
        if quiet and record.levelno >= logging.WARNING:
            self._failures.note_record(record)
        return not quiet

    def _first_in_a_while(self, record: logging.LogRecord) -> bool:
        """One decision per record, whichever handler asks first."""
        shown: bool | None = getattr(record, "telemetry_shown", None)
        if shown is None:
            shown = self._readings.due()
            record.telemetry_shown = shown
        return shown

    def note(self, exc: BaseException) -> None:
        self._failures.note(exc)

    def report(self, ok: bool, what: str, destination: str) -> bool:
        """True when this failure was worth the warning it logged."""
        return self._failures.report(ok, what, destination)


GATE = Gate()


def install_gate() -> None:
    """On every handler of the root logger (stdout, stderr, the invocations' Logs), once."""
    for handler in logging.getLogger().handlers:
        if GATE not in handler.filters:
            handler.addFilter(GATE)
