"""One reclaim cycle: find abandoned entries, claim them, do the processor's work, acknowledge them.

The cycle reads the pending count, takes the sweep lease, lets a Sweep (sweep.py) walk the pending list from
where the last invocation stopped, saves where the next one should start, and sums up what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import redis

from handler.errors import MonitorError, RedisUnavailableError, SlotMovedError, StreamOrGroupMissingError
from handler.keys import StreamKeys, display_name, raw_name
from handler.reclaim.consumers import prune_idle_consumers
from handler.reclaim.cursor import CURSOR_TTL_MS, read_cursor
from handler.reclaim.lease import Lease, holder_identity
from handler.reclaim.rules import START, parse_pending_count
from handler.reclaim.summary import CycleSummary, Incidents, StopReason
from handler.reclaim.sweep import Limits, Sweep, SweepPlan
from handler.settings import MonitorSettings
from handler.transport.client import Client, command
from handler.transport.connect import RedisConnection, unavailable
from handler.transport.failures import (
    LOST_CONNECTION,
    REDIS_FAILURES,
    STATE_IN_WORDS,
    FailureKind,
    code_of,
    kind_of,
)
from handler.transport.retry import with_retries

log = logging.getLogger(__name__)

LAST_REFUSAL_TTL_MS = 24 * 3600 * 1000
PRUNE_CONSUMERS = "prune consumers"  # the housekeeping task's name in the metric
# Refusals of the lease's SET after which the cycle sweeps without a lease (it only saves duplicate work).
LEASE_REFUSALS_TO_SWEEP_THROUGH = ("OOM", "MISCONF")


def no_stop_requested() -> bool:
    return False


class ReclaimCycle:
    """Runs cycles for one stream and group; the Redis connection is passed in and owned by the caller."""

    def __init__(
        self, connection: RedisConnection, settings: MonitorSettings, stream: str | None = None
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._keys = StreamKeys.from_settings(settings, stream)
        self._plan = SweepPlan.for_stream(settings, self._keys)
        self._holder = holder_identity(settings.MONITORING_CONSUMER_NAME)

    @property
    def keys(self) -> StreamKeys:
        return self._keys

    def run(
        self, should_stop: Callable[[], bool] = no_stop_requested, limits: Limits | None = None
    ) -> CycleSummary:
        """One cycle; Redis failures become MonitorError subclasses that name what failed."""
        try:
            summary = self._run(should_stop, limits or Limits.from_settings(self._settings))
        except REDIS_FAILURES as exc:
            raise self._explain(exc) from exc
        several = self._settings.stream_names != (self._keys.stream,)
        line = summary.log_line(display_name(self._keys.stream) if several else None)
        log.info(line, extra={"summary": summary.as_dict()})
        return summary

    def _explain(self, exc: Exception) -> MonitorError:
        """The failure in the monitor's words: RedisUnavailableError when the next invocation may succeed
        (the slot map is read again first where it may have changed), MonitorError when something must be
        fixed."""
        if isinstance(exc, LOST_CONNECTION):  # LOADING as redis-py parses it too
            if not isinstance(exc, redis.exceptions.TimeoutError):
                self._refresh_topology()  # a failover shows first as a node that refuses or drops connections
            return unavailable(self._settings, exc)
        kind = kind_of(exc)
        if kind == FailureKind.CLUSTER_UNREACHABLE:  # no node of the cluster answered for its slot map
            return unavailable(self._settings, exc)
        if kind == FailureKind.CLUSTER_CHANGED:
            self._refresh_topology()
            if code_of(exc) == "MOVED" and self._settings.REDIS_CLUSTER == "off":
                return MonitorError(
                    f"REDIS_CLUSTER=off, but Redis answered MOVED {exc}: it is a Redis Cluster node; set "
                    "REDIS_CLUSTER=detect or on"
                )
            return SlotMovedError(
                f"the Redis Cluster moved the stream's slot or is failing over ({exc}); the next cycle "
                "reads the slot map again"
            )
        if kind == FailureKind.PASSING_STATE:
            state = code_of(exc)
            if state in ("READONLY", "MASTERDOWN"):
                self._connection.reset()  # after a failover the name may lead elsewhere: connect afresh
            return RedisUnavailableError(
                f"Redis at {self._settings.redis_shown} {STATE_IN_WORDS[state]} ({state}: {exc}); "
                "the next invocation tries again"
            )
        if kind == FailureKind.NO_GROUP:
            return StreamOrGroupMissingError(
                f"stream '{self._keys.stream}' or its consumer group '{self._keys.group}' does not "
                "exist: create them as the processor does (XGROUP CREATE … MKSTREAM)"
            )
        if kind == FailureKind.NOT_PERMITTED:
            return MonitorError(f"the Redis user may not run a command the monitor needs: {exc}")
        return MonitorError(f"Redis refused a command of the reclaim cycle: {exc}")

    def _refresh_topology(self, only_if_stale: bool = False) -> None:
        try:
            if only_if_stale:
                self._connection.refresh_if_stale()
            else:
                self._connection.refresh()
        except REDIS_FAILURES as exc:  # the next cycle tries again
            log.warning("could not read the cluster's slot map again: %s", exc)

    def _run(self, should_stop: Callable[[], bool], limits: Limits) -> CycleSummary:
        started = time.monotonic()
        keys = self._keys
        client = self._connection.client()
        pending = parse_pending_count(
            with_retries(lambda: command(client, "XPENDING", keys.stream, keys.group))
        )
        if pending == 0:
            return CycleSummary(duration_ms=_ms_since(started))
        # Writes wait for a replica only where the slot map lists one: a replica that joined since it was
        # read (the old master back after a failover) must be known before this cycle writes.
        topology = self._connection.topology()
        with_retries(partial(topology.refresh_if_replicas_changed, keys.stream))
        lease = Lease(client, raw_name(keys.lease), self._holder, self._settings.LEASE_TTL_SEC)
        try:
            holder = with_retries(lease.acquire)
        except redis.exceptions.ResponseError as exc:
            if not _may_sweep_without_lease(exc):
                raise  # NOPERM and the like: a misconfiguration, said as such (never swept without a lease)
            # Redis out of memory refuses the SET: the lease only saves duplicate work, so sweep without it.
            log.warning("could not take the sweep lease, sweeping without it: %s", exc)
            lease.go_without()
            holder = None
        if holder is not None:
            log.info("another monitor is sweeping the group; lease held by %s", holder)
            return CycleSummary(
                pending=pending,
                duration_ms=_ms_since(started),
                stopped_by=StopReason.SKIPPED,
                skipped=f"lease held by {holder}",
            )
        try:
            cursor = with_retries(partial(read_cursor, client, keys.cursor))
            keep_lease = partial(with_retries, lease.keep)
            sweep = Sweep(self._plan, topology, limits, started, should_stop, keep_lease)
            try:
                swept = sweep.walk(cursor)
            except REDIS_FAILURES as exc:
                if kind_of(exc) != FailureKind.CLUSTER_CHANGED:
                    raise
                return self._slot_moved(exc, sweep, pending, started)  # the lease is released below
            self._refresh_topology(only_if_stale=True)  # a page met MOVED, ASK…: read the slot map again
            with_retries(partial(self._save_cursor, lease, swept.next_start))
            connected = self._prune_idle_consumers(client, swept.alerts)
            if not connected:
                lease.abandon()  # it expires by itself; the work is done and the summary goes out
        except LOST_CONNECTION:
            # Redis stopped answering: releasing would cost one more timeout, and the lease expires by
            # itself within its TTL. The invocation answers 503 within three timeouts (retry.py).
            lease.abandon()
            raise
        finally:
            _release_quietly(lease)
        if connected:
            self._report(client, swept.alerts)
        return CycleSummary(
            pending=pending,
            counts=swept.counts,
            alerts=swept.alerts,
            duration_ms=_ms_since(started),
            pages=swept.pages,
            stopped_by=swept.stopped_by,
        )

    def _slot_moved(self, exc: Exception, sweep: Sweep, pending: int, started: float) -> CycleSummary:
        """The stream's own slot moved (MOVED, ASK) or its node is failing over (CLUSTERDOWN, TRYAGAIN) in
        the middle of the walk: the stream's outcome, not the invocation's failure. The map is read
        again, what the finished pages did is reported, and the cursor is left as it was: the next turn
        (this invocation's next round, or the next invocation) walks on from there with the new map."""
        self._refresh_topology()
        counts, alerts, pages = sweep.done_before_failing()
        log.warning(
            "the slot of %s moved during its cycle (%s): the slot map is read again and the rest of its "
            "pending list waits for its next turn",
            display_name(self._keys.stream),
            exc,
        )
        return CycleSummary(
            pending=pending,
            counts=counts,
            alerts=alerts,
            duration_ms=_ms_since(started),
            pages=pages,
            stopped_by=StopReason.SLOT_MOVED,
        )

    def _report(self, client: Client, alerts: Incidents) -> None:
        """Say what an operator must hear about: trimmed dead letters, and the last refused attempt, which
        is also kept (best effort: Redis may be refusing writes) where `status` shows it."""
        if alerts.dead_letters_trimmed:
            log.warning(
                "DEAD_LETTER_MAXLEN=%d: trimmed %s dead letters from %s; they are gone",
                self._settings.DEAD_LETTER_MAXLEN,
                f"{alerts.dead_letters_trimmed:,}",
                display_name(self._keys.dead_letter),
            )
        if not alerts.refused:
            return
        refused = ", ".join(f"{count} {step} {reason}" for (step, reason), count in alerts.refused.items())
        log.warning("refused attempts, left pending with their deliveries given back: %s", refused)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            client.set(
                raw_name(self._keys.last_refusal), f"{stamp} {alerts.last_refusal}", px=LAST_REFUSAL_TTL_MS
            )
        except redis.exceptions.ResponseError as exc:  # refused (OOM…); a lost connection goes up: 503
            log.debug("could not keep the last refusal for `status`: %s", exc)

    def _prune_idle_consumers(self, client: Client, alerts: Incidents) -> bool:
        """Opt-in (DELETE_IDLE_CONSUMERS_AFTER_SEC): remove consumers idle that long with nothing pending.
        Housekeeping: a refusal (no +xinfo, say) or a lost connection is a warning and a metric, never the
        invocation's status. False when Redis stopped answering (nothing more is sent this cycle)."""
        idle_sec = self._settings.DELETE_IDLE_CONSUMERS_AFTER_SEC
        if not idle_sec:
            return True
        keys = self._keys
        try:
            removed = with_retries(
                partial(
                    prune_idle_consumers, client, raw_name(keys.stream), keys.group, idle_sec, [keys.consumer]
                )
            )
        except (redis.exceptions.ResponseError, *LOST_CONNECTION) as exc:
            alerts.housekeeping_failed[PRUNE_CONSUMERS] += 1
            log.warning(
                "could not remove idle consumers (DELETE_IDLE_CONSUMERS_AFTER_SEC); the cycle's work is done "
                "all the same: %s",
                exc,
            )
            return not isinstance(exc, LOST_CONNECTION)
        if removed:
            log.info("removed %d idle consumers with nothing pending: %s", len(removed), ", ".join(removed))
        return True

    def _save_cursor(self, lease: Lease, start: bytes) -> None:
        """Remember where the next invocation starts, only while the lease is still ours: a monitor that
        stalled past its lease must not overwrite its successor's cursor. Only a hint: losing it costs a
        walk from the head."""
        try:
            saved = lease.save_cursor(
                raw_name(self._keys.cursor), b"" if start == START else start, CURSOR_TTL_MS
            )
        except redis.exceptions.ResponseError as exc:  # e.g. OOM: the cycle's work is done all the same
            log.warning("could not save where the next cycle starts: %s", exc)
            return
        if not saved:
            log.info(
                "the lease is no longer ours (it expired, or another monitor took it): the cursor is left"
            )


def _may_sweep_without_lease(exc: redis.exceptions.ResponseError) -> bool:
    """Redis out of memory, or unable to persist: the lease only saves duplicate work."""
    return code_of(exc) in LEASE_REFUSALS_TO_SWEEP_THROUGH


def _release_quietly(lease: Lease) -> None:
    """Release the lease; if Redis refuses, it expires by itself within its TTL. A lost connection or a
    timeout goes up (the invocation answers 503), so that no further stream of the invocation starts
    three more timeouts against a server that stopped answering."""
    try:
        lease.release()
    except redis.exceptions.ResponseError as exc:
        log.warning("could not release the lease (it expires by itself): %s", exc)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
