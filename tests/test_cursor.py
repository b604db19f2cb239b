"""Where the next invocation starts walking ({<stream>}:cursor:<group>): only a hint, so a value that does not
parse is ignored and replaced, and a monitor past its lease never overwrites its successor's."""

from __future__ import annotations

import time
from typing import Any

import pytest

from handler.reclaim.summary import StopReason
from tests.pipeline import tweet
from tests.world import World


@pytest.mark.parametrize("bad", [b"garbage", b"1700000000000-abc", b"-5-1", "a hash"])
def test_a_cursor_that_does_not_parse_is_ignored_and_replaced(
    world8: World, bad: bytes | str, caplog: pytest.LogCaptureFixture
) -> None:
    world8.abandon([tweet(n) for n in range(30)])
    cursor = world8.keys.cursor
    if bad == "a hash":
        world8.client.hset(cursor, "x", "y")
    else:
        world8.client.set(cursor, bad)
    summary = world8.run()
    assert 30 == summary.counts.processed
    assert not world8.pending()
    assert any("cursor" in record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert world8.client.type(cursor) in (b"string", b"none")


def test_a_monitor_resumed_past_its_lease_keeps_its_successors_cursor(world8: World) -> None:
    """Monitor A stalls between pages past its lease; B takes the lease over and stops part-way, saving its
    cursor; A resumes, sees the lease gone, and must not overwrite B's cursor with its own."""
    world8.abandon([tweet(n) for n in range(40)])
    successor: list[Any] = []

    def stall_once() -> bool:
        if not successor:
            time.sleep(1.3)  # past A's lease of 1 s
            successor.append(world8.run(LEASE_TTL_SEC=5, RECLAIM_PAGE_SIZE=10, CYCLE_MAX_MESSAGES=10))
            successor.append(world8.client.get(world8.keys.cursor))
        return False

    a = world8.cycle(LEASE_TTL_SEC=1, RECLAIM_PAGE_SIZE=5)
    summary = a.run(stall_once)
    assert summary.stopped_by is StopReason.LEASE_LOST, summary
    b_summary, b_cursor = successor
    assert b_summary.stopped_by is StopReason.CAP and b_cursor is not None
    assert b_cursor == world8.client.get(world8.keys.cursor)
