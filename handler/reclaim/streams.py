"""Several streams under one group: STREAM_NAME lists names (`tweets_stream:0,tweets_stream:1`) or glob
patterns (`tweets_stream:*`), found with SCAN on every node.

One invocation sweeps them all within its budget, fairly: in rounds, each stream with work left may use an
equal slice of the time left when the round began, and what a stream leaves unused (it had little to do,
or stopped early to stay inside its slice) is shared out again in the next round. The order rotates
every invocation. Each stream keeps its own lease, cursor
and dead-letter stream (all in its own hash slot).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from functools import partial

import redis
from redis.cluster import RedisCluster

from handler.errors import MonitorError, StreamOrGroupMissingError
from handler.keys import StreamKeys, display_name, is_dead_letter_stream, key_name
from handler.reclaim import heartbeat
from handler.reclaim.cycle import ReclaimCycle, no_stop_requested
from handler.reclaim.rate import ClaimPacer
from handler.reclaim.summary import WORK_LEFT, CycleSummary, StopReason, total
from handler.reclaim.sweep import Limits
from handler.settings import MonitorSettings, is_pattern
from handler.transport.client import Client
from handler.transport.connect import RedisConnection, unavailable
from handler.transport.failures import CLUSTER_UNREACHABLE, LOST_CONNECTION, REDIS_FAILURES
from handler.transport.retry import with_retries

log = logging.getLogger(__name__)

SCAN_COUNT = 1000
# SCAN walks the whole keyspace (millions of tweet hashes) to find a few streams: a pattern is expanded
# again at most this often, so a new shard is picked up within a minute.
RESCAN_AFTER_SEC = 60.0
MIN_SLICE_SEC = 0.01  # below this a stream's turn would end before its first page


class StreamFinder:
    """find_streams, remembered for RESCAN_AFTER_SEC when STREAM_NAME has a pattern."""

    def __init__(self, settings: MonitorSettings, rescan_after_sec: float = RESCAN_AFTER_SEC) -> None:
        self._settings = settings
        self._rescan_after_sec = rescan_after_sec
        self._found: list[str] = []
        self._found_at: float | None = None

    def find(self, client: Client) -> list[str]:
        if not any(is_pattern(item) for item in self._settings.stream_names):
            return list(self._settings.stream_names)
        now = time.monotonic()
        if self._found_at is None or now - self._found_at >= self._rescan_after_sec:
            self._found, self._found_at = find_streams(client, self._settings), now
        return list(self._found)


def find_streams(client: Client, settings: MonitorSettings) -> list[str]:
    """STREAM_NAME's streams: names as given, patterns expanded (sorted), each stream once."""
    found: list[str] = []
    for item in settings.stream_names:
        for name in sorted(_scan(client, item)) if is_pattern(item) else [item]:
            if name not in found:
                found.append(name)
    return found


def _scan(client: Client, pattern: str) -> set[str]:
    """Streams matching `pattern`, from every master of a cluster (SCAN covers one node)."""
    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        nodes = [client.get_redis_connection(node) for node in primaries]
    else:
        nodes = [client]
    names: set[str] = set()
    for node in nodes:
        keys: list[bytes | str] = with_retries(
            partial(list, node.scan_iter(match=pattern, count=SCAN_COUNT, _type="stream"))
        )
        for key in keys:
            name = key_name(key) if isinstance(key, bytes) else str(key)
            if not is_dead_letter_stream(name):
                names.add(name)
    return names


