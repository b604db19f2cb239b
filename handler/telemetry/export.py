"""The OpenTelemetry pipeline, imported only when telemetry is wanted (see handler/telemetry/__init__.py).

- Metrics have one source, handler/metrics.py's registry, read before each export
  (handler/telemetry/registry_reader.py) and reported by observable instruments
  (handler/telemetry/registry_bridge.py). The one exception is the cycle-duration histogram: an OTel
  histogram with the Prometheus buckets, fed by `observe()` inside the invocation's context, so that with
  the host's sampled `traceparent` its exemplar carries the host's trace and span ids.
- Log records (`run` only): every record the root logger handles, a cycle's counts as attributes.
- Nothing is made global: no tracer, meter or logger provider is set for the process, so nothing records
  requests (FastAPI's own telemetry stays off), and the host's readiness probes never become requests.
- Every exporter is wrapped once, whatever it sends (handler/telemetry/guarded_exporter.py).
- Exporting runs on the SDK's threads, never in an invocation. What the exporters log there (a refused
  connection, each retry, Azure's "Transmission succeeded") is kept off stdout, stderr and every
  invocation's `Logs`; a failed export becomes one warning, at most every 10 minutes
  (handler/telemetry/log_gate.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.metrics_core import Metric

from handler.telemetry.base import CONNECTION_STRING, OTLP_ENDPOINT, SCOPE, STOP_WITHIN_SEC, Telemetry
from handler.telemetry.guarded_exporter import GuardedLogExporter, GuardedMetricExporter
from handler.telemetry.log_gate import GATE, install_gate
from handler.telemetry.registry_bridge import RegistryBridge
from handler.telemetry.registry_reader import RegistryReader

if TYPE_CHECKING:
    from handler.metrics import Metrics
    from handler.reclaim.summary import CycleSummary

log = logging.getLogger(__name__)

DEFAULT_INGESTION = "https://dc.services.visualstudio.com"


@dataclass(frozen=True)
class Destination:
    label: str
    metrics: Callable[[], MetricExporter]
    logs: Callable[[], LogRecordExporter]
    azure: bool = False


def destinations(environ: Mapping[str, str]) -> list[Destination]:
    found: list[Destination] = []
    connection_string = environ.get(CONNECTION_STRING, "").strip()
    if connection_string:
        found.append(_azure_monitor(connection_string))
    if environ.get(OTLP_ENDPOINT, "").strip():
        protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip().lower() or "http/protobuf"
        label = f"the OTLP collector at {_shown(environ[OTLP_ENDPOINT].strip())} ({protocol})"
        if protocol == "http/protobuf":
            found.append(_otlp_http(label))
        elif protocol == "grpc":
            grpc = _otlp_grpc(label)
            if grpc is not None:
                found.append(grpc)
        else:
            log.warning(
                "telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (http/protobuf or grpc)", protocol
            )
    return found


def _azure_monitor(connection_string: str) -> Destination:
    from azure.monitor.opentelemetry.exporter import (  # noqa: PLC0415  (only when its variable is set)
        AzureMonitorLogExporter,
        AzureMonitorMetricExporter,
    )

    fields = dict(
        (part.split("=", 1)[0].strip().lower(), part.split("=", 1)[1].strip())
        for part in connection_string.split(";")
        if "=" in part
    )
    GATE.hide(fields.get("instrumentationkey", ""))
    label = f"Azure Monitor at {_shown(fields.get('ingestionendpoint') or DEFAULT_INGESTION)}"
    return Destination(
        label,
        lambda: AzureMonitorMetricExporter(connection_string=connection_string),
        lambda: AzureMonitorLogExporter(connection_string=connection_string),
        azure=True,
    )


def _otlp_http(label: str) -> Destination:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

    return Destination(label, OTLPMetricExporter, OTLPLogExporter)


def _otlp_grpc(label: str) -> Destination | None:
    try:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # type: ignore[import-not-found]  # noqa: PLC0415
            OTLPLogExporter,
        )
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]  # noqa: PLC0415
            OTLPMetricExporter,
        )
    except ImportError:
        log.warning(
            "telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the opentelemetry-exporter-otlp-proto-grpc "
            "package, which this app does not carry: nothing goes to %s (http/protobuf needs nothing more)",
            label,
        )
        return None
    return Destination(label, OTLPMetricExporter, OTLPLogExporter)


def _shown(url: str) -> str:
    """scheme://host:port only: never a password or a query string in a log line."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    except ValueError:
        return "(an endpoint that is not a URL)"


def _family(metric: Any) -> Metric:
    families: list[Metric] = metric.collect()
    return families[0]


def _boundaries(histogram: Metric) -> list[float]:
    return [
        float(s.labels["le"])
        for s in histogram.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]


def _resource(environ: Mapping[str, str]) -> Resource:
    name = environ.get("OTEL_SERVICE_NAME") or environ.get("WEBSITE_SITE_NAME") or SCOPE
    return Resource.create({"service.name": name})


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


class Pipeline(Telemetry):
    def __init__(self, metrics: Metrics, environ: Mapping[str, str], *, export_logs: bool) -> None:
        install_gate()
        found = []
        for destination in destinations(environ):
            try:
                found.append((destination, destination.metrics()))
            except Exception as exc:  # e.g. a connection string without an instrumentation key
                log.warning(
                    "telemetry: nothing goes to %s: %s: %s", destination.label, type(exc).__name__, exc
                )
        if not found:
            raise RuntimeError("no destination could be set up")
        resource = _resource(environ)
        readers = [RegistryReader(GuardedMetricExporter(exporter, d.label), environ) for d, exporter in found]
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
            self._logs = LoggerProvider(resource=resource, shutdown_on_exit=False)
            for destination, _ in found:
                exporter = GuardedLogExporter(destination.logs(), destination.label)
                self._logs.add_log_record_processor(BatchLogRecordProcessor(exporter))
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


def _quietly(job: Callable[[], object]) -> None:
    with GATE.exporting():
        try:
            job()
        except Exception as exc:
            GATE.note(exc)
