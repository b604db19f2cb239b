"""What every part of handler/telemetry shares: the variables, the stop bound, the names it logs and
exports under, and telemetry that does nothing (standard library only)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handler.reclaim.summary import CycleSummary

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
STOP_WITHIN_SEC = 2.0  # a stop (SIGTERM, the end of `run`) flushes for at most this long
MAX_WAITING_SUMMARIES = 1000  # cycles observed while the exporters were still starting
SCOPE = "tweets-monitor"  # the meter's and the log bridge's scope, and the default service name
# Every line the export logs is under this one logger name, whichever module of it writes the line.
EXPORT_LOGGER = "handler.telemetry.export"
# How long one export may take before it counts as failed (OpenTelemetry's variables, in milliseconds).
METRIC_EXPORT_TIMEOUT = ("OTEL_METRIC_EXPORT_TIMEOUT", 30_000.0)
LOG_EXPORT_TIMEOUT = ("OTEL_BLRP_EXPORT_TIMEOUT", 30_000.0)


def millis(environ: Mapping[str, str], setting: tuple[str, float]) -> float:
    """A positive number of milliseconds from the environment, else the setting's default."""
    name, default = setting
    try:
        value = float(environ.get(name, "") or default)
    except ValueError:
        return default
    return value if 0 < value < math.inf else default


class Telemetry:
    """No telemetry at all: what `start_telemetry` returns when neither variable is set."""

    def invocation(self, headers: Mapping[str, str]) -> AbstractContextManager[object]:
        """Around one invocation: the host's `traceparent`, when the request carries one, becomes the
        context of what the cycle records."""
        return nullcontext()

    def observe(self, summary: CycleSummary) -> None:
        """A cycle's summary (the duration histogram; the counters are read from the registry)."""

    def flush(self, within: float) -> None:
        """Export the metrics now (a fresh reading of the registry), waiting `within` seconds at most."""

    def stop(self, within: float = STOP_WITHIN_SEC) -> None:
        """Flush what is left, for at most `within` seconds."""


OFF = Telemetry()
