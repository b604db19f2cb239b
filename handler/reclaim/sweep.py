"""One invocation's walk over the pending list.

The calling thread walks the list page by page (XPENDING) from where the last invocation stopped, wrapping
round to the head, and hands each page to one of PAGE_WORKERS threads, each with its own connection. While
one worker waits for Redis to write its page, another claims and prepares the next, so the server, not
Python, sets the pace; memory stays at a few pages whatever the backlog.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from handler.keys import StreamKeys
from handler.reclaim.interpreter_settings import settings_for_sweeping
from handler.reclaim.page import WAIT_FOR_REPLICA_MS, PageSettings, handle_page
from handler.reclaim.rate import ClaimPacer
from handler.reclaim.rules import END, START, PendingRow, parse_id, parse_pending_rows
from handler.reclaim.summary import Counts, Incidents, StopReason
from handler.reclaim.walk import Walk
from handler.reclaim.write_order import WriteOrder, WriteOrderAbandonedError
from handler.settings import MonitorSettings
from handler.transport.topology import Topology
from handler.transport.wire import Channel, pack

log = logging.getLogger(__name__)

PAGE_WORKERS = 3  # a page written while the next is claimed; a fourth gains nothing (docs/performance.md)


@dataclass(frozen=True)
class Limits:
    """How long one stream's sweep may take, how many entries it may hand out, and the pace of the whole
    invocation (one pacer shared by all its streams: RECLAIM_MAX_RATE)."""

    budget_sec: float
    max_messages: int
    pacer: ClaimPacer = field(default_factory=lambda: ClaimPacer(0))

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Limits:
        return cls(
            settings.CYCLE_TIME_BUDGET_SEC, settings.CYCLE_MAX_MESSAGES, ClaimPacer(settings.RECLAIM_MAX_RATE)
        )


@dataclass(frozen=True)
class SweepPlan:
    """What every sweep of one stream shares, made once per stream from the settings."""

    keys: StreamKeys
    page_size: int  # RECLAIM_PAGE_SIZE; RECLAIM_MAX_RATE may make a page smaller
    min_idle_ms: int
    max_deliveries: int
    dead_letter_maxlen: int
    wait_for_replica_ms: int
    entry_max_bytes: int
    page_max_bytes: int

    @classmethod
    def for_stream(cls, settings: MonitorSettings, keys: StreamKeys) -> SweepPlan:
        return cls(
            keys,
            settings.RECLAIM_PAGE_SIZE,
            settings.min_idle_ms,
            settings.MAX_DELIVERIES,
            settings.DEAD_LETTER_MAXLEN,
            # WAIT must never outlast the socket's timeout: at most half of it.
            min(WAIT_FOR_REPLICA_MS, int(settings.REDIS_TIMEOUT_SEC * 1000 / 2)),
            settings.ENTRY_MAX_BYTES,
            max(settings.PAGE_MAX_BYTES, settings.ENTRY_MAX_BYTES),  # a page holds at least one entry
        )

    def pages_on(self, topology: Topology) -> PageSettings:
        return PageSettings(
            self.keys,
            topology,
            self.min_idle_ms,
            self.max_deliveries,
            self.dead_letter_maxlen,
            self.wait_for_replica_ms,
            self.entry_max_bytes,
            self.page_max_bytes,
        )


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did: why it stopped, where the next invocation starts, and what its pages counted."""

    stopped_by: StopReason
    next_start: bytes
    counts: Counts
    alerts: Incidents
    pages: int


@dataclass(frozen=True)
class _Page:
    index: int
    turn: int  # its place among the pages handed out (write_order.py)
    start: bytes  # where this page's XPENDING range began: the cursor if it is never claimed
    rows: list[PendingRow]


