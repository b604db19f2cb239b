"""Several streams under one group: STREAM_NAME lists names (`tweets_stream:0,tweets_stream:1`) or glob
patterns (`tweets_stream:*`), found with SCAN on every node; at most MAX_STREAMS of them.

One invocation sweeps them within its budget, fairly: in rounds, each stream with work left may use an
equal slice of the time left when the round began, and what a stream leaves unused (it had little to do,
or stopped early to stay inside its slice) is shared out again in the next round. A slice never shrinks
below one page: with more streams than the budget has slices, each stream reached gets its first page, in
turn, until the budget ends, and the next invocation starts at the first stream not reached. Each stream
keeps its own lease, cursor and dead-letter stream (all in its own hash slot).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from functools import partial

import redis
from redis.cluster import RedisCluster

from handler.errors import MonitorError, SlotMovedError, StreamOrGroupMissingError
from handler.keys import StreamKeys, display_name, is_dead_letter_stream, key_name, raw_name
from handler.reclaim import heartbeat
from handler.reclaim.cycle import ReclaimCycle, no_stop_requested
from handler.reclaim.rate import ClaimPacer
from handler.reclaim.summary import WORK_LEFT, CycleSummary, StopReason, total
from handler.reclaim.sweep import Limits
from handler.settings import MonitorSettings, is_pattern
from handler.transport.client import Client
from handler.transport.connect import RedisConnection, unavailable
from handler.transport.failures import (
    CLUSTER_UNREACHABLE,
    LOST_CONNECTION,
    REDIS_FAILURES,
)
from handler.transport.retry import with_retries
from handler.transport.topology import by_server

log = logging.getLogger(__name__)

SCAN_COUNT = 1000
# SCAN walks the whole keyspace (millions of tweet hashes) to find a few streams: a pattern is expanded
# again at most this often (beside the invocations, once a first expansion is known), so a new shard is
# picked up within a minute.
RESCAN_AFTER_SEC = 60.0
MIN_SLICE_SEC = 0.01  # a turn shorter than this is one page: the sweep's first page is always claimed
# STREAM_NAME takes at most this many streams (names and what its patterns match, streams of other
# pipelines without the group included): past it the invocation fails and says so. How many one
# invocation reaches, and how to serve more: docs/scale.md.
MAX_STREAMS = 1000
NAMED = 3  # streams without the group named in the warning that counts them


class TooManyStreamsError(MonitorError):
    pass


class StreamFinder:
    """find_streams, remembered for RESCAN_AFTER_SEC when STREAM_NAME has a pattern. Only the first
    expansion is waited for; later ones run in a thread of their own while the last one stays in use,
    so SCAN is off the invocations' clock."""

    def __init__(self, settings: MonitorSettings, rescan_after_sec: float | None = None) -> None:
        self._settings = settings
        self._rescan_after_sec = rescan_after_sec
        self._found: list[str] = []
        self._found_at: float | None = None
        self._failure: MonitorError | None = None  # the last expansion's, when it found too many
        self._scanning: threading.Thread | None = None
        self._lock = threading.Lock()

    def find(self, client: Client) -> list[str]:
        if not any(is_pattern(item) for item in self._settings.stream_names):
            return list(self._settings.stream_names)
        with self._lock:
            known = self._found_at is not None
            rescan_after = RESCAN_AFTER_SEC if self._rescan_after_sec is None else self._rescan_after_sec
            due = self._found_at is not None and time.monotonic() - self._found_at >= rescan_after
            if due and self._scanning is None:
                self._scanning = threading.Thread(
                    target=self._rescan, args=(client,), name="stream-discovery", daemon=True
                )
                self._scanning.start()
        if not known:
            self._store(find_streams(client, self._settings))
        with self._lock:
            if self._failure is not None:
                raise self._failure
            return list(self._found)

    def _store(self, found: list[str] | MonitorError) -> None:
        with self._lock:
            if isinstance(found, MonitorError):
                self._failure = found
            else:
                self._found, self._failure = found, None
            self._found_at = time.monotonic()

    def _rescan(self, client: Client) -> None:
        try:
            self._store(find_streams(client, self._settings))
        except TooManyStreamsError as exc:
            self._store(exc)
        except (*REDIS_FAILURES, MonitorError) as exc:  # the last expansion stays in use; tried again later
            log.warning("could not expand STREAM_NAME's patterns again (the last expansion stays): %s", exc)
            self._store(self._found)
        finally:
            with self._lock:
                self._scanning = None


