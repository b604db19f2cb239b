"""handler/metrics.py's registry is the metrics' one source: this bridge turns one reading of
`registry.collect()` (the gauges read from Redis included) into observable instruments that all report
that same reading. Counters become OTel counters named like the Prometheus family
(`tweets_monitor_processed_entries`, which Prometheus shows as `…_total`), gauges stay gauges, their labels
(`stream`, `outcome`, …) become attributes, and a family the registry gains later (a new gauge) becomes an
instrument at the next reading. Histograms are left out: the cycle duration is fed directly (see
handler/telemetry/export.py)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

# Family name -> its samples' (labels, value), as one reading of the registry found them.
Reading = dict[str, list[tuple[dict[str, str], int | float]]]


class RegistryBridge:
    """The registry's counters and gauges as observable instruments, all reporting one reading."""

    def __init__(self, registry: CollectorRegistry, meter: Meter, fed: str) -> None:
        self._registry = registry
        self._meter = meter
        self._fed = fed  # the histogram fed directly
        self._lock = threading.Lock()
        self._creating = threading.Lock()
        self._reading: Reading = {}
        self._instruments: set[str] = set()

    def refresh(self) -> None:
        reading, families = self._read()
        with self._lock:
            self._reading = reading
        with self._creating:
            for name, family in families.items():
                if name not in self._instruments and name != self._fed:
                    self._instruments.add(name)
                    self._create(name, family)

    def _read(self) -> tuple[Reading, dict[str, Metric]]:
        """Each counter's and gauge's finite samples, by family name, and the families themselves."""
        reading: Reading = {}
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
        return reading, families

    def _create(self, name: str, family: Metric) -> None:
        create = (
            self._meter.create_observable_counter
            if family.type == "counter"
            else self._meter.create_observable_gauge
        )
        unit = "s" if name.endswith("_seconds") else ""
        create(name, callbacks=[self._callback(name)], unit=unit, description=family.documentation)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                points = self._reading.get(name, [])
            return [Observation(value, attributes) for attributes, value in points]

        return observe


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