class Sweep:
    """One invocation's walk over the pending list, with pages handed to PAGE_WORKERS threads."""

    def __init__(
        self,
        plan: SweepPlan,
        topology: Topology,
        limits: Limits,
        started: float,
        should_stop: Callable[[], bool],
        keep_lease: Callable[[], bool],
    ) -> None:
        self._plan = plan
        self._topology = topology
        self._config = plan.pages_on(topology)
        self._deadline = started + limits.budget_sec
        self._max_messages = limits.max_messages
        self._pacer = limits.pacer
        self._should_stop = should_stop
        self._keep_lease = keep_lease
        self._lease_lost = False
        self._pages: queue.Queue[_Page | None] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._unclaimed: list[bytes] = []
        self._counts = Counts()
        self._alerts = Incidents()
        self._order = WriteOrder()
        self._first_page_done = threading.Event()
        self._turns = 0
        # The longest a page has taken from claim to acknowledgement: no page is claimed unless it can
        # finish before the deadline, so an invocation does not overrun its budget.
        self._page_seconds = 0.0

    def walk(self, cursor: bytes | None) -> SweepResult:
        """Walk and process pages from `cursor`; once only."""
        # Each worker runs in a copy of this context, so its log lines carry the invocation's id and reach the
        # host's Logs like the walker's own.
        workers = [
            threading.Thread(
                target=contextvars.copy_context().run, args=(self._work,), name=f"page-worker-{n}"
            )
            for n in range(PAGE_WORKERS)
        ]
        for worker in workers:
            worker.start()
        channel = Channel(on_reconnect=self._topology.refresh)
        walk = Walk(cursor, self._max_messages)
        with settings_for_sweeping():  # the GIL switch interval and the collector, until the workers are done
            try:
                stopped = self._dispatch(channel, walk)
            except BaseException as exc:
                self._fail(exc)  # the walker's own failure (XPENDING, the lease): the workers drain
                raise
            finally:
                for _ in workers:
                    self._pages.put(None)
                for worker in workers:
                    worker.join()
                channel.close()
        if self._errors or stopped is None:
            # The error that stopped the sweep, not a page that gave up because of it.
            raise next(
                (e for e in self._errors if not isinstance(e, WriteOrderAbandonedError)), self._errors[0]
            )
        stopped_by, next_start = stopped
        if self._unclaimed:  # pages handed out but refused after the budget, a signal or the lease
            next_start = min(self._unclaimed, key=_order)
            if stopped_by == StopReason.END:  # the walk reached the end, but not every page was claimed
                stopped_by = self._refusal_reason()
        return SweepResult(stopped_by, next_start, self._counts, self._alerts, walk.pages)

    def done_before_failing(self) -> tuple[Counts, Incidents, int]:
        """What the pages finished before walk() raised: counts, incidents and pages, for a caller that
        reports the failure as the stream's outcome (its slot moved) rather than the invocation's."""
        with self._lock:
            return self._counts, self._alerts, self._turns

    def _dispatch(self, channel: Channel, walk: Walk) -> tuple[StopReason, bytes] | None:
        """Hand pages out until a reason to stop; None when a page worker failed (walk raises its error)."""
        keys = self._plan.keys
        while True:
            if self._errors:
                return None
            reason = self._reason_to_stop(walk)
            if reason:
                return reason, walk.start
            count = walk.next_count(self._pacer.page_size(self._plan.page_size))
            if count <= 0:
                return StopReason.CAP, walk.start  # nothing left to hand out, not even a first page
            if self._pacer.due_in():  # RECLAIM_MAX_RATE: not before the page is due
                if (
                    walk.pages
                    and time.monotonic() + self._pacer.due_in() + self._page_seconds >= self._deadline
                ):
                    return StopReason.BUDGET, walk.start
                self._pacer.wait()
                reason = self._reason_to_stop(walk)
                if reason:
                    return reason, walk.start
            start = walk.start
            command = pack((b"XPENDING", keys.stream, keys.group, start, END, count))
            (reply,) = channel.run(partial(_call_one, self._topology, keys.stream, command))
            if isinstance(reply, Exception):
                raise reply
            rows = parse_pending_rows(reply)
            if rows:
                self._pacer.handed_out(len(rows))
                self._hand_out(_Page(walk.pages, self._turns, start, rows))
                self._turns += 1
            if walk.advance(rows, count):
                return StopReason.END, walk.start  # the end: the next invocation starts from the head

    def _reason_to_stop(self, walk: Walk) -> StopReason | None:
        if walk.pages == 0:
            return None  # every invocation handles at least one page
        if self._should_stop():
            return StopReason.SIGNAL
        if not self._keep_lease():
            self._lease_lost = True
            log.warning("the lease passed to another monitor; this cycle stops claiming")
            return StopReason.LEASE_LOST
        return walk.reason_to_stop(time.monotonic(), self._page_seconds, self._deadline)

    def _out_of_time(self) -> bool:
        return time.monotonic() + self._page_seconds >= self._deadline

    def _may_claim(self, page: _Page) -> bool:
        """Every invocation claims its first page; the others only once that page's time is known and
        another page would still finish within the budget, and never once the sweep has failed."""
        if page.turn == 0:
            return not self._lease_lost
        self._first_page_done.wait()
        if self._errors:
            return False
        return not (self._lease_lost or self._should_stop() or self._out_of_time())

    def _fail(self, exc: BaseException) -> None:
        """A page worker or the walker failed: record it first, then let everyone waiting go (they see the
        error and start no new attempts against a Redis that may have stopped answering)."""
        with self._lock:
            self._errors.append(exc)
        self._order.abandon()  # no page waits for a turn that will never come
        self._first_page_done.set()

    def _refusal_reason(self) -> StopReason:
        if self._lease_lost:
            return StopReason.LEASE_LOST
        return StopReason.SIGNAL if self._should_stop() else StopReason.BUDGET

    def _hand_out(self, page: _Page) -> None:
        while not self._errors:
            try:
                self._pages.put(page, timeout=0.05)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        channel = Channel(on_reconnect=self._topology.refresh)
        try:
            while (page := self._pages.get()) is not None:
                if self._errors:
                    continue  # drain: the walk is stopping
                if not self._may_claim(page):
                    with self._lock:
                        self._unclaimed.append(page.start)
                    self._order.give_up_turn(page.turn)
                    if page.turn == 0:
                        self._first_page_done.set()  # refused (the lease was lost): nobody may wait for it
                    continue
                began = time.monotonic()
                # Retries inside, step by step; the page takes or gives up its turn in the write order.
                result = handle_page(channel, page.rows, self._config, self._order, page.turn)
                with self._lock:
                    self._counts += result.counts
                    self._alerts += result.alerts
                    self._page_seconds = max(self._page_seconds, time.monotonic() - began)
                if page.turn == 0:
                    self._first_page_done.set()  # only now is a page's time known
        except BaseException as exc:
            self._fail(exc)
            while self._pages.get() is not None:
                pass  # keep taking pages so the walker is never blocked
        finally:
            channel.close()


def _call_one(topology: Topology, key: str, command: bytes, channel: Channel) -> list[Any]:
    return channel.wire(topology.node_of(key).pool).call([command], 1)


def _order(entry_id: bytes) -> tuple[int, int]:
    return (-1, -1) if entry_id == START else parse_id(entry_id)
