"""Every exporter the pipeline hands to the SDK is wrapped: it never raises, what it logs meanwhile goes
through the gate (handler/telemetry/log_gate.py), and each export's outcome is reported there, so a
destination that fails is a warning now and then, never an exception on the SDK's threads. The SDK's
metric and log-record exporters differ only in their signatures and result values: `ExportGuard` holds
the policy once, parametrised by what is sent and what success and failure are; the two wrappers only
translate the SDK's calls into it.

An export that has no answer within its time limit (OTEL_METRIC_EXPORT_TIMEOUT, OTEL_BLRP_EXPORT_TIMEOUT)
is a failure, reported as such: it runs on a thread of its own, which finishes on its own (the exporters'
HTTP timeouts are set to the same limit) while the caller goes on. The Azure exporter's read timeout is
300 s otherwise, and the OTLP exporter ignores the limit it is given: an endpoint that accepted the
connection and never answered stopped the metrics without a word."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from handler.telemetry.log_gate import GATE

Result = TypeVar("Result", MetricExportResult, LogRecordExportResult)


class ExportGuard(Generic[Result]):
    """One exporter's calls: inside the gate's `exporting()`, exceptions noted (never raised), and each
    export's outcome reported as `what` to `destination`."""

    def __init__(
        self, what: str, destination: str, success: Result, failure: Result, limit: tuple[str, float]
    ) -> None:
        self.what = what
        self.destination = destination
        self._success: Result = success
        self._failure: Result = failure
        self._limit = limit  # (the variable that set it, seconds)
        self._sending: threading.Thread | None = None

    def busy(self) -> bool:
        """An export whose answer has not come is still under way."""
        sending = self._sending
        return sending is not None and sending.is_alive()

    def export(self, send: Callable[[], Result]) -> Result:
        outcome: list[Result] = []

        def sending() -> None:
            with GATE.exporting():
                try:
                    outcome.append(send())
                except Exception as exc:
                    GATE.note(exc)
                    outcome.append(self._failure)

        variable, within = self._limit
        self._sending = threading.Thread(target=sending, name="telemetry-send", daemon=True)
        self._sending.start()
        self._sending.join(within)
        if not outcome:
            GATE.note(TimeoutError(f"no answer within {within:g} s ({variable})"))
            GATE.report(False, self.what, self.destination)
            return self._failure
        GATE.report(outcome[0] is self._success, self.what, self.destination)
        return outcome[0]

    def force_flush(self, flush: Callable[[], bool]) -> bool:
        with GATE.exporting():
            try:
                return flush()
            except Exception:
                return False

    def shutdown(self, stop: Callable[[], object]) -> None:
        with GATE.exporting():
            try:
                stop()
            except Exception as exc:
                GATE.note(exc)


class GuardedMetricExporter(MetricExporter):
    """A metric exporter, guarded; `destination` names it in the warning."""

    def __init__(self, inner: MetricExporter, destination: str, limit: tuple[str, float]) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.destination = destination
        self._guard = ExportGuard(
            "metrics", destination, MetricExportResult.SUCCESS, MetricExportResult.FAILURE, limit
        )

    def busy(self) -> bool:
        return self._guard.busy()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return self._guard.export(lambda: self.inner.export(metrics_data, timeout_millis=timeout_millis))

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._guard.force_flush(lambda: self.inner.force_flush(timeout_millis=timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._guard.shutdown(lambda: self.inner.shutdown(timeout_millis=timeout_millis))


class GuardedLogExporter(LogRecordExporter):
    """A log-record exporter, guarded; `destination` names it in the warning."""

    def __init__(self, inner: LogRecordExporter, destination: str, limit: tuple[str, float]) -> None:
        self.inner = inner
        self.destination = destination
        self._guard = ExportGuard(
            "log records", destination, LogRecordExportResult.SUCCESS, LogRecordExportResult.FAILURE, limit
        )

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return self._guard.export(lambda: self.inner.export(batch))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._guard.force_flush(lambda: self.inner.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._guard.shutdown(self.inner.shutdown)
