"""The OpenTelemetry pipeline, imported only when telemetry is wanted (see handler/telemetry/__init__.py).

- Metrics have one source, handler/metrics.py's registry. Before each export a reader takes one reading of
  `registry.collect()` (the gauges read from Redis included), and observable instruments report it:
  counters as OTel counters named like the Prometheus family (`tweets_monitor_processed_entries`, which
  Prometheus shows as `…_total`), gauges as gauges, their labels (`stream`, `outcome`, …) as attributes.
  A family the registry gains later (a new gauge) becomes an instrument at the next export. The one
  exception is the cycle-duration histogram: an OTel histogram with the Prometheus buckets, fed by
  `observe()` inside the invocation's context, so that with the host's sampled `traceparent` its exemplar
  carries the host's trace and span ids.
- Log records (`run` only): every record the root logger handles, a cycle's counts as attributes.
- Nothing is made global: no tracer, meter or logger provider is set for the process, so nothing records
  requests (FastAPI's own telemetry stays off), and the host's readiness probes never become requests.
- Exporting runs on the SDK's threads, never in an invocation. What the exporters log there (a refused
  connection, each retry, Azure's "Transmission succeeded") is kept off stdout, stderr and every
  invocation's `Logs`; a failed export becomes one warning, at most every 10 minutes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry._logs import SeverityNumber
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from handler.telemetry.base import CONNECTION_STRING, OTLP_ENDPOINT, STOP_WITHIN_SEC, Telemetry

if TYPE_CHECKING:
    from handler.metrics import Metrics
    from handler.reclaim.summary import CycleSummary

log = logging.getLogger(__name__)

WARN_EVERY_SEC = 600.0
SCOPE = "tweets-monitor"
DEFAULT_INGESTION = "https://dc.services.visualstudio.com"
# Loggers whose records are the exporters' own business, wherever they log from.
QUIET_LOGGERS = ("opentelemetry", "azure.monitor.opentelemetry")
# The SDK's own threads (the Azure exporter's SDK-stats and statsbeat readers): they only ever export.
QUIET_THREADS = ("Otel",)


class Gate(logging.Filter):
    """Keeps the exporters' own log records off every handler, and turns failed exports into one warning
    at most every `every` seconds (per process, whatever the destination), naming the last reason. What
    reading the registry logs on an export's behalf (the gauges' "could not read" while Redis is down) is
    let through at most as often: the invocations say it anyway, and `tweets_monitor_redis_up` is 0."""

    def __init__(self, every: float = WARN_EVERY_SEC, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._every = every
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._reason = ""
        self._secrets: set[str] = set()
        self._warned_at: float | None = None
        self._read_warned_at: float | None = None

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
        if secret:
            self._secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._local, "reading", False) and record.levelno >= logging.WARNING:
            return self._first_in_a_while(record)
        quiet = (
            getattr(self._local, "depth", 0) > 0
            or threading.current_thread().name.startswith(QUIET_THREADS)
            or any(record.name == name or record.name.startswith(name + ".") for name in QUIET_LOGGERS)
        )
        if quiet and record.levelno >= logging.WARNING:
            try:
                self._reason = record.getMessage()
            except Exception:  # a record whose arguments do not fit its message
                self._reason = str(record.msg)
        return not quiet

    def _first_in_a_while(self, record: logging.LogRecord) -> bool:
        """One decision per record, whichever handler asks first."""
        shown: bool | None = getattr(record, "telemetry_shown", None)
        if shown is None:
            with self._lock:
                now = self._clock()
                shown = self._read_warned_at is None or now - self._read_warned_at >= self._every
                if shown:
                    self._read_warned_at = now
            record.telemetry_shown = shown
        return shown

    def note(self, exc: BaseException) -> None:
        self._reason = f"{type(exc).__name__}: {exc}"

    def report(self, ok: bool, what: str, destination: str) -> bool:
        """True when this failure was worth the warning it logged."""
        if ok:
            return False
        with self._lock:
            now = self._clock()
            if self._warned_at is not None and now - self._warned_at < self._every:
                return False
            self._warned_at = now
            reason = self._reason.strip().splitlines()[0][:300] if self._reason.strip() else "no reason given"
        for secret in self._secrets:
            reason = reason.replace(secret, "…")
        log.warning(
            "telemetry: could not send %s to %s: %s (the monitor carries on; this warning repeats at most "
            "every %d minutes)",
            what, destination, reason, round(self._every / 60),
        )  # fmt: skip
        return True


GATE = Gate()


def install_gate() -> None:
    """On every handler of the root logger (stdout, stderr, the invocations' Logs), once."""
    for handler in logging.getLogger().handlers:
        if GATE not in handler.filters:
            handler.addFilter(GATE)


class GuardedMetricExporter(MetricExporter):
    """An exporter that never raises, logs only through the gate, and reports failures to it."""

    def __init__(self, inner: MetricExporter, destination: str) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.destination = destination

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        with GATE.exporting():
            try:
                result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
            except Exception as exc:
                GATE.note(exc)
                result = MetricExportResult.FAILURE
        GATE.report(result is MetricExportResult.SUCCESS, "metrics", self.destination)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        with GATE.exporting():
            try:
                return self.inner.force_flush(timeout_millis=timeout_millis)
            except Exception:
                return False

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with GATE.exporting():
            try:
                self.inner.shutdown(timeout_millis=timeout_millis)
            except Exception as exc:
                GATE.note(exc)


class GuardedLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, destination: str) -> None:
        self.inner = inner
        self.destination = destination

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        with GATE.exporting():
            try:
                result = self.inner.export(batch)
            except Exception as exc:
                GATE.note(exc)
                result = LogRecordExportResult.FAILURE
        GATE.report(result is LogRecordExportResult.SUCCESS, "log records", self.destination)
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with GATE.exporting():
            try:
                return self.inner.force_flush(timeout_millis)
            except Exception:
                return False

    def shutdown(self) -> None:
        with GATE.exporting():
            try:
                self.inner.shutdown()  # type: ignore[no-untyped-call]
            except Exception as exc:
                GATE.note(exc)


