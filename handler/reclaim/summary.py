"""The vocabulary of a cycle's result: what happened to the entries (Counts), why it stopped (StopReason), and
the summary that carries both (CycleSummary).

The summary's JSON is read by people and programs (the CLI's output, the cycle's log line, the host's
ReturnValue, alert queries), so its keys and their order never change: pending, the five counts, duration_ms,
pages, stopped_by, skipped, and streams with several streams (tests/golden/ pins them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class StopReason(StrEnum):
    """Why a cycle stopped: the summary's `stopped_by`, and the `outcome` of tweets_monitor_cycles_total."""

    EMPTY = "empty"  # nothing was pending
    END = "end"  # the whole pending list was walked
    BUDGET = "budget"  # another page would not have finished within CYCLE_TIME_BUDGET_SEC
    CAP = "cap"  # CYCLE_MAX_MESSAGES entries were handed out
    SIGNAL = "signal"  # SIGTERM or SIGINT: the page in hand was finished first
    LEASE_LOST = "lease-lost"  # another monitor took the sweep lease over
    SLOT_MOVED = "slot-moved"  # the stream's slot moved to another node: map read again, the rest retried
    SKIPPED = "skipped"  # did not run at all; `skipped` says why


class CycleFailure(StrEnum):
    """The `outcome` of a cycle that ended in a failure rather than a StopReason."""

    REDIS_UNAVAILABLE = "redis-unavailable"  # unreachable, timing out or refusing authentication (HTTP 503)
    ERROR = "error"  # anything else (HTTP 500, exit code 1)


# With several streams the invocation reports the first of these that any stream gave.
STOP_PRECEDENCE = (
    StopReason.SIGNAL,
    StopReason.BUDGET,
    StopReason.CAP,
    StopReason.LEASE_LOST,
    StopReason.SLOT_MOVED,
    StopReason.END,
    StopReason.EMPTY,
    StopReason.SKIPPED,
)
# A stream stopped for one of these still has work: it stays in the next round of a multi-stream sweep.
WORK_LEFT = frozenset({StopReason.BUDGET, StopReason.CAP, StopReason.LEASE_LOST, StopReason.SLOT_MOVED})


@dataclass
class Counts:
    """What happened to the entries a cycle (or one page of it) handled."""

    claimed: int = 0  # entries taken over with XCLAIM
    processed: int = 0  # written to tweet:<id> and acknowledged
    deleted: int = 0  # pending but gone from the stream: acknowledged, nothing to write
    dead_lettered: int = 0  # moved to the dead-letter stream
    failed: int = 0  # claimed but left pending after a retryable error; a later cycle tries again

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{name: getattr(self, name) + getattr(other, name) for name in count_names()})

    @property
    def handled(self) -> int:
        """Entries that used up part of CYCLE_MAX_MESSAGES: claimed, or acknowledged as deleted."""
        return self.claimed + self.deleted


@dataclass
class Incidents:
    """What an operator should hear about beside the counts: refused attempts by step and reason, dead
    letters trimmed by DEAD_LETTER_MAXLEN, and housekeeping that failed. They go to the metrics and the
    log, not into the summary's JSON."""

    refused: Counter[tuple[str, str]] = field(default_factory=Counter)  # (step, reason) -> entries
    last_refusal: str = ""  # the latest refusal's message, for `status`
    dead_letters_trimmed: int = 0
    housekeeping_failed: Counter[str] = field(default_factory=Counter)  # task -> failures (never fatal)

    def __add__(self, other: Incidents) -> Incidents:
        return Incidents(
            self.refused + other.refused,
            other.last_refusal or self.last_refusal,
            self.dead_letters_trimmed + other.dead_letters_trimmed,
            self.housekeeping_failed + other.housekeeping_failed,
        )

    def refuse(self, step: str, reason: str, message: str) -> None:
        self.refused[step, reason] += 1
        self.last_refusal = f"{step}: {message}"


def count_names() -> tuple[str, ...]:
    """The five counts' names, in the summary's order (also the metrics' entry counters)."""
    return tuple(item.name for item in fields(Counts))


@dataclass(frozen=True)
class CycleSummary:
    """One cycle's result: the same keys in ReturnValue, the CLI's JSON and the cycle's log line."""

    pending: int | None = 0  # pending entries in the group before the cycle; None: not read (not reached)
    counts: Counts = field(default_factory=Counts)
    duration_ms: int = 0
    pages: int = 0
    stopped_by: StopReason = StopReason.EMPTY
    skipped: str | None = None  # why the cycle did not run at all, when it did not
    # With several streams (STREAM_NAME lists them): each stream's own summary, by name; the fields above
    # are then their totals.
    streams: dict[str, CycleSummary] | None = None
    alerts: Incidents = field(default_factory=Incidents)  # not part of the JSON

    @classmethod
    def skipped_because(cls, reason: str, stopped_by: StopReason = StopReason.SKIPPED) -> CycleSummary:
        return cls(stopped_by=stopped_by, skipped=reason)

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "pending": self.pending,
            **asdict(self.counts),
            "duration_ms": self.duration_ms,
            "pages": self.pages,
            "stopped_by": self.stopped_by.value,
            "skipped": self.skipped,
        }
        if self.streams is not None:
            document["streams"] = {name: summary.as_dict() for name, summary in self.streams.items()}
        return document

    def log_line(self, stream: str | None = None) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.as_dict().items() if v is not None and k != "streams")
        return f"reclaim cycle of {stream}: {counts}" if stream else f"reclaim cycle: {counts}"

    def merged_with(self, later: CycleSummary) -> CycleSummary:
        """One stream's summary over several rounds: counts added, the pending count from before the first."""
        return CycleSummary(
            pending=self.pending,
            counts=self.counts + later.counts,
            duration_ms=self.duration_ms + later.duration_ms,
            pages=self.pages + later.pages,
            stopped_by=later.stopped_by,
            skipped=later.skipped,
            alerts=self.alerts + later.alerts,
        )


def total(summaries: dict[str, CycleSummary], duration_ms: int) -> CycleSummary:
    """The invocation's summary over several streams: their totals, the most telling stop reason, and each
    stream's own summary under `streams`."""
    counts, alerts = Counts(), Incidents()
    for summary in summaries.values():
        counts += summary.counts
        alerts += summary.alerts
    reasons = {summary.stopped_by for summary in summaries.values()}
    read = [summary.pending for summary in summaries.values() if summary.pending is not None]
    return CycleSummary(
        pending=sum(read) if read or not summaries else None,  # of the streams read; None if none was
        counts=counts,
        duration_ms=duration_ms,
        pages=sum(summary.pages for summary in summaries.values()),
        stopped_by=next((reason for reason in STOP_PRECEDENCE if reason in reasons), StopReason.EMPTY),
        streams=summaries,
        alerts=alerts,
    )
