"""The metric reader each destination gets, so that every export reports a fresh reading of the registry
(handler/telemetry/registry_bridge.py) rather than whatever the last scrape left. It holds one collection
and export at a time, its thread outlives any one export's failure (that becomes the gate's warning), and
its shutdown takes no longer than the timeout it is given, the last export included.

An export counts as failed after OTEL_METRIC_EXPORT_TIMEOUT (the exporter's own HTTP timeouts are set to
it too, handler/telemetry/destinations.py). While one whose answer has not come is still under way, the
next interval collects nothing: a counter's increase then goes with the following export instead of being
collected and lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import MetricReader, MetricsData

from handler.telemetry.base import METRIC_EXPORT_TIMEOUT, millis
from handler.telemetry.guarded_exporter import GuardedMetricExporter
from handler.telemetry.log_gate import GATE
from handler.telemetry.registry_bridge import RegistryBridge


class RegistryReader(MetricReader):
    """Every OTEL_METRIC_EXPORT_INTERVAL ms (60 s by default), on a thread of its own: a fresh reading of
    the registry, the SDK's collection, the export; once more at shutdown. (The SDK's periodic reader
    cannot read the registry first: its `collect` is final.)"""

    def __init__(self, exporter: GuardedMetricExporter, environ: Mapping[str, str]) -> None:
        super().__init__(
            preferred_temporality=exporter._preferred_temporality,
            preferred_aggregation=exporter._preferred_aggregation,
        )
        self.bridge: RegistryBridge | None = None
        self._exporter = exporter
        self._interval = millis(environ, ("OTEL_METRIC_EXPORT_INTERVAL", 60_000)) / 1000
        self._timeout_millis = millis(environ, METRIC_EXPORT_TIMEOUT)
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one collection and export at a time
        self._thread = threading.Thread(target=self._tick, name="telemetry-export", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stopping.wait(self._interval):
            self.read_and_export(self._timeout_millis)
        self.read_and_export(self._timeout_millis)  # the last one

    def read_and_export(self, timeout_millis: float) -> None:
        with self._lock:
            if self._exporter.busy():
                GATE.note(TimeoutError("the previous export is still waiting for an answer"))
                GATE.report(False, "metrics", self._exporter.destination)
                return
            try:
                if self.bridge is not None:
                    with GATE.reading():
                        self.bridge.refresh()
                self.collect(timeout_millis=timeout_millis)
            except Exception as exc:  # the thread keeps ticking whatever one export meets
                GATE.note(exc)
                GATE.report(False, "metrics", self._exporter.destination)

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._exporter.export(metrics_data, timeout_millis=timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        self.read_and_export(timeout_millis)
        return self._exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        deadline = time.monotonic() + timeout_millis / 1000
        self._stopping.set()
        self._thread.join(timeout=timeout_millis / 1000)
        self._exporter.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
