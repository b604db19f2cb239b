"""One reclaim cycle: find abandoned entries, claim them, do the processor's work, acknowledge them.

Every command here is safe to repeat after a lost reply, which is what lets the client retry on connection
errors: XPENDING and XRANGE read; a repeated XCLAIM finds the entries no longer idle and returns nothing (they
stay pending under this consumer and come back after min-idle); HSET of the same fields and XACK are
idempotent; the dead-letter script checks ownership and pending state before it changes anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from handler.dead_letter import MOVE_TO_DEAD_LETTER_LUA, MoveOutcome
from handler.errors import MonitorError, RedisUnavailableError, StreamOrGroupMissingError
from handler.keys import StreamKeys
from handler.plan import (
    START,
    DeadLetter,
    DeadLetterReason,
    PendingRow,
    Write,
    claimable_ids,
    decide,
    is_permanent_write_error,
    next_id,
    parse_pending_count,
    parse_pending_rows,
    walk_segments,
)
from handler.settings import MonitorSettings

log = logging.getLogger(__name__)

CURSOR_TTL_MS = 24 * 3600 * 1000  # a forgotten cursor only costs one walk from the start


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
    stopped_by: str = "empty"  # empty | end | budget | cap | signal | skipped
    skipped: str | None = None  # why the cycle did not run at all, when it did not

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_line(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.as_dict().items() if v is not None)
        return f"reclaim cycle: {counts}"


@dataclass
class _Tally:
    claimed: int = 0
    processed: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    failed: int = 0
    pages: int = 0


def never() -> bool:
    return False


class ReclaimCycle:
    """Runs cycles for one stream and group; the Redis client is passed in and owned by the caller."""

    def __init__(self, client: redis.Redis, settings: MonitorSettings) -> None:
        self._client = client
        self._settings = settings
        self._keys = StreamKeys.from_settings(settings)
        self._move_to_dead_letter = client.register_script(MOVE_TO_DEAD_LETTER_LUA)

    def _command(self, *args: Any) -> Any:
        return self._client.execute_command(*args)  # type: ignore[no-untyped-call]

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
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return MonitorError(f"the Redis user may not run a command the monitor needs: {exc}")
        return MonitorError(f"Redis refused a command of the reclaim cycle: {exc}")

    def _run(self, should_stop: Callable[[], bool]) -> CycleSummary:
        started = time.monotonic()
        keys, settings = self._keys, self._settings
        pending = parse_pending_count(self._command("XPENDING", keys.stream, keys.group))
        if pending == 0:
            return CycleSummary(duration_ms=_ms_since(started))

        tally = _Tally()
        stopped_by = "end"
        cursor: bytes | None = self._client.get(keys.cursor)  # type: ignore[assignment]
        for segment_start, segment_end in walk_segments(cursor):
            start = segment_start
            while True:
                reason = self._reason_to_stop(tally, started, should_stop)
                if reason:
                    self._save_cursor(start)
                    return self._summary(pending, tally, started, reason)
                count = min(settings.RECLAIM_PAGE_SIZE, settings.CYCLE_MAX_MESSAGES - tally.claimed)
                reply = self._command("XPENDING", keys.stream, keys.group, start, segment_end, count)
                rows = parse_pending_rows(reply)
                tally.pages += 1
                self._handle_page(rows, tally)
                if len(rows) < count:
                    break
                start = next_id(rows[-1].entry_id)
        self._save_cursor(START)
        return self._summary(pending, tally, started, stopped_by)

    def _reason_to_stop(self, tally: _Tally, started: float, should_stop: Callable[[], bool]) -> str | None:
        if tally.pages == 0:
            return None  # every invocation handles at least one page
        if should_stop():
            return "signal"
        if tally.claimed >= self._settings.CYCLE_MAX_MESSAGES:
            return "cap"
        if time.monotonic() - started >= self._settings.CYCLE_TIME_BUDGET_SEC:
            return "budget"
        return None

    def _save_cursor(self, start: bytes) -> None:
        """Remember where the next invocation starts. Only a hint: losing it costs a walk from the head."""
        try:
            if start == START:
                self._client.delete(self._keys.cursor)
            else:
                self._client.set(self._keys.cursor, start, px=CURSOR_TTL_MS)
        except redis.exceptions.ResponseError as exc:  # e.g. OOM: the cycle's work is done all the same
            log.warning("could not save where the next cycle starts: %s", exc)

    def _summary(self, pending: int, tally: _Tally, started: float, stopped_by: str) -> CycleSummary:
        return CycleSummary(
            pending=pending,
            claimed=tally.claimed,
            processed=tally.processed,
            deleted=tally.deleted,
            dead_lettered=tally.dead_lettered,
            failed=tally.failed,
            duration_ms=_ms_since(started),
            pages=tally.pages,
            stopped_by=stopped_by,
        )

    # -- one page -------------------------------------------------------------------------------------

    def _handle_page(self, rows: Sequence[PendingRow], tally: _Tally) -> None:
        keys, settings = self._keys, self._settings
        ids = claimable_ids(rows, settings.min_idle_ms)
        if not ids:
            return
        reply = self._command("XCLAIM", keys.stream, keys.group, keys.consumer, settings.min_idle_ms, *ids)
        # Before Redis 7.0 an entry deleted from the stream comes back as nil and stays pending.
        entries: list[tuple[bytes, list[bytes]]] = [
            (item[0], item[1]) for item in reply if item is not None and item[0] is not None
        ]
        tally.claimed += len(entries)
        if len(entries) < len(ids):
            returned = {entry_id for entry_id, _ in entries}
            tally.deleted += self._acknowledge_deleted([i for i in ids if i not in returned])

        deliveries = {row.entry_id: row.deliveries for row in rows}
        writes: list[tuple[bytes, Write]] = []
        dead: list[tuple[bytes, DeadLetter]] = []
        for entry_id, fields in entries:
            decision = decide(fields, deliveries[entry_id], settings.MAX_DELIVERIES)
            if isinstance(decision, Write):
                writes.append((entry_id, decision))
            else:
                dead.append((entry_id, decision))

        written = self._write(writes, dead, tally)
        self._acknowledge_and_dead_letter(written, dead, deliveries, tally)

    def _acknowledge_deleted(self, candidates: list[bytes]) -> int:
        """Of the IDs asked for but not returned, acknowledge those gone from the stream.

        An ID missing from XCLAIM's reply may simply not have been idle long enough; only one that no
        longer exists in the stream, and that is either ours now (claimed as nil before 7.0) or no longer
        pending (dropped by XCLAIM from 7.0), counts as deleted.
        """
        keys = self._keys
        pipe = self._client.pipeline(transaction=False)
        for entry_id in candidates:
            pipe.xrange(keys.stream, entry_id, entry_id, count=1)
            _queue(pipe, "XPENDING", keys.stream, keys.group, entry_id, entry_id, 1)
        replies = pipe.execute()
        deleted, to_ack = 0, []
        consumer = keys.consumer.encode()
        for index, entry_id in enumerate(candidates):
            still_in_stream, pending_row = replies[2 * index], replies[2 * index + 1]
            if still_in_stream:
                continue
            if not pending_row:
                deleted += 1
            elif pending_row[0][1] == consumer:
                deleted += 1
                to_ack.append(entry_id)
        if to_ack:
            self._client.xack(keys.stream, keys.group, *to_ack)
        if deleted:
            log.info("acknowledged %d pending entries deleted from the stream", deleted)
        return deleted

    def _write(
        self,
        writes: list[tuple[bytes, Write]],
        dead: list[tuple[bytes, DeadLetter]],
        tally: _Tally,
    ) -> list[bytes]:
        """HSET every write in one pipeline; returns the IDs whose write succeeded."""
        if not writes:
            return []
        pipe = self._client.pipeline(transaction=False)
        for _, write in writes:
            _queue(pipe, "HSET", write.key, *write.fields)
        results = pipe.execute(raise_on_error=False)
        written = []
        for (entry_id, write), result in zip(writes, results, strict=True):
            if not isinstance(result, Exception):
                written.append(entry_id)
                continue
            if isinstance(result, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
                raise result
            message = str(result)
            if is_permanent_write_error(message):
                dead.append((entry_id, DeadLetter(DeadLetterReason.WRITE_FAILED, message)))
            else:
                tally.failed += 1
                log.warning("writing %r failed, left pending for a later cycle: %s", write.key, message)
        return written

    def _acknowledge_and_dead_letter(
        self,
        written: list[bytes],
        dead: list[tuple[bytes, DeadLetter]],
        deliveries: dict[bytes, int],
        tally: _Tally,
    ) -> None:
        keys = self._keys
        if not written and not dead:
            return
        pipe = self._client.pipeline(transaction=False)
        if written:
            pipe.xack(keys.stream, keys.group, *written)
        now_ms = int(time.time() * 1000)
        for entry_id, letter in dead:
            self._move_to_dead_letter(
                keys=[keys.stream, keys.dead_letter],
                args=[
                    keys.group,
                    keys.consumer,
                    entry_id,
                    letter.reason.value,
                    deliveries[entry_id],
                    now_ms,
                    letter.detail,
                ],
                client=pipe,
            )
        results = pipe.execute(raise_on_error=False)
        if written:
            ack_result = results.pop(0)
            if isinstance(ack_result, Exception):
                raise ack_result
            tally.processed += len(written)
        for (entry_id, letter), result in zip(dead, results, strict=True):
            if isinstance(result, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
                raise result
            if isinstance(result, Exception):
                tally.failed += 1
                log.warning("dead-lettering %r failed, left pending: %s", entry_id, result)
            elif result == MoveOutcome.DEAD_LETTERED:
                tally.dead_lettered += 1
                log.warning(
                    "dead-lettered %s (%s): %s", entry_id.decode(), letter.reason.value, letter.detail
                )
            elif result == MoveOutcome.DELETED:
                tally.deleted += 1


def _queue(pipe: redis.client.Pipeline, *args: Any) -> None:
    pipe.execute_command(*args)  # type: ignore[no-untyped-call]


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