def find_streams(client: Client, settings: MonitorSettings) -> list[str]:
    """STREAM_NAME's streams: names as given, patterns expanded (sorted), each stream once; at most
    MAX_STREAMS (TooManyStreamsError past it)."""
    found: dict[str, None] = {}
    for item in settings.stream_names:
        for name in sorted(_scan(client, item, MAX_STREAMS + 1)) if is_pattern(item) else [item]:
            found.setdefault(name)
        if len(found) > MAX_STREAMS:
            example = ", ".join(display_name(name) for name in list(found)[:3])
            raise TooManyStreamsError(
                f"STREAM_NAME '{settings.STREAM_NAME}' matches more than the {MAX_STREAMS:,} streams one "
                f"monitor takes (e.g. {example}; streams without the group count too): name the streams, or "
                "use patterns that match only the pipeline's shards, and share more shards between several "
                "monitors with one STREAM_NAME each (docs/scale.md)"
            )
    return list(found)


def _scan(client: Client, pattern: str, limit: int) -> set[str]:
    """Streams matching `pattern`, from every master of a cluster (SCAN covers one node); the SCAN stops
    once `limit` are found."""
    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        nodes = [client.get_redis_connection(node) for node in primaries]
    else:
        nodes = [client]
    names: set[str] = set()
    for node in nodes:
        keys: list[bytes | str] = with_retries(partial(_scan_node, node, pattern, limit - len(names)))
        for key in keys:
            name = key_name(key) if isinstance(key, bytes) else str(key)
            if not is_dead_letter_stream(name):
                names.add(name)
        if len(names) >= limit:
            break
    return names


def _scan_node(node: redis.Redis, pattern: str, limit: int) -> list[bytes | str]:
    keys: list[bytes | str] = []
    for key in node.scan_iter(match=pattern, count=SCAN_COUNT, _type="stream"):
        keys.append(key)
        if len(keys) >= limit:
            break
    return keys


