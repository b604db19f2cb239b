"""Prometheus metrics of the reclaim cycles, in a registry of their own (served by the handler at /metrics
and, under `run`, on METRICS_ADDRESS).

Counters and the duration histogram are updated by each cycle; the gauges (pending total, the oldest
pending entry's idle time, the dead-letter length) are read from Redis when the metrics are scraped, so an
invocation with nothing pending still sends Redis nothing but its one XPENDING.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from handler.errors import MonitorError
from handler.keys import StreamKeys, display_name, raw_name
from handler.reclaim import heartbeat
from handler.reclaim.streams import StreamFinder
from handler.reclaim.summary import CycleFailure, CycleSummary, count_names
from handler.settings import MonitorSettings
from handler.transport.client import command
from handler.transport.connect import RedisConnection
from handler.transport.failures import REDIS_FAILURES

log = logging.getLogger(__name__)


class _GroupGauges(Collector):
    """Per stream: its pending entries, its oldest pending entry's idle time, its dead-letter length."""

    def __init__(self, connection: RedisConnection, settings: MonitorSettings) -> None:
        self._connection = connection
        self._settings = settings
        self._finder = StreamFinder(settings)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges read from Redis, and `tweets_monitor_redis_up` (0 when Redis could not be read: the
        scrape still answers, without the gauges read from Redis)."""
        up = GaugeMetricFamily("tweets_monitor_redis_up", "1 when Redis answered this scrape, else 0")
        labels = ["stream"]
        pending = GaugeMetricFamily(
            "tweets_monitor_pending_entries", "Entries pending in the group", labels=labels
        )
        idle = GaugeMetricFamily(
            "tweets_monitor_oldest_pending_idle_seconds",
            "Idle time of the oldest pending entry",
            labels=labels,
        )
        dead = GaugeMetricFamily(
            "tweets_monitor_dead_letter_length", "Entries in the dead-letter stream", labels=labels
        )
        since = GaugeMetricFamily(
            "tweets_monitor_seconds_since_last_cycle",
            "Seconds since the last scheduled cycle completed (the heartbeat, by Redis's clock); absent "
            "when none was recorded",
            labels=labels,
        )
        try:
            client = self._connection.client()
            for stream in self._finder.find(client):
                keys = StreamKeys.from_settings(self._settings, stream)
                label = [display_name(stream)]
                try:
                    summary = command(client, "XPENDING", keys.stream, keys.group)
                    oldest = command(client, "XPENDING", keys.stream, keys.group, "-", "+", 1)
                    length = client.xlen(raw_name(keys.dead_letter))
                    age = heartbeat.seconds_since(client, keys.last_cycle)
                except redis.exceptions.ResponseError as exc:  # this stream only (NOGROUP, WRONGTYPE…)
                    log.warning("metrics: could not read %s: %s", label[0], exc)
                    continue
                pending.add_metric(label, summary[0])
                idle.add_metric(label, oldest[0][2] / 1000 if oldest else 0)
                dead.add_metric(label, length)
                if age is not None:
                    since.add_metric(label, age)
        except (*REDIS_FAILURES, MonitorError) as exc:
            log.warning("metrics: could not read the group's gauges: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (up, pending, idle, dead, since)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.entries = {
            name: Counter(
                f"tweets_monitor_{name}_entries",
                f"Entries {name.replace('_', '-')} by the monitor",
                ["stream"],
                registry=self.registry,
            )
            for name in count_names()
        }
        self.refused = Counter(
            "tweets_monitor_refused_entries",
            "Attempts Redis refused for a passing reason (the entry stays pending, its delivery given back), "
            "by step (write, dead-letter) and reason (OOM, READONLY, NOPERM, NOREPLICAS, WRONGTYPE…)",
            ["stream", "step", "reason"],
            registry=self.registry,
        )
        self.trimmed = Counter(
            "tweets_monitor_dead_letters_trimmed",
            "Dead-letter entries trimmed away by DEAD_LETTER_MAXLEN",
            ["stream"],
            registry=self.registry,
        )
        self.housekeeping_failures = Counter(
            "tweets_monitor_housekeeping_failures",
            "Housekeeping that failed after a cycle's work was done (task: prune consumers); never the "
            "invocation's status",
            ["stream", "task"],
            registry=self.registry,
        )
        self.cycles = Counter(
            "tweets_monitor_cycles",
            "Reclaim cycles by outcome (stopped_by, or the error)",
            ["outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "tweets_monitor_cycle_duration_seconds",
            "Duration of a reclaim cycle",
            buckets=(0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 20, 60),
            registry=self.registry,
        )

    def watch_group(self, connection: RedisConnection, settings: MonitorSettings) -> None:
        self.registry.register(_GroupGauges(connection, settings))

    def observe(self, summary: CycleSummary, stream: str) -> None:
        """Counts by stream: `stream` names the one stream of a single-stream summary."""
        by_stream = summary.streams or ({} if summary.skipped else {stream: summary})
        for name, counted in by_stream.items():
            for kind, count in asdict(counted.counts).items():
                self.entries[kind].labels(stream=name).inc(count)
            for (step, reason), refused in counted.alerts.refused.items():
                self.refused.labels(stream=name, step=step, reason=reason).inc(refused)
            if counted.alerts.dead_letters_trimmed:
                self.trimmed.labels(stream=name).inc(counted.alerts.dead_letters_trimmed)
            for task, failures in counted.alerts.housekeeping_failed.items():
                self.housekeeping_failures.labels(stream=name, task=task).inc(failures)
        self.cycles.labels(outcome=summary.stopped_by.value).inc()
        self.duration.observe(summary.duration_ms / 1000)

    def observe_failure(self, failure: CycleFailure) -> None:
        self.cycles.labels(outcome=failure.value).inc()
