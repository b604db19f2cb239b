"""Stand-ins for where telemetry goes, all on 127.0.0.1, each decoding what it receives:

- `Breeze`: Application Insights' ingestion endpoint (the connection string's `IngestionEndpoint`): POST
  `<endpoint>/v2.1/track` with a JSON array of envelopes (gzip'd or not), answered as the service answers,
  `{"itemsReceived": N, "itemsAccepted": N, "errors": []}`.
- `OtlpCollector`: an OTLP/HTTP receiver: POST /v1/metrics and /v1/logs, protobuf, decoded with
  opentelemetry-proto's ExportMetricsServiceRequest and ExportLogsServiceRequest.
- `Tripwire`: the HTTP(S) proxy every telemetry test sets, with NO_PROXY covering 127.0.0.1 only: a client
  that tried to reach anything off this machine (Microsoft's control plane, statsbeat) would connect here
  instead, and the test fails on it.

`Breeze` and `OtlpCollector` misbehave on demand (`mode`, see `Mode`): answer 500 without keeping the
data, keep it and drop the connection before answering (the answer is lost, so the client cannot tell
whether it arrived), or never answer at all.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

T = TypeVar("T")

INSTRUMENTATION_KEY = "00000000-0000-4000-8000-0000000a11ce"
QUIET_AZURE = {  # so that nothing but the tests' own endpoints is ever called
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
}


class Mode(StrEnum):
    """How a stand-in answers a POST."""

    ANSWER = "answer"  # keeps the data and answers as the service does
    FAIL = "500"  # keeps nothing, answers 500
    DROP = "drop"  # keeps the data, then closes the connection without an answer
    HANG = "hang"  # keeps nothing and never answers (until the mode changes or the stand-in stops)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class _Server:
    """A threaded HTTP server on 127.0.0.1 that keeps every POST and answers with `answer(path, body)`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refused = 0  # POSTs answered 500, dropped unanswered before keeping, or left hanging
        self._lock = threading.Lock()
        self._mode = Mode.ANSWER
        self._released = threading.Event()  # set whenever the mode changes: hanging requests end
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                released, mode = server._released, server.mode
                if mode in (Mode.FAIL, Mode.HANG):
                    with server._lock:
                        server.refused += 1
                    if mode is Mode.HANG:
                        released.wait()
                        self.close_connection = True
                        return
                    self.send_error(500, "ingestion unavailable")
                    return
                with server._lock:
                    server.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                if mode is Mode.DROP:  # kept, but the client never hears so
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, content_type, payload = server.answer(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def answer(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        self._released.set()  # requests left hanging end (unanswered) now
        self._released = threading.Event()

    def __enter__(self: T) -> T:
        self._thread.start()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._http.shutdown()
        self._http.server_close()

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.received]

    def bodies(self, path_suffix: str) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.received if r.path.endswith(path_suffix)]


class Breeze(_Server):
    @property
    def connection_string(self) -> str:
        endpoint = f"http://127.0.0.1:{self.port}/"
        return (
            f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint={endpoint};LiveEndpoint={endpoint}"
        )

    def answer(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        if not path.endswith("/v2.1/track"):
            return 404, "application/json", b"{}"
        count = len(_envelopes(body))
        reply = {"itemsReceived": count, "itemsAccepted": count, "errors": []}
        return 200, "application/json", json.dumps(reply).encode()

    def envelopes(self) -> list[dict[str, Any]]:
        return [envelope for body in self.bodies("/v2.1/track") for envelope in _envelopes(body)]

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes() if e.get("data", {}).get("baseType") == base_type]

    def metric_points(self, name: str) -> list[BreezeMetric]:
        points = []
        for envelope in self.of_type("MetricData"):
            data = envelope["data"]["baseData"]
            for metric in data["metrics"]:
                if metric["name"] == name:
                    points.append(
                        BreezeMetric(
                            metric["value"], metric.get("count", 1), data.get("properties") or {}, envelope
                        )
                    )
        return points


@dataclass
class BreezeMetric:
    value: float
    count: int
    properties: dict[str, str]
    envelope: dict[str, Any] = field(repr=False)


def _envelopes(body: bytes) -> list[dict[str, Any]]:
    text = body.decode()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # newline-delimited JSON, as older exporters send
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return document if isinstance(document, list) else [document]


class OtlpCollector(_Server):
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        if path == "/v1/metrics":
            ExportMetricsServiceRequest.FromString(body)  # a body that does not decode fails the request
            return 200, "application/x-protobuf", ExportMetricsServiceResponse().SerializeToString()
        if path == "/v1/logs":
            ExportLogsServiceRequest.FromString(body)
            return 200, "application/x-protobuf", ExportLogsServiceResponse().SerializeToString()
        return 404, "text/plain", b"not found"

    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        return [ExportMetricsServiceRequest.FromString(body) for body in self.bodies("/v1/metrics")]

    def log_requests(self) -> list[ExportLogsServiceRequest]:
        return [ExportLogsServiceRequest.FromString(body) for body in self.bodies("/v1/logs")]

    def metrics(self) -> Iterator[Any]:
        for request in self.metric_requests():
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    yield from scope.metrics

    def number_points(self, name: str) -> list[tuple[dict[str, Any], float]]:
        """(attributes, value) of every sum or gauge point named `name`."""
        points = []
        for metric in self.metrics():
            if metric.name != name:
                continue
            data = metric.sum if metric.HasField("sum") else metric.gauge
            for point in data.data_points:
                value = point.as_int if point.HasField("as_int") else point.as_double
                points.append((attributes(point.attributes), value))
        return points

    def histogram_points(self, name: str) -> list[Any]:
        return [p for m in self.metrics() if m.name == name for p in m.histogram.data_points]

    def log_records(self) -> list[Any]:
        return [
            record
            for request in self.log_requests()
            for resource in request.resource_logs
            for scope in resource.scope_logs
            for record in scope.log_records
        ]


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Tripwire:
    """A proxy that never forwards: it only remembers who tried to go through it."""

    def __init__(self) -> None:
        self.attempts: list[bytes] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1)
                try:
                    self.attempts.append(connection.recv(512) or b"(connected, sent nothing)")
                except OSError:
                    self.attempts.append(b"(connected, sent nothing)")

    def __enter__(self) -> Tripwire:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()

    def environment(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            name: value
            for upper, value in (
                ("HTTP_PROXY", proxy),
                ("HTTPS_PROXY", proxy),
                ("NO_PROXY", "127.0.0.1,localhost"),
            )
            for name in (upper, upper.lower())
        }


def telemetry_environment(
    base: dict[str, str], storage: Path, tripwire: Tripwire, **settings: str
) -> dict[str, str]:
    """`base` without any telemetry variable it inherited, plus: the tripwire as every proxy, a fresh
    temporary folder (the Azure exporter keeps failed batches under it), Microsoft's own calls off, and
    short export intervals."""
    env = {
        name: value
        for name, value in base.items()
        if not name.startswith(("APPLICATIONINSIGHTS_", "OTEL_", "APPINSIGHTS_"))
        and name.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
    }
    storage.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            **QUIET_AZURE,
            **tripwire.environment(),
            "TMPDIR": str(storage),
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            **settings,
        }
    )
    return env


def wait_for(what: str, found: Callable[[], T | None], timeout: float = 20) -> T:
    """Polls `found` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never received: {what}")
        time.sleep(0.1)
