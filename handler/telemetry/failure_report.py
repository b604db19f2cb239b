"""A failed export becomes one warning, at most every WARN_EVERY_SEC seconds per process whatever the
destination, naming the last reason noted (with secrets redacted). Exports are retried every interval on
the SDK's threads and the monitor carries on without them, so a destination that stays down is worth one
line now and then, never one per attempt."""

from __future__ import annotations

import logging
from collections.abc import Callable

from handler.telemetry.base import EXPORT_LOGGER
from handler.telemetry.redaction import Secrets
from handler.telemetry.throttle import Throttle

log = logging.getLogger(EXPORT_LOGGER)

WARN_EVERY_SEC = 600.0


class FailureReport:
    def __init__(self, every: float, clock: Callable[[], float], secrets: Secrets) -> None:
        self._throttle = Throttle(every, clock)
        self._secrets = secrets
        self._reason = ""

    def note(self, exc: BaseException) -> None:
        self._reason = f"{type(exc).__name__}: {exc}"

    def note_record(self, record: logging.LogRecord) -> None:
        """What an exporter logged at WARNING or above: the likeliest reason for its failure."""
        try:
            self._reason = record.getMessage()
        except Exception:  # a record whose arguments do not fit its message
            self._reason = str(record.msg)

    def report(self, ok: bool, what: str, destination: str) -> bool:
        """True when this failure was worth the warning it logged."""
        if ok or not self._throttle.due():
            return False
        noted = self._reason.strip()
        reason = noted.splitlines()[0][:300] if noted else "no reason given"
        log.warning(
            "telemetry: could not send %s to %s: %s (the monitor carries on; this warning repeats at most "
            "every %d minutes)",
            what,
            destination,
            self._secrets.redact(reason),
            round(self._throttle.every / 60),
        )
        return True
