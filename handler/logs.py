"""Logging set up at the edges: the invocation id on every line, errors on stderr, lines captured per
invocation for the host's `Logs`.

The Functions host makes one record of each line of the handler's stdout (Information) and stderr (Warning
when the line contains "warn", else Error), tied to no invocation, and one record of each `Logs` entry of a
2xx answer (Information, with the invocation id); handler/dev/host.py cites the source. A line sent both
ways is ingested, and billed, twice. So under the host each record goes one way, on one line: WARNING and
above to stderr (its level name makes the host's severity right), an invocation's INFO and DEBUG records
into its `Logs` (to stdout instead past MAX_CAPTURED_LINES, or when the answer is a failure, whose `Logs` the
host drops), everything else to stdout.
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
# A value read from Redis (a key, an entry ID, an error's text) is cut to this many characters in a log line
# (clip), and a whole message to MAX_MESSAGE_CHARS: a producer's 1 MB tweet id must not make a 1 MB line.
MAX_VALUE_CHARS = 200
MAX_MESSAGE_CHARS = 1900


def clip(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """A Redis-derived value for a log line: bytes decoded (what is not UTF-8 escaped), cut to `limit`
    characters, saying how long it was."""
    if isinstance(value, bytes | bytearray | memoryview):
        size = len(value)
        text = bytes(value[: limit * 4]).decode("utf-8", "backslashreplace")
        if size <= limit and len(text) <= limit:
            return text
        return f"{text[:limit]}… ({size:,} bytes)"
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


class _InvocationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.invocation_id = invocation_id.get()
        if not getattr(record, "message_bounded", False):
            message = record.getMessage()
            if len(message) > MAX_MESSAGE_CHARS:
                record.msg, record.args = (
                    f"{message[:MAX_MESSAGE_CHARS]}… (cut: {len(message):,} characters)",
                    None,
                )
            record.message_bounded = True
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


class _ConsoleOnly(logging.Filter):
    """Below WARNING, and not in an invocation's `Logs` already (the host would log it twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING and not getattr(record, "in_logs", False)


class _OneLine(logging.Formatter):
    """The host makes a record of each console line: a record's line breaks (a traceback's, a message's) are
    written as `\\n`, so that it stays one record, with its invocation id and its severity."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        return text.replace("\r\n", "\n").replace("\r", "\\r").replace("\n", "\\n")


# The host's Logs of one invocation: an outage must not make the answer huge (each line is bounded too, by
# MAX_MESSAGE_CHARS: at most about 2 MB in all).
MAX_CAPTURED_LINES = 1000


class CapturedLogs(list[str]):
    """One invocation's `Logs` lines, and the records behind them: when the answer is a failure the host
    drops its `Logs`, so `release` writes those records to stdout instead."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def release(self) -> None:
        records, self.records = self.records, []
        for record in records:
            record.in_logs = False
            for handler in _console:
                if record.levelno >= handler.level:  # as Logger.callHandlers does
                    handler.handle(record)


_console: list[logging.Handler] = []  # the stream handlers configure_logging set up last


class _CaptureHandler(logging.Handler):
    """Appends each record of the current invocation below `below` to its list (see `capture_logs`), up to
    MAX_CAPTURED_LINES; then one line says there were more (they went to stdout and stderr)."""

    def __init__(self, below: int) -> None:
        super().__init__()
        self._below = below

    def emit(self, record: logging.LogRecord) -> None:
        lines = _captured.get()
        if lines is None or record.levelno >= self._below:
            return
        if len(lines) < MAX_CAPTURED_LINES:
            lines.append(f"{record.levelname}: {record.getMessage()}")
            record.in_logs = True
            if isinstance(lines, CapturedLogs):
                lines.records.append(record)
        elif len(lines) == MAX_CAPTURED_LINES:
            lines.append("WARNING: more log lines of this invocation are on the handler's stdout and stderr")


def configure_logging(level: int, *, info_to_stdout: bool, json_lines: bool = False) -> None:
    """Under the host (`info_to_stdout`), each record goes one way (see the module's docstring); for the
    CLI, whose stdout carries its JSON result, everything goes to stderr (and every level into a capture)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter: logging.Formatter = JsonFormatter() if json_lines else logging.Formatter(FORMAT)
    console: list[logging.Handler]
    if info_to_stdout:
        formatter = _OneLine(formatter)
        capture = _CaptureHandler(below=logging.WARNING)
        stdout = logging.StreamHandler(sys.stdout)
        stdout.addFilter(_ConsoleOnly())
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.WARNING)
        console = [stdout, stderr]
    else:
        capture = _CaptureHandler(below=logging.CRITICAL + 1)
        console = [logging.StreamHandler(sys.stderr)]
    for handler in [capture, *console]:  # the capture first: it marks what the console then leaves out
        handler.addFilter(_InvocationFilter())
        handler.setFormatter(formatter)
        root.addHandler(handler)
    _console[:] = console
    root.setLevel(level)


@contextmanager
def capture_logs(for_invocation: str) -> Iterator[CapturedLogs]:
    """Collect the log lines of one invocation (in this context and threads it starts)."""
    lines = CapturedLogs()
    id_token = invocation_id.set(for_invocation)
    lines_token = _captured.set(lines)
    try:
        yield lines
    finally:
        _captured.reset(lines_token)
        invocation_id.reset(id_token)
