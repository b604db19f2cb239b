"""One reclaim cycle: find abandoned entries, claim them, do the processor's work, acknowledge them.

The main thread walks the pending list page by page (XPENDING) from where the last invocation stopped and
hands each page to one of two page workers (page.py), each with its own connection. While one worker waits
for Redis to write its page, the other claims and prepares the next, so the server, not Python, sets the
pace; memory stays at a few pages whatever the backlog.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import redis

from handler.consumers import prune_idle_consumers
from handler.errors import MonitorError, RedisUnavailableError, StreamOrGroupMissingError
from handler.keys import StreamKeys
from handler.lease import Lease, holder_identity
from handler.page import PageCounts, PageSettings, handle_page
from handler.plan import (
    START,
    PendingRow,
    next_id,
    parse_id,
    parse_pending_count,
    parse_pending_rows,
    walk_segments,
)
from handler.settings import MonitorSettings
from handler.wire import Channel, Wire, pack

log = logging.getLogger(__name__)

CURSOR_TTL_MS = 24 * 3600 * 1000  # a forgotten cursor only costs one walk from the start
SWITCH_INTERVAL_SEC = 0.001
PAGE_WORKERS = 3  # measured on 2 cores: 2 workers ~60k msg/s, 3 ~70k (bench/reclaim_bench.py)


@dataclass(frozen=True)
class CycleSummary:
    """The counts of one cycle: the same keys in ReturnValue, the CLI's JSON and the cycle's log line."""

    pending: int = 0  # pending entries in the group before the cycle
    claimed: int = 0  # entries this cycle took over with XCLAIM
    processed: int = 0  # written to tweet:<id> and acknowledged
    deleted: int = 0  # pending but gone from the stream: acknowledged, nothing to write
    dead_lettered: int = 0  # moved to the dead-letter stream
    failed: int = 0  # claimed but left pending after a retryable error; a later cycle tries again
    duration_ms: int = 0
    pages: int = 0
    stopped_by: str = "empty"  # empty | end | budget | cap | signal | lease-lost | skipped
    skipped: str | None = None  # why the cycle did not run at all, when it did not

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_line(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.as_dict().items() if v is not None)
        return f"reclaim cycle: {counts}"


def never() -> bool:
    return False


class ReclaimCycle:
    """Runs cycles for one stream and group; the Redis client is passed in and owned by the caller."""

    def __init__(self, client: redis.Redis, settings: MonitorSettings) -> None:
        self._client = client
        self._settings = settings
        self._keys = StreamKeys.from_settings(settings)
        self._holder = holder_identity(settings.MONITORING_CONSUMER_NAME)

    @property
    def keys(self) -> StreamKeys:
        return self._keys

    def run(self, should_stop: Callable[[], bool] = never) -> CycleSummary:
        """One cycle; Redis failures become MonitorError subclasses that name what failed."""
        try:
            summary = self._run(should_stop)
        except redis.exceptions.ResponseError as exc:
            raise self._explain(exc) from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            host, port = self._settings.redis_address
            what = type(exc).__name__
            raise RedisUnavailableError(f"Redis at {host}:{port} is unavailable ({what}: {exc})") from exc
        log.info(summary.log_line(), extra={"summary": summary.as_dict()})
        return summary

    def _explain(self, exc: redis.exceptions.ResponseError) -> MonitorError:
        if str(exc).startswith("NOGROUP"):
            return StreamOrGroupMissingError(
                f"stream '{self._keys.stream}' or its consumer group '{self._keys.group}' does not "
                "exist: create them as the processor does (XGROUP CREATE … MKSTREAM)"
            )
        if str(exc).startswith("NOPERM") or isinstance(exc, redis.exceptions.NoPermissionError):
            return MonitorError(f"the Redis user may not run a command the monitor needs: {exc}")
        return MonitorError(f"Redis refused a command of the reclaim cycle: {exc}")

    def _run(self, should_stop: Callable[[], bool]) -> CycleSummary:
        started = time.monotonic()
        keys = self._keys
        summary_reply = self._client.execute_command("XPENDING", keys.stream, keys.group)  # type: ignore[no-untyped-call]
        pending = parse_pending_count(summary_reply)
        if pending == 0:
            return CycleSummary(duration_ms=_ms_since(started))
        lease = Lease(self._client, keys.lease, self._holder, self._settings.LEASE_TTL_SEC)
        try:
            holder = lease.acquire()
        except redis.exceptions.ResponseError as exc:
            # e.g. OOM refuses the SET: the lease only saves duplicate work, so sweep without it.
            log.warning("could not take the sweep lease, sweeping without it: %s", exc)
            lease.go_without()
            holder = None
        if holder is not None:
            log.info("another monitor is sweeping the group; lease held by %s", holder)
            return CycleSummary(
                pending=pending, duration_ms=_ms_since(started), stopped_by="skipped",
                skipped=f"lease held by {holder}",
            )  # fmt: skip
        try:
            cursor: bytes | None = self._client.get(keys.cursor)  # type: ignore[assignment]
            sweep = _Sweep(
                self._client.connection_pool, self._settings, keys, should_stop, started, lease.keep
            )
            stopped_by, next_start = sweep.walk(cursor)
            self._save_cursor(next_start)
            self._prune_idle_consumers()
        finally:
            _release_quietly(lease)
        counts = sweep.counts
        return CycleSummary(
            pending=pending,
            claimed=counts.claimed,
            processed=counts.processed,
            deleted=counts.deleted,
            dead_lettered=counts.dead_lettered,
            failed=counts.failed,
            duration_ms=_ms_since(started),
            pages=sweep.pages,
            stopped_by=stopped_by,
        )

    def _prune_idle_consumers(self) -> None:
        """Opt-in (DELETE_IDLE_CONSUMERS_AFTER_SEC): remove consumers idle that long with nothing pending."""
        idle_sec = self._settings.DELETE_IDLE_CONSUMERS_AFTER_SEC
        if not idle_sec:
            return
        keys = self._keys
        removed = prune_idle_consumers(self._client, keys.stream, keys.group, idle_sec, keep=[keys.consumer])
        if removed:
            log.info("removed %d idle consumers with nothing pending: %s", len(removed), ", ".join(removed))

    def _save_cursor(self, start: bytes) -> None:
        """Remember where the next invocation starts. Only a hint: losing it costs a walk from the head."""
        try:
            if start == START:
                self._client.delete(self._keys.cursor)
            else:
                self._client.set(self._keys.cursor, start, px=CURSOR_TTL_MS)
        except redis.exceptions.ResponseError as exc:  # e.g. OOM: the cycle's work is done all the same
            log.warning("could not save where the next cycle starts: %s", exc)


@dataclass(frozen=True)
class _Page:
    index: int
    start: bytes  # where this page's XPENDING range began: the cursor if it is never claimed
    rows: list[PendingRow]


class _Sweep:
    """One invocation's walk over the pending list, with pages handed to PAGE_WORKERS threads."""

    def __init__(
        self,
        pool: redis.ConnectionPool,
        settings: MonitorSettings,
        keys: StreamKeys,
        should_stop: Callable[[], bool],
        started: float,
        keep_lease: Callable[[], bool],
    ) -> None:
        self._pool = pool
        self._keep_lease = keep_lease
        self._lease_lost = False
        self._settings = settings
        self._keys = keys
        self._should_stop = should_stop
        self._deadline = started + settings.CYCLE_TIME_BUDGET_SEC
        self._config = PageSettings(
            keys, settings.min_idle_ms, settings.MAX_DELIVERIES, settings.DEAD_LETTER_MAXLEN
        )
        self._pages: queue.Queue[_Page | None] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._unclaimed: list[bytes] = []
        self.counts = PageCounts()
        self.pages = 0
        # The longest a page has taken from claim to acknowledgement: no page is claimed unless it can
        # finish before the deadline, so an invocation does not overrun its budget.
        self._page_seconds = 0.0

    def walk(self, cursor: bytes | None) -> tuple[str, bytes]:
        """Walk and process pages; returns why it stopped and where the next invocation should start."""
        workers = [threading.Thread(target=self._work, name=f"page-worker-{n}") for n in range(PAGE_WORKERS)]
        for worker in workers:
            worker.start()
        channel = Channel(self._pool)
        # A worker whose reply has arrived should not wait the default 5 ms for another to yield the GIL
        # while Redis sits idle: measured +5-10 % throughput on 2 cores (bench/reclaim_bench.py).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_SEC)
        try:
            stopped_by, next_start = self._dispatch(channel, cursor)
        finally:
            sys.setswitchinterval(switch_interval)
            for _ in workers:
                self._pages.put(None)
            for worker in workers:
                worker.join()
            channel.close()
        if self._errors:
            raise self._errors[0]
        if self._unclaimed:  # pages handed out but refused after the budget or a signal
            next_start = min(self._unclaimed, key=_order)
        return stopped_by, next_start

    def _dispatch(self, channel: Channel, cursor: bytes | None) -> tuple[str, bytes]:
        settings, keys = self._settings, self._keys
        rows_handed_out = 0
        for segment_start, segment_end in walk_segments(cursor):
            start = segment_start
            while True:
                reason = self._reason_to_stop(rows_handed_out)
                if reason:
                    return reason, start
                count = min(settings.RECLAIM_PAGE_SIZE, settings.CYCLE_MAX_MESSAGES - rows_handed_out)
                command = pack((b"XPENDING", keys.stream, keys.group, start, segment_end, count))
                (reply,) = channel.run(partial(_call_one, command))
                if isinstance(reply, Exception):
                    raise reply
                rows = parse_pending_rows(reply)
                if rows:
                    self._hand_out(_Page(self.pages, start, rows))
                    rows_handed_out += len(rows)
                self.pages += 1
                if len(rows) < count:
                    break  # the end of this segment
                start = next_id(rows[-1].entry_id)
        return "end", START

    def _reason_to_stop(self, rows_handed_out: int) -> str | None:
        if self.pages == 0:
            return None  # every invocation handles at least one page
        if self._errors:
            return "error"
        if self._should_stop():
            return "signal"
        if not self._keep_lease():
            self._lease_lost = True
            log.warning("the lease passed to another monitor; this cycle stops claiming")
            return "lease-lost"
        if rows_handed_out >= self._settings.CYCLE_MAX_MESSAGES:
            return "cap"
        if self._out_of_time():
            return "budget"
        return None

    def _out_of_time(self) -> bool:
        return time.monotonic() + self._page_seconds >= self._deadline

    def _may_claim(self, page: _Page) -> bool:
        if self._lease_lost:
            return False
        return page.index == 0 or not (self._should_stop() or self._out_of_time())

    def _hand_out(self, page: _Page) -> None:
        while not self._errors:
            try:
                self._pages.put(page, timeout=0.05)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        channel = Channel(self._pool)
        try:
            while (page := self._pages.get()) is not None:
                if self._errors:
                    continue  # drain: the walk is stopping
                if not self._may_claim(page):
                    with self._lock:
                        self._unclaimed.append(page.start)
                    continue
                began = time.monotonic()
                counts = channel.run(partial(handle_page, rows=page.rows, config=self._config))
                with self._lock:
                    self.counts.add(counts)
                    self._page_seconds = max(self._page_seconds, time.monotonic() - began)
        except BaseException as exc:
            with self._lock:
                self._errors.append(exc)
            while self._pages.get() is not None:
                pass  # keep taking pages so the walker is never blocked
        finally:
            channel.close()


def _call_one(command: bytes, wire: Wire) -> list[Any]:
    return wire.call([command], 1)


def _release_quietly(lease: Lease) -> None:
    """Release the lease; if Redis is gone it expires by itself within its TTL."""
    try:
        lease.release()
    except redis.exceptions.RedisError as exc:
        log.warning("could not release the lease (it expires by itself): %s", exc)


def _order(entry_id: bytes) -> tuple[int, int]:
    return (-1, -1) if entry_id == START else parse_id(entry_id)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