class StreamsCycle:
    """One invocation over every stream of STREAM_NAME; with one stream, exactly that stream's cycle."""

    def __init__(self, connection: RedisConnection, settings: MonitorSettings) -> None:
        self._connection = connection
        self._settings = settings
        self._cycles: dict[str, ReclaimCycle] = {}
        self._finder = StreamFinder(settings)
        # A fresh process (the CLI) must not always start at the first stream; fairness, not secrecy.
        self._turn = random.randrange(1_000_000)  # noqa: S311
        self._resume_at: str | None = None  # the first stream the last invocation did not reach
        self._without_group: set[str] = set()  # found by a pattern, without the group: swept last
        self._completed: list[str] = []  # the streams the last invocation's cycles ran on (the heartbeat)

    def streams(self) -> list[str]:
        return self._finder.find(self._connection.client())

    @property
    def without_group(self) -> frozenset[str]:
        """Streams a pattern found that lack the group (as the last invocation saw them)."""
        return frozenset(self._without_group)

    def _single(self) -> bool:
        return self._settings.stream_names == (self._settings.STREAM_NAME,) and not is_pattern(
            self._settings.STREAM_NAME
        )

    def run(self, should_stop: Callable[[], bool] = no_stop_requested) -> CycleSummary:
        self._completed = []
        if self._single():
            summary = self._cycle(self._settings.STREAM_NAME).run(should_stop)
            self._completed = [self._settings.STREAM_NAME]
            return summary
        started = time.monotonic()
        try:
            names = self.streams()
        except (*LOST_CONNECTION, *CLUSTER_UNREACHABLE) as exc:
            raise unavailable(self._settings, exc) from exc
        except redis.exceptions.ResponseError as exc:  # NOPERM: a pattern needs +scan
            raise MonitorError(
                f"cannot find the streams matching '{self._settings.STREAM_NAME}' with SCAN: {exc}"
            ) from exc
        # Streams that are gone take their cycle objects with them.
        self._cycles = {name: cycle for name, cycle in self._cycles.items() if name in names}
        self._without_group &= set(names)
        if not names:
            summary = CycleSummary.skipped_because(f"no stream matches '{self._settings.STREAM_NAME}'")
            log.warning(summary.log_line())
            return summary
        summaries = self._sweep(names, should_stop, started)
        if not summaries:
            summary = CycleSummary.skipped_because(
                f"none of the {len(names)} streams matching '{self._settings.STREAM_NAME}' has the group "
                f"'{self._settings.STREAM_CONSUMER_GROUP_NAME}'"
            )
            log.warning(summary.log_line())
            return summary
        summary = total(summaries, round((time.monotonic() - started) * 1000))
        log.info(summary.log_line(), extra={"summary": summary.as_dict()})
        return summary

    def run_scheduled(self, should_stop: Callable[[], bool] = no_stop_requested) -> CycleSummary:
        """A cycle the timer (or `run`) started: once it completes, its time is recorded (the heartbeat)
        for each stream its cycles ran on; a stream it did not reach keeps its older time. A manual
        `reclaim` calls run() and records nothing, so it cannot hide a stopped timer."""
        summary = self.run(should_stop)
        self.record_completed()
        return summary

    def record_completed(self) -> None:
        """The heartbeat (heartbeat.py) of the streams the last invocation's cycles ran on, pipelined per
        node. Never fails the invocation whose work is done: a refusal or a lost connection is a
        warning."""
        if not self._completed:
            return
        try:
            client = self._connection.client()
            keys = [StreamKeys.from_settings(self._settings, name).last_cycle for name in self._completed]
            for server, held in by_server(client, keys):
                pipe = server.pipeline(transaction=False)
                for key in held:
                    pipe.eval(heartbeat.HEARTBEAT_LUA, 1, raw_name(key), "1")
                for reply in pipe.execute(raise_on_error=False):
                    if isinstance(reply, Exception):
                        raise reply
        except (*REDIS_FAILURES, MonitorError) as exc:
            log.warning("could not record the completed cycle's time (the heartbeat): %s", exc)

    def _order(self, names: list[str]) -> list[str]:
        """This invocation's order: from the first stream the last one did not reach (else one further
        than the last began), streams known to lack the group last."""
        start = names.index(self._resume_at) if self._resume_at in names else self._turn % len(names)
        rotated = names[start:] + names[:start]
        return [n for n in rotated if n not in self._without_group] + [
            n for n in rotated if n in self._without_group
        ]

    def _sweep(
        self, names: list[str], should_stop: Callable[[], bool], started: float
    ) -> dict[str, CycleSummary]:
        """Rounds over the streams with work left: in each, every stream may use an equal slice of the time
        left when the round began (at least one page); what a stream leaves unused goes to everyone in the
        next round. The first stream always runs; another starts only if a page still fits the budget."""
        settings = self._settings
        deadline = started + settings.CYCLE_TIME_BUDGET_SEC
        messages_left = settings.CYCLE_MAX_MESSAGES
        pacer = ClaimPacer(settings.RECLAIM_MAX_RATE)  # one pace for the whole invocation
        order = self._order(names)
        active = list(order)
        summaries: dict[str, CycleSummary] = {}
        failures: list[str] = []
        page_sec = 0.0  # the longest page of this invocation so far: no turn starts that could not end
        stop: StopReason | None = None
        while active and stop is None:
            slice_sec = max((deadline - time.monotonic()) / len(active), MIN_SLICE_SEC)
            progress = 0
            for name in list(active):
                stop = _reason_to_stop(should_stop, messages_left, deadline, page_sec, first=not summaries)
                if stop is not None:
                    break  # a stream left in the round claims nothing: not even its first page
                time_left = max(deadline - time.monotonic(), 0.0)
                summary = self._run_one(
                    name, should_stop, Limits(min(slice_sec, time_left), messages_left, pacer), failures
                )
                earlier = summaries.get(name)
                summaries[name] = earlier.merged_with(summary) if earlier else summary
                handled = summary.counts.handled
                messages_left -= handled
                progress += handled
                if summary.pages:
                    page_sec = max(page_sec, summary.duration_ms / 1000 / summary.pages)
                if summary.stopped_by not in WORK_LEFT:
                    active.remove(name)  # done for this invocation: empty, ended, skipped or signalled
            if stop is None and not progress:
                break  # nothing moved in a whole round: the rest waits for the next invocation
        not_reached = [name for name in order if name not in summaries]
        for name in not_reached:
            reason = stop or StopReason.BUDGET
            summaries[name] = CycleSummary(pending=None, stopped_by=reason, skipped=f"not reached: {reason}")
        self._resume_at = not_reached[0] if not_reached else order[1 % len(order)]
        self._turn += 1
        self._completed = [
            name for name in order if name not in not_reached and name not in self._without_group
        ]
        if not_reached:
            log.info(
                "%d of %d streams not reached (%s); the next invocation starts at %s",
                len(not_reached),
                len(order),
                stop or StopReason.BUDGET,
                display_name(not_reached[0]),
            )
        if failures:
            raise StreamOrGroupMissingError("; ".join(failures))
        # Streams of other pipelines (without the group) are one line here, not a row each in the answer.
        left_out = [name for name in names if name in self._without_group]
        if left_out:
            named = ", ".join(display_name(name)[:100] for name in left_out[:NAMED])
            more = ", …" if len(left_out) > NAMED else ""
            log.warning(
                "%d streams matching '%s' have no group '%s' and are left out (%s%s)",
                len(left_out),
                settings.STREAM_NAME,
                settings.STREAM_CONSUMER_GROUP_NAME,
                named,
                more,
            )
        return {display_name(name): summaries[name] for name in names if name not in self._without_group}

    def _run_one(
        self, name: str, should_stop: Callable[[], bool], limits: Limits, failures: list[str]
    ) -> CycleSummary:
        try:
            summary = self._cycle(name).run(should_stop, limits)
        except SlotMovedError as exc:
            # The stream's slot moved outside its walk (the cycle read the map again): this stream's
            # outcome; it is tried again in the next round.
            return CycleSummary(pending=None, stopped_by=StopReason.SLOT_MOVED, skipped=str(exc))
        except StreamOrGroupMissingError as exc:
            if name in self._settings.stream_names:
                failures.append(f"{name}: {exc}")
                return CycleSummary.skipped_because(str(exc))
            # Found by a pattern: a stream of another pipeline, without our group. Swept last from now on.
            self._without_group.add(name)
            return CycleSummary.skipped_because(f"no group '{self._settings.STREAM_CONSUMER_GROUP_NAME}'")
        self._without_group.discard(name)
        return summary

    def _cycle(self, name: str) -> ReclaimCycle:
        cycle = self._cycles.get(name)
        if cycle is None:
            cycle = self._cycles[name] = ReclaimCycle(self._connection, self._settings, name)
        return cycle


def _reason_to_stop(
    should_stop: Callable[[], bool], messages_left: int, deadline: float, page_sec: float, *, first: bool
) -> StopReason | None:
    """Why no further stream starts its turn; every invocation runs its first stream's first page."""
    if should_stop():
        return StopReason.SIGNAL
    if messages_left <= 0:
        return StopReason.CAP
    if not first and time.monotonic() + page_sec >= deadline:
        return StopReason.BUDGET
    return None


def _rotated(names: list[str], turn: int) -> list[str]:
    if not names:
        return names
    start = turn % len(names)
    return names[start:] + names[:start]
