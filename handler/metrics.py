"""Prometheus metrics of the reclaim cycles, in a registry of their own (served by the handler at /metrics
and, under `run`, on METRICS_ADDRESS).

Counters and the duration histogram are updated by each cycle; the gauges (pending total, the oldest
pending entry's idle time, the dead-letter length) are read from Redis when the metrics are scraped, so an
invocation with nothing pending still sends Redis nothing but its one XPENDING. A scrape reads them for
the streams the invocations found (no SCAN of its own), in one pipeline per node. Series are made only for
streams a cycle ran on, and removed once a stream is gone, so they do not grow with streams that come and
go, nor with streams of other pipelines a pattern matches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from handler.errors import MonitorError
from handler.keys import StreamKeys, display_name, raw_name
from handler.reclaim import heartbeat
from handler.reclaim.streams import StreamFinder
from handler.reclaim.summary import CycleFailure, CycleSummary, count_names
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection
from handler.transport.failures import REDIS_FAILURES, FailureKind, kind_of
from handler.transport.topology import by_server

log = logging.getLogger(__name__)


class _GroupGauges(Collector):
    """Per stream: its pending entries, its oldest pending entry's idle time, its dead-letter length, and
    the time since its last completed cycle; read in one pipeline per node. The streams are the ones the
    invocations found (`streams`), so a scrape does not SCAN the keyspace again."""

    def __init__(
        self, connection: RedisConnection, settings: MonitorSettings, streams: Callable[[], list[str]]
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._streams = streams

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
            for stream, (summary, oldest, length, age) in self._read().items():
                label = [display_name(stream)]
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

    def _read(self) -> dict[str, tuple[Any, Any, int, float | None]]:
        """Each stream's four readings, in one pipeline per node. A stream without the group (another
        pipeline's, found by a pattern) gets no series, and all of them one warning together; another
        refusal is a warning for its stream."""
        client = self._connection.client()
        streams = self._streams()
        keys = {stream: StreamKeys.from_settings(self._settings, stream) for stream in streams}
        read: dict[str, tuple[Any, Any, int, float | None]] = {}
        without_group: list[str] = []
        for server, held in by_server(client, streams):
            pipe = server.pipeline(transaction=False)
            for stream in held:
                stream_keys = keys[stream]
                pipe.execute_command("XPENDING", raw_name(stream_keys.stream), stream_keys.group)  # type: ignore[no-untyped-call]
                pipe.execute_command("XPENDING", raw_name(stream_keys.stream), stream_keys.group, "-", "+", 1)  # type: ignore[no-untyped-call]
                pipe.xlen(raw_name(stream_keys.dead_letter))
                pipe.eval(heartbeat.HEARTBEAT_LUA, 1, raw_name(stream_keys.last_cycle), "0")
            replies = pipe.execute(raise_on_error=False)
            for index, stream in enumerate(held):
                summary, oldest, length, beat = replies[4 * index : 4 * index + 4]
                failed = next((r for r in (summary, oldest, length, beat) if isinstance(r, Exception)), None)
                if failed is None:
                    read[stream] = (summary, oldest, length, heartbeat.age_of(beat))
                elif not isinstance(failed, redis.exceptions.ResponseError):
                    raise failed  # the connection, not this stream: redis_up 0
                elif kind_of(failed) == FailureKind.NO_GROUP and stream not in self._settings.stream_names:
                    without_group.append(stream)
                else:  # this stream only (WRONGTYPE, NOPERM…)
                    log.warning("metrics: could not read %s: %s", display_name(stream), failed)
        if without_group:
            log.warning(
                "metrics: %d streams STREAM_NAME's patterns match have no group '%s' and no gauges (e.g. %s)",
                len(without_group),
                self._settings.STREAM_CONSUMER_GROUP_NAME,
                ", ".join(display_name(name) for name in without_group[:3]),
            )
        return read


class _SignIn(Collector):
    """With Microsoft Entra ID (transport/entra_id.py): failed token renewals, and the token's time left."""

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection

    def collect(self) -> Iterator[Metric]:
        state = self._connection.sign_in_state()
        if state is None:
            return
        yield CounterMetricFamily(
            "tweets_monitor_token_renewal_failures",
            "Failed attempts to renew the Microsoft Entra ID token (each retry counts)",
            value=state.renewal_failures,
        )
        if state.expires_in_sec is not None:
            yield GaugeMetricFamily(
                "tweets_monitor_token_expires_in_seconds",
                "Seconds until the Microsoft Entra ID token in use expires (negative once it has)",
                value=state.expires_in_sec,
            )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The labelled series made so far, by stream: removed once the stream is gone.
        self._series: dict[str, set[tuple[Counter, tuple[str, ...]]]] = {}
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

    def watch_group(
        self,
        connection: RedisConnection,
        settings: MonitorSettings,
        streams: Callable[[], list[str]] | None = None,
    ) -> None:
        """The gauges, for the streams `streams` names (the monitor's own finder, so that a scrape does not
        SCAN again); without it, a finder of their own."""
        if streams is None:
            finder = StreamFinder(settings)
            streams = lambda: finder.find(connection.client())  # noqa: E731
        self.registry.register(_GroupGauges(connection, settings, streams))
        self.registry.register(_SignIn(connection))

    def observe(self, summary: CycleSummary, stream: str) -> None:
        """Counts by stream: `stream` names the one stream of a single-stream summary. A stream that did
        not run (not reached, no group) makes no series; the series of a stream no longer among the
        invocation's streams (deleted) are removed."""
        by_stream = summary.streams or ({} if summary.skipped else {stream: summary})
        if summary.streams is not None:
            self._forget_all_but(set(summary.streams))
        for name, counted in by_stream.items():
            if counted.skipped and not any(asdict(counted.counts).values()):
                continue
            for kind, count in asdict(counted.counts).items():
                self._count(self.entries[kind], count, name)
            for (step, reason), refused in counted.alerts.refused.items():
                self._count(self.refused, refused, name, step, reason)
            if counted.alerts.dead_letters_trimmed:
                self._count(self.trimmed, counted.alerts.dead_letters_trimmed, name)
            for task, failures in counted.alerts.housekeeping_failed.items():
                self._count(self.housekeeping_failures, failures, name, task)
        self.cycles.labels(outcome=summary.stopped_by.value).inc()
        self.duration.observe(summary.duration_ms / 1000)

    def _count(self, counter: Counter, amount: int, stream: str, *labels: str) -> None:
        counter.labels(stream, *labels).inc(amount)
        self._series.setdefault(stream, set()).add((counter, (stream, *labels)))

    def _forget_all_but(self, streams: set[str]) -> None:
        for gone in [name for name in self._series if name not in streams]:
            for counter, labels in self._series.pop(gone):
                counter.remove(*labels)

    def observe_failure(self, failure: CycleFailure) -> None:
        self.cycles.labels(outcome=failure.value).inc()
