"""One invocation's way through the pending list: pure, no I/O.

The sweep (sweep.py) and the dry run (ops/dry_run.py) both read the pages a Walk asks for and tell it what
they got, so both walk the same pages from the same cursor (cursor.py reads it) and stop for the same
reasons: the end, the cap (CYCLE_MAX_MESSAGES counts every row handed out, idle or not) and the budget (no
page is started that would not finish before the deadline, judged by the longest page so far; the first
page always runs).
"""

from __future__ import annotations

from collections.abc import Sequence

from handler.reclaim.rules import START, PendingRow, next_id, walk_start
from handler.reclaim.summary import StopReason


class Walk:
    def __init__(self, cursor: bytes | None, max_messages: int) -> None:
        self.start = walk_start(cursor)  # where the next page's XPENDING range begins
        self.pages = 0  # pages read, the last short one included
        self.handed_out = 0  # rows of those pages
        self._max_messages = max_messages

    def next_count(self, page_size: int) -> int:
        """How many rows the next page may ask for; 0 or less once the cap is reached."""
        return min(page_size, self._max_messages - self.handed_out)

    def advance(self, rows: Sequence[PendingRow], asked: int) -> bool:
        """Count a page that was read; True when it was the last one (fewer rows than asked): the next
        invocation then starts from the head."""
        self.pages += 1
        self.handed_out += len(rows)
        if len(rows) < asked:
            self.start = START
            return True
        self.start = next_id(rows[-1].entry_id)
        return False

    def reason_to_stop(self, now: float, page_seconds: float, deadline: float) -> StopReason | None:
        """The cap or the budget, once the first page was read (every invocation reads at least one)."""
        if self.pages == 0:
            return None
        if self.handed_out >= self._max_messages:
            return StopReason.CAP
        if now + page_seconds >= deadline:
            return StopReason.BUDGET
        return None
