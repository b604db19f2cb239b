"""Where telemetry goes, as the environment says: Azure Monitor for APPLICATIONINSIGHTS_CONNECTION_STRING,
an OTLP collector for OTEL_EXPORTER_OTLP_ENDPOINT (http/protobuf, or grpc when its package is installed).
Each destination's exporter classes are imported only when it is asked for, and its label, which log lines
name it by, is never more than scheme://host:port: the connection string's instrumentation key is hidden
from the gate, and no password or query string reaches a log line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter

from handler.telemetry.base import (
    CONNECTION_STRING,
    EXPORT_LOGGER,
    LOG_EXPORT_TIMEOUT,
    METRIC_EXPORT_TIMEOUT,
    OTLP_ENDPOINT,
    millis,
)
from handler.telemetry.log_gate import GATE

log = logging.getLogger(EXPORT_LOGGER)

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
        found.append(_azure_monitor(connection_string, environ))
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


def _azure_monitor(connection_string: str, environ: Mapping[str, str]) -> Destination:
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
    metrics, logs = (
        _bounded(millis(environ, limit) / 1000) for limit in (METRIC_EXPORT_TIMEOUT, LOG_EXPORT_TIMEOUT)
    )
    return Destination(
        label,
        lambda: AzureMonitorMetricExporter(connection_string=connection_string, **metrics),
        lambda: AzureMonitorLogExporter(connection_string=connection_string, **logs),
        azure=True,
    )


def _bounded(seconds: float) -> dict[str, float]:
    """The Azure exporter's HTTP request within the export's time limit: connecting (its `timeout`, 10 s
    by default), reading (azure-core's, 300 s by default), and no retry inside one export (azure-core's
    would repeat it up to 3 times): a failed batch is kept on disk and sent again with a later export."""
    return {"timeout": seconds, "read_timeout": seconds, "retry_total": 0}


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