class StreamsCycle:
    """One invocation over every stream of STREAM_NAME; with one stream, exactly that stream's cycle."""

    def __init__(self, connection: RedisConnection, settings: MonitorSettings) -> None:
        self._connection = connection
        self._settings = settings
        self._cycles: dict[str, ReclaimCycle] = {}
        self._finder = StreamFinder(settings)
        # A fresh process (the CLI) must not always start at the first stream; fairness, not secrecy.
        self._turn = random.randrange(1_000_000)  # noqa: S311

    def streams(self) -> list[str]:
        return self._finder.find(self._connection.client())

    def run(self, should_stop: Callable[[], bool] = no_stop_requested) -> CycleSummary:
        if self._settings.stream_names == (self._settings.STREAM_NAME,) and not is_pattern(
            self._settings.STREAM_NAME
        ):
            return self._cycle(self._settings.STREAM_NAME).run(should_stop)
        started = time.monotonic()
        try:
            names = self.streams()
        except (*LOST_CONNECTION, *CLUSTER_UNREACHABLE) as exc:
            raise unavailable(self._settings, exc) from exc
        except redis.exceptions.ResponseError as exc:  # NOPERM: a pattern needs +scan
            raise MonitorError(
                f"cannot find the streams matching '{self._settings.STREAM_NAME}' with SCAN: {exc}"
            ) from exc
        if not names:
            summary = CycleSummary.skipped_because(f"no stream matches '{self._settings.STREAM_NAME}'")
            log.warning(summary.log_line())
            return summary
        summaries = self._sweep(names, should_stop, started)
        summary = total(summaries, round((time.monotonic() - started) * 1000))
        log.info(summary.log_line(), extra={"summary": summary.as_dict()})
        return summary

    def run_scheduled(self, should_stop: Callable[[], bool] = no_stop_requested) -> CycleSummary:
        """A cycle the timer (or `run`) started: once it completes, its time is recorded (the heartbeat).
        A manual `reclaim` calls run() and records nothing, so it cannot hide a stopped timer."""
        summary = self.run(should_stop)
        self.record_completed()
        return summary

    def record_completed(self) -> None:
        """The heartbeat (heartbeat.py), after a scheduled cycle completed: for each stream it found. Never
        fails the invocation whose work is done: a refusal or a lost connection is a warning."""
        try:
            client = self._connection.client()
            for name in self.streams():
                heartbeat.record(client, StreamKeys.from_settings(self._settings, name).last_cycle)
        except (*REDIS_FAILURES, MonitorError) as exc:
            log.warning("could not record the completed cycle's time (the heartbeat): %s", exc)

    def _sweep(
        self, names: list[str], should_stop: Callable[[], bool], started: float
    ) -> dict[str, CycleSummary]:
        """Rounds over the streams with work left: in each, every stream may use an equal slice of the time
        left when the round began; what a stream leaves unused goes to everyone in the next round."""
        settings = self._settings
        deadline = started + settings.CYCLE_TIME_BUDGET_SEC
        messages_left = settings.CYCLE_MAX_MESSAGES
        pacer = ClaimPacer(settings.RECLAIM_MAX_RATE)  # one pace for the whole invocation
        active = _rotated(names, self._turn)
        self._turn += 1
        summaries: dict[str, CycleSummary] = {}
        failures: list[str] = []
        while active:
            round_left = deadline - time.monotonic()
            slice_sec = round_left / len(active)
            if should_stop() or slice_sec < MIN_SLICE_SEC or messages_left <= 0:
                reason = (
                    StopReason.SIGNAL if should_stop()
                    else StopReason.CAP if messages_left <= 0
                    else StopReason.BUDGET
                )  # fmt: skip
                for name in active:
                    summaries.setdefault(name, CycleSummary.skipped_because(f"not reached: {reason}", reason))
                break
            progress = 0
            for name in list(active):
                if should_stop() or messages_left <= 0:
                    progress = 1  # the next round's first check names the reason for the streams left
                    break  # a stream left in the round claims nothing: not even its first page
                time_left = deadline - time.monotonic()
                limits = Limits(min(slice_sec, time_left), messages_left, pacer)
                summary = self._run_one(name, should_stop, limits, failures) if time_left > 0 else None
                if summary is None:
                    continue
                earlier = summaries.get(name)
                summaries[name] = earlier.merged_with(summary) if earlier else summary
                handled = summary.counts.handled
                messages_left -= handled
                progress += handled
                if summary.stopped_by not in WORK_LEFT:
                    active.remove(name)  # done for this invocation: empty, ended, skipped or signalled
            if not progress:
                break  # nothing moved in a whole round: the rest waits for the next invocation
        if failures:
            raise StreamOrGroupMissingError("; ".join(failures))
        return {display_name(name): summaries[name] for name in names if name in summaries}

    def _run_one(
        self, name: str, should_stop: Callable[[], bool], limits: Limits, failures: list[str]
    ) -> CycleSummary:
        try:
            return self._cycle(name).run(should_stop, limits)
        except StreamOrGroupMissingError as exc:
            if name in self._settings.stream_names:
                failures.append(f"{name}: {exc}")
                return CycleSummary.skipped_because(str(exc))
            # Found by a pattern: a stream of another pipeline, without our group.
            return CycleSummary.skipped_because(f"no group '{self._settings.STREAM_CONSUMER_GROUP_NAME}'")

    def _cycle(self, name: str) -> ReclaimCycle:
        cycle = self._cycles.get(name)
        if cycle is None:
            cycle = self._cycles[name] = ReclaimCycle(self._connection, self._settings, name)
        return cycle


def _rotated(names: list[str], turn: int) -> list[str]:
    if not names:
        return names
    start = turn % len(names)
    return names[start:] + names[:start]
