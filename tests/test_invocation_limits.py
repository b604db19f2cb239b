"""What ends an invocation: CYCLE_MAX_MESSAGES shared by its streams, CYCLE_TIME_BUDGET_SEC (no page claimed
that could not finish, and pages refused said as `budget`), and a stop request (nothing more claimed)."""

from __future__ import annotations

import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, MONITOR, PIPELINE_NAMES, STREAM
from handler.reclaim.streams import StreamsCycle
from handler.transport.connect import RedisConnection, connect
from tests.conftest import settings_for
from tests.pipeline import (
    abandon,
    create_group,
    pending_rows,
    tweet,
)
from tests.test_streams import SHARDS, shard_backlog
from tests.test_streams import settings_for as streams_settings


def test_the_cap_shared_by_several_streams_stops_with_cap(redis_8: LocalRedis, client8: redis.Redis) -> None:
    shard_backlog(client8, [300, 300])
    settings = streams_settings(
        redis_8.address, ",".join(SHARDS[:2]), CYCLE_MAX_MESSAGES=100, RECLAIM_PAGE_SIZE=50
    )
    cycle = StreamsCycle(RedisConnection(settings, connect(settings)), settings)
    for _ in range(3):  # whichever stream goes first uses the whole cap
        summary = cycle.run()
        assert (100, "cap") == (summary.counts.processed, summary.stopped_by)


def test_a_stop_request_claims_nothing_more_in_the_streams_left(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    shard_backlog(client8, [100, 100, 100])
    settings = streams_settings(redis_8.address, ",".join(SHARDS[:3]), RECLAIM_PAGE_SIZE=10)
    claimed: list[bool] = []

    def stop_after_the_first_claim() -> bool:
        """SIGTERM arrives once the monitor has claimed its first page (latched, as a signal is)."""
        if not claimed:
            owners = [row[1] for shard in SHARDS[:3] for row in pending_rows(client8, shard, GROUP)]
            if MONITOR.encode() in owners:
                claimed.append(True)
        return bool(claimed)

    summary = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run(
        stop_after_the_first_claim
    )
    assert summary.streams is not None
    first, *left = sorted((s.counts.claimed for s in summary.streams.values()), reverse=True)
    assert first > 0  # the pages in hand in the first stream are finished
    assert [0, 0] == left  # nothing in the two streams left
    assert "signal" == summary.stopped_by


def test_pages_refused_by_the_budget_say_budget_and_none_is_claimed_before_a_page_time_is_known(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """Four pages, each taking longer than the whole budget: the first is claimed (every invocation does
    one), the others wait for its time, are refused, and the cycle says `budget`, not `end`."""
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [tweet(n, text="x" * 8000) for n in range(4000)])
    settings = settings_for(redis_8, PIPELINE_NAMES, CYCLE_TIME_BUDGET_SEC=0.01, RECLAIM_PAGE_SIZE=1000)
    summary = StreamsCycle(RedisConnection(settings), settings).run()
    assert ("budget", 1000) == (summary.stopped_by, summary.counts.claimed)
    again = StreamsCycle(RedisConnection(settings), settings).run()
    assert 1000 == again.counts.claimed  # the refused pages come next, not skipped
