"""Log records to the exporters (`run` only: under the host, stdout, stderr and each invocation's `Logs`
reach Application Insights already). Every record the root logger handles becomes an OpenTelemetry log
record, a cycle's counts as its attributes; the gate keeps the exporters' own records out, so exporting
a record never logs another, and a record that cannot be converted never fails the code that logged it."""

from __future__ import annotations

import json
import logging

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider

from handler.telemetry.base import SCOPE
from handler.telemetry.log_gate import GATE


def _severity(levelno: int) -> SeverityNumber:
    for level, severity in (
        (logging.CRITICAL, SeverityNumber.FATAL),
        (logging.ERROR, SeverityNumber.ERROR),
        (logging.WARNING, SeverityNumber.WARN),
        (logging.INFO, SeverityNumber.INFO),
    ):
        if levelno >= level:
            return severity
    return SeverityNumber.DEBUG


def log_attributes(record: logging.LogRecord) -> dict[str, str | int | float | bool]:
    """The logger's name, and a cycle's counts (the summary's keys; `streams` as JSON)."""
    attributes: dict[str, str | int | float | bool] = {"logger": record.name}
    summary = getattr(record, "summary", None)
    if isinstance(summary, dict):
        for key, value in summary.items():
            if key == "streams" and value:
                attributes[key] = json.dumps(value)
            elif isinstance(value, str | int | float | bool):
                attributes[key] = value
    return attributes


class LogBridge(logging.Handler):
    """Every record the root logger handles, as an OpenTelemetry log record."""

    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self._logger = provider.get_logger(SCOPE)
        self.addFilter(GATE)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._logger.emit(
                timestamp=int(record.created * 1e9),
                severity_number=_severity(record.levelno),
                severity_text=record.levelname,
                body=record.getMessage(),
                attributes=log_attributes(record),
                exception=record.exc_info[1] if record.exc_info else None,
            )
        except Exception as exc:  # a log record never fails the code that logged it
            GATE.note(exc)
