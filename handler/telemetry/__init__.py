"""Telemetry in Azure Monitor or any OTLP collector, switched on by the environment alone.

`APPLICATIONINSIGHTS_CONNECTION_STRING` (every Function App with Application Insights has it) exports the
monitor's metrics through Microsoft's Azure Monitor OpenTelemetry exporter; `OTEL_EXPORTER_OTLP_ENDPOINT`
sends the same to an OTLP collector (http/protobuf; gRPC with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` when
opentelemetry-exporter-otlp-proto-grpc is installed). Both may be set. With neither (or with
`OTEL_SDK_DISABLED=true`) `start_telemetry` returns `OFF`: this module needs only the standard library, and
`handler.telemetry.export`, which imports OpenTelemetry, is imported only when one of them is set.

Log records are exported under `run` only: under the host, stdout, stderr and each invocation's `Logs`
reach Application Insights already. What the pipeline does is described in handler/telemetry/export.py.

Under the host, every invocation ends with `flush_after_invocation`: the host never stops the handler
gently (it kills it), so an export only at intervals would lose what was counted since the last one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from handler.telemetry.base import (
    CONNECTION_STRING,
    MAX_WAITING_SUMMARIES,
    OFF,
    OTLP_ENDPOINT,
    STOP_WITHIN_SEC,
    Telemetry,
)

if TYPE_CHECKING:
    from handler.metrics import Metrics
    from handler.reclaim.summary import CycleSummary

__all__ = [
    "CONNECTION_STRING",
    "OFF",
    "OTLP_ENDPOINT",
    "STOP_WITHIN_SEC",
    "Telemetry",
    "flush_after_invocation",
    "start_telemetry",
    "wanted",
]

log = logging.getLogger(__name__)


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(environ.get(CONNECTION_STRING, "").strip() or environ.get(OTLP_ENDPOINT, "").strip())


def start_telemetry(metrics: Metrics, *, export_logs: bool, wait: bool) -> Telemetry:
    """The exporters the environment asks for, reading `metrics.registry` at each export. `wait=False`
    (the handler) starts them on a thread of their own, so the host's readiness probe does not wait for
    OpenTelemetry's imports; `run` waits, so its first cycle's log records are exported too."""
    if not wanted():
        return OFF
    if wait:
        return _build(metrics, export_logs)
    return _Starting(lambda: _build(metrics, export_logs))


def _build(metrics: Metrics, export_logs: bool) -> Telemetry:
    try:
        from handler.telemetry.export import Pipeline  # noqa: PLC0415  (OpenTelemetry, only now)

        return Pipeline(metrics, os.environ, export_logs=export_logs)
    except Exception as exc:  # telemetry never stops the monitor from starting
        log.warning("telemetry: not started: %s: %s", type(exc).__name__, exc)
        return OFF


class _Starting(Telemetry):
    """Telemetry whose exporters start on a thread; until they are up, summaries wait (the counters and
    gauges need not: they are read from the registry at each export)."""

    def __init__(self, build: Callable[[], Telemetry]) -> None:
        self._lock = threading.Lock()
        self._ready: Telemetry | None = None
        self._stopped = False
        self._waiting: list[CycleSummary] = []
        self._thread = threading.Thread(
            target=self._start, args=(build,), name="telemetry-start", daemon=True
        )
        self._thread.start()

    def _start(self, build: Callable[[], Telemetry]) -> None:
        telemetry = build()
        with self._lock:
            if self._stopped:  # stopped while starting: its exporters' threads must not outlive the stop
                telemetry.stop(0.0)
                return
            self._ready = telemetry
            waiting, self._waiting = self._waiting, []
        for summary in waiting:
            telemetry.observe(summary)

    def invocation(self, headers: Mapping[str, str]) -> AbstractContextManager[object]:
        ready = self._ready
        return ready.invocation(headers) if ready is not None else nullcontext()

    def observe(self, summary: CycleSummary) -> None:
        with self._lock:
            ready = self._ready
            if ready is None:
                if len(self._waiting) < MAX_WAITING_SUMMARIES:
                    self._waiting.append(summary)
                return
        ready.observe(summary)

    def flush(self, within: float) -> None:
        ready = self._ready
        if ready is not None:  # still starting: nothing counted is exported yet, nothing to flush
            ready.flush(within)

    def stop(self, within: float = STOP_WITHIN_SEC) -> None:
        deadline = time.monotonic() + within
        self._thread.join(timeout=within)
        with self._lock:
            self._stopped = True
            ready = self._ready
        if ready is not None:
            ready.stop(max(0.0, deadline - time.monotonic()))


# How long an invocation's answer waits for its export, at most: a healthy endpoint answers well within it
# (docs/operate.md has the measurement); a slower or unreachable one finishes, or fails, on its own thread,
# and delays no answer longer than this.
FLUSH_WITHIN_SEC = 0.25


def flush_after_invocation(telemetry: Telemetry, within: float = FLUSH_WITHIN_SEC) -> None:
    """Export the metrics now (a fresh reading of the registry, as at every periodic export), waiting
    `within` seconds at most. The Functions host ends the handler only with a kill (SIGKILL: at a function
    timeout, a restart, a deploy, a settings change, scale-in), which no flush survives; exported before each
    answer, what an invocation counted is sent before anything can kill the worker that counted it. Telemetry
    still starting, or off, has nothing to export."""
    telemetry.flush(within)