class RegistryBridge:
    """The registry's counters and gauges as observable instruments, all reporting one reading."""

    def __init__(self, registry: CollectorRegistry, meter: Meter, fed: str) -> None:
        self._registry = registry
        self._meter = meter
        self._fed = fed  # the histogram fed directly
        self._lock = threading.Lock()
        self._creating = threading.Lock()
        self._reading: dict[str, list[tuple[dict[str, str], int | float]]] = {}
        self._instruments: set[str] = set()

    def refresh(self) -> None:
        reading: dict[str, list[tuple[dict[str, str], int | float]]] = {}
        families: dict[str, Metric] = {}
        for family in self._registry.collect():
            if family.type == "counter":
                sample = f"{family.name}_total"
            elif family.type == "gauge":
                sample = family.name
            else:  # histograms: the cycle duration is fed directly (see Pipeline.observe)
                continue
            reading[family.name] = [
                (dict(s.labels), _number(s.value))
                for s in family.samples
                if s.name == sample and math.isfinite(float(s.value))
            ]
            families[family.name] = family
        with self._lock:
            self._reading = reading
        with self._creating:
            for name, family in families.items():
                if name not in self._instruments and name != self._fed:
                    self._instruments.add(name)
                    create = (
                        self._meter.create_observable_counter
                        if family.type == "counter"
                        else self._meter.create_observable_gauge
                    )
                    unit = "s" if name.endswith("_seconds") else ""
                    create(
                        name, callbacks=[self._callback(name)], unit=unit, description=family.documentation
                    )

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                points = self._reading.get(name, [])
            return [Observation(value, attributes) for attributes, value in points]

        return observe


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
        self._interval = _millis(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60_000) / 1000
        self._timeout_millis = _millis(environ, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000)
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


def _millis(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, "") or default)
    except ValueError:
        return default
    return value if 0 < value < math.inf else default


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


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


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
