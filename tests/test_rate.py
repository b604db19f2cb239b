"""RECLAIM_MAX_RATE: the pacing logic on a clock the test moves (every ten-second window within a tenth of
the cap), and real cycles on a real server held to the cap, one stream and several sharing it."""

from __future__ import annotations

import pytest

from handler.reclaim.rate import ClaimPacer
from handler.reclaim.streams import StreamsCycle
from handler.transport.connect import RedisConnection, connect
from tests.conftest import settings_for
from tests.pipeline import abandon, create_group, tweet
from tests.world import World

WINDOW_SEC = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def paced_claims(rate: float, page_size: int, seconds: float, page_sec: float) -> list[tuple[float, int]]:
    """(time, entries) of every page a walker hands out for `seconds`, each page taking `page_sec`."""
    clock = Clock()
    pacer = ClaimPacer(rate, clock.time, clock.sleep)
    size = pacer.page_size(page_size)
    claims = []
    while clock.now < seconds:
        pacer.wait()
        claims.append((clock.now, size))
        pacer.handed_out(size)
        clock.now += page_sec
    return claims


@pytest.mark.parametrize("rate", [3, 40, 1000, 2500, 60_000])
@pytest.mark.parametrize("page_sec", [0.0, 0.002, 0.05])
def test_every_ten_second_window_stays_within_a_tenth_of_the_cap(rate: float, page_sec: float) -> None:
    claims = paced_claims(rate, 2000, 60, page_sec)
    size = ClaimPacer(rate).page_size(2000)
    reachable = min(rate, size / page_sec) if page_sec else rate  # a cap is not a floor
    starts = [n * 0.1 for n in range(int((60 - WINDOW_SEC) / 0.1))]
    for start in starts:
        claimed = sum(n for t, n in claims if start <= t < start + WINDOW_SEC)
        assert 0.9 * reachable * WINDOW_SEC <= claimed <= 1.1 * rate * WINDOW_SEC, (start, claimed)


def test_no_cap_changes_nothing() -> None:
    pacer = ClaimPacer(0)
    assert 2000 == pacer.page_size(2000)
    pacer.handed_out(2000)
    assert 0 == pacer.due_in()


def test_a_capped_cycle_claims_at_the_cap(world8: World) -> None:
    world8.abandon([tweet(n) for n in range(2000)])
    summary = world8.run(RECLAIM_MAX_RATE=500, CYCLE_TIME_BUDGET_SEC=30)
    assert 2000 == summary.counts.processed
    pages_ahead = 500 / 4  # the first page goes at once
    assert summary.duration_ms / 1000 >= 0.9 * (2000 - pages_ahead) / 500, summary


def test_several_streams_share_one_cap(world8: World) -> None:
    streams = [world8.stream + ":a", world8.stream + ":b"]
    for stream in streams:
        create_group(world8.client, stream, world8.group)
        abandon(world8.client, stream, world8.group, [tweet(n) for n in range(800)])
    settings = settings_for(
        world8.server,
        {**world8.names, "STREAM_NAME": world8.stream + ":*"},
        RECLAIM_MAX_RATE=400,
        CYCLE_TIME_BUDGET_SEC=30,
    )
    monitor = connect(settings)
    try:
        summary = StreamsCycle(RedisConnection(settings, monitor), settings).run()
    finally:
        monitor.close()
    assert 1600 == sum(s.counts.processed for s in (summary.streams or {}).values())
    assert summary.duration_ms / 1000 >= 0.9 * (1600 - 100) / 400, summary


def test_the_budget_still_ends_a_capped_cycle(world8: World) -> None:
    world8.abandon([tweet(n) for n in range(2000)])
    summary = world8.run(RECLAIM_MAX_RATE=100, CYCLE_TIME_BUDGET_SEC=2)
    assert summary.counts.processed <= 1.1 * 100 * 2 + 25
    assert summary.duration_ms <= 3000, summary
