"""The OpenTelemetry pipeline, imported only when telemetry is wanted (see handler/telemetry/__init__.py):
it starts the exporters each destination needs and stops them within one bound. Every module of
handler/telemetry that imports OpenTelemetry is imported through this one, which `__init__` imports only
then; the parts it assembles each have a module of their own.

- Metrics have one source, handler/metrics.py's registry, read before each export
  (handler/telemetry/registry_reader.py) and reported by observable instruments
  (handler/telemetry/registry_bridge.py). The one exception is the cycle-duration histogram: an OTel
  histogram with the Prometheus buckets, fed by `observe()` inside the invocation's context, so that with
  the host's sampled `traceparent` its exemplar carries the host's trace and span ids.
- Log records (`run` only): handler/telemetry/log_bridge.py.
- Where they go: handler/telemetry/destinations.py; each exporter wrapped by
  handler/telemetry/guarded_exporter.py.
- Nothing is made global: no tracer, meter or logger provider is set for the process, so nothing records
  requests (FastAPI's own telemetry stays off), and the host's readiness probes never become requests.
- Exporting runs on the SDK's threads, never in an invocation; what the exporters log there stays off
  every handler, and a failed export becomes one warning, at most every 10 minutes
  (handler/telemetry/log_gate.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.metrics_core import Metric

from handler.telemetry.base import (
    EXPORT_LOGGER,
    LOG_EXPORT_TIMEOUT,
    METRIC_EXPORT_TIMEOUT,
    SCOPE,
    STOP_WITHIN_SEC,
    Telemetry,
    millis,
)
from handler.telemetry.destinations import Destination, destinations
from handler.telemetry.guarded_exporter import GuardedLogExporter, GuardedMetricExporter
from handler.telemetry.log_bridge import LogBridge
from handler.telemetry.log_gate import GATE, install_gate
from handler.telemetry.registry_bridge import RegistryBridge
from handler.telemetry.registry_reader import RegistryReader

if TYPE_CHECKING:
    from handler.metrics import Metrics
    from handler.reclaim.summary import CycleSummary

log = logging.getLogger(EXPORT_LOGGER)


class Pipeline(Telemetry):
    def __init__(self, metrics: Metrics, environ: Mapping[str, str], *, export_logs: bool) -> None:
        install_gate()
        found = _set_up(destinations(environ))
        resource = _resource(environ)
        limit = (METRIC_EXPORT_TIMEOUT[0], millis(environ, METRIC_EXPORT_TIMEOUT) / 1000)
        readers = [
            RegistryReader(GuardedMetricExporter(exporter, d.label, limit), environ) for d, exporter in found
        ]
        self._meters = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        meter = self._meters.get_meter(SCOPE)
        duration = _family(metrics.duration)
        bridge = RegistryBridge(metrics.registry, meter, fed=duration.name)
        for reader in readers:
            reader.bridge = bridge
        self._duration = meter.create_histogram(
            duration.name,
            unit="s",
            description=duration.documentation,
            explicit_bucket_boundaries_advisory=_boundaries(duration),
        )
        self._propagator = TraceContextTextMapPropagator()
        self._logs: LoggerProvider | None = None
        self._handler: LogBridge | None = None
        if export_logs:
            self._logs = _log_provider(resource, [d for d, _ in found], environ)
            self._handler = LogBridge(self._logs)
            logging.getLogger().addHandler(self._handler)
        self._azure = any(d.azure for d, _ in found)
        self._lock = threading.Lock()
        self._stopped = False
        log.info(
            "telemetry: %s to %s",
            "metrics and log records" if export_logs else "metrics",
            " and ".join(d.label for d, _ in found),
        )

    def invocation(self, headers: Mapping[str, str]) -> AbstractContextManager[object]:
        if not headers.get("traceparent"):
            return nullcontext()
        return self._attached(self._propagator.extract(headers))

    @staticmethod
    @contextmanager
    def _attached(context: otel_context.Context) -> Iterator[None]:
        token = otel_context.attach(context)
        try:
            yield
        finally:
            otel_context.detach(token)

    def observe(self, summary: CycleSummary) -> None:
        self._duration.record(summary.duration_ms / 1000)  # as Metrics.observe does

    def flush(self, within: float) -> None:
        """The meter provider flushes on a thread of its own (a slow endpoint finishes, or fails, there);
        the caller waits `within` at most."""
        flush = threading.Thread(
            target=_flush_quietly, args=(self._meters, within), name="telemetry-flush", daemon=True
        )
        flush.start()
        flush.join(timeout=within)

    def stop(self, within: float = STOP_WITHIN_SEC) -> None:
        """Both providers flush at once, on threads of their own; the caller waits `within` at most."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + within
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        jobs: list[Callable[[], object]] = [lambda: self._meters.shutdown(timeout_millis=within * 1000)]
        if self._logs is not None:
            jobs.append(self._logs.shutdown)
        if self._azure:
            jobs += _azure_statistics()
        threads = [
            threading.Thread(target=_quietly, args=(job,), name="telemetry-stop", daemon=True) for job in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _set_up(found: list[Destination]) -> list[tuple[Destination, MetricExporter]]:
    """Each destination with its metric exporter; one that cannot be set up is a warning, none an error."""
    ready = []
    for destination in found:
        try:
            ready.append((destination, destination.metrics()))
        except Exception as exc:  # e.g. a connection string without an instrumentation key
            log.warning("telemetry: nothing goes to %s: %s: %s", destination.label, type(exc).__name__, exc)
    if not ready:
        raise RuntimeError("no destination could be set up")
    return ready


def _log_provider(resource: Resource, found: list[Destination], environ: Mapping[str, str]) -> LoggerProvider:
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    limit = (LOG_EXPORT_TIMEOUT[0], millis(environ, LOG_EXPORT_TIMEOUT) / 1000)
    for destination in found:
        exporter = GuardedLogExporter(destination.logs(), destination.label, limit)
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    return provider


def _resource(environ: Mapping[str, str]) -> Resource:
    name = environ.get("OTEL_SERVICE_NAME") or environ.get("WEBSITE_SITE_NAME") or SCOPE
    return Resource.create({"service.name": name})


def _family(metric: Any) -> Metric:
    families: list[Metric] = metric.collect()
    return families[0]


def _boundaries(histogram: Metric) -> list[float]:
    return [
        float(s.labels["le"])
        for s in histogram.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]


def _azure_statistics() -> list[Callable[[], object]]:
    """The Azure exporter keeps meter providers of its own (SDK stats sent to the same resource, statsbeat
    to Microsoft) whose exit handlers would flush for up to 30 s each: they stop within the same bound."""
    try:
        from azure.monitor.opentelemetry.exporter.statsbeat._statsbeat import (  # noqa: PLC0415
            shutdown_statsbeat_metrics,
        )
        from azure.monitor.opentelemetry.exporter.statsbeat.customer import (  # noqa: PLC0415
            shutdown_customer_sdkstats_metrics,
        )
    except ImportError:  # another version of the exporter
        return []
    return [shutdown_statsbeat_metrics, shutdown_customer_sdkstats_metrics]


def _flush_quietly(meters: MeterProvider, within: float) -> None:
    """Outside the gate: the readers report their own export failures; a flush adds no warning of its own."""
    try:
        meters.force_flush(timeout_millis=within * 1000)
    except Exception as exc:  # an export never fails an invocation
        log.debug("telemetry: flush failed: %s: %s", type(exc).__name__, exc)


def _quietly(job: Callable[[], object]) -> None:
    with GATE.exporting():
        try:
            job()
        except Exception as exc:
            GATE.note(exc)
