"""Logging set up at the edges: the invocation id on every line, errors on stderr, lines captured per
invocation for the host's `Logs`.

The Functions host logs the handler's stdout as Information and its stderr as Error, so records below
WARNING go to stdout and the rest to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

invocation_id: ContextVar[str] = ContextVar("invocation_id", default="-")
_captured: ContextVar[list[str] | None] = ContextVar("captured_logs", default=None)

FORMAT = "%(asctime)s %(levelname)s %(name)s [invocation %(invocation_id)s] %(message)s"


class _InvocationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.invocation_id = invocation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (LOG_FORMAT=json); a cycle's counts come along under `summary`."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "invocation_id": getattr(record, "invocation_id", "-"),
            "message": record.getMessage(),
        }
        summary = getattr(record, "summary", None)
        if summary is not None:
            document["summary"] = summary
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


MAX_CAPTURED_LINES = 1000  # the host's Logs of one invocation: an outage must not make the answer huge


class _CaptureHandler(logging.Handler):
    """Appends each record of the current invocation to its list (see `capture_logs`), up to
    MAX_CAPTURED_LINES; then one line says how many more there were (stdout and stderr have them all)."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = _captured.get()
        if lines is None:
            return
        if len(lines) < MAX_CAPTURED_LINES:
            lines.append(f"{record.levelname}: {record.getMessage()}")
        elif len(lines) == MAX_CAPTURED_LINES:
            lines.append("WARNING: more log lines of this invocation are on the handler's stdout and stderr")


def configure_logging(level: int, *, info_to_stdout: bool, json_lines: bool = False) -> None:
    """Under the host, INFO goes to stdout and WARNING+ to stderr; for the CLI, whose stdout carries its
    JSON result, everything goes to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = JsonFormatter() if json_lines else logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [_CaptureHandler()]
    if info_to_stdout:
        stdout = logging.StreamHandler(sys.stdout)
        stdout.addFilter(_BelowWarning())
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.WARNING)
        handlers += [stdout, stderr]
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.addFilter(_InvocationFilter())
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


@contextmanager
def capture_logs(for_invocation: str) -> Iterator[list[str]]:
    """Collect the log lines of one invocation (in this context and threads it starts)."""
    lines: list[str] = []
    id_token = invocation_id.set(for_invocation)
    lines_token = _captured.set(lines)
    try:
        yield lines
    finally:
        _captured.reset(lines_token)
        invocation_id.reset(id_token)
