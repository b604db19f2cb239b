"""`reclaim --dry-run` predicts what the next cycle does: the same walk (pages, cap, cursor), the same
decisions, on a backlog that mixes every kind of entry; it changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, STREAM
from handler.keys import TWEET_KEY_PREFIX, StreamKeys, raw_name
from handler.monitor import CycleFailed, Monitor
from handler.ops.dry_run import dry_run
from handler.reclaim.rules import stream_field
from handler.transport.connect import connect
from tests.cli import cli
from tests.conftest import settings_for
from tests.pipeline import (
    abandon,
    abandon_in_pipeline,
    pending_rows,
    set_deliveries,
    tweet,
    tweet_keys,
)

# Small pages and a cap below the backlog, so the walk's page boundaries and its cap decide the outcome.
WALK = {"RECLAIM_PAGE_SIZE": 7, "CYCLE_MAX_MESSAGES": 40, "MAX_DELIVERIES": 5}


def mixed_backlog(client: redis.Redis, stream: str, group: str) -> None:
    """Idle tweets with live ones (not idle yet), deleted, poison (delivered too often), id-less entries
    and a tweet whose key holds another type, interleaved through the pending list."""
    for block in range(6):
        base = block * 100
        idle = abandon(client, stream, group, [tweet(base + n) for n in range(5)])
        abandon(client, stream, group, [tweet(base + 50 + n) for n in range(3)], "consumer-live", idle_ms=0)
        odd = abandon(client, stream, group, [[b"text", b"no id"], tweet(base + 90), tweet(base + 91)])
        set_deliveries(client, stream, group, "consumer-crashed", [odd[1]], 9)
        client.xdel(stream, idle[block % 5])
    client.set(TWEET_KEY_PREFIX + (stream_field(tweet(1), b"id") or b""), b"a string")


def prediction(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "claimed": report["would_claim"],
        "processed": report["would_write"],
        "deleted": report["would_acknowledge_deleted"],
        "dead_lettered": sum(report["would_dead_letter"].values()),
    }


def outcome(summary: dict[str, Any]) -> dict[str, Any]:
    return {name: summary[name] for name in ("claimed", "processed", "deleted", "dead_lettered")}


@pytest.mark.parametrize(
    "cursor", [None, b"not a stream id", ["a", "list"]], ids=["none", "malformed", "list"]
)
def test_the_dry_run_predicts_what_the_cycle_then_does(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], cursor: Any
) -> None:
    settings = settings_for(redis_8, names, **WALK)
    keys = StreamKeys.from_settings(settings)
    client8.xgroup_create(keys.stream, keys.group, "$", mkstream=True)
    mixed_backlog(client8, keys.stream, keys.group)
    if isinstance(cursor, bytes):
        client8.set(raw_name(keys.cursor), cursor)
    elif cursor is not None:
        client8.rpush(raw_name(keys.cursor), *cursor)  # somebody's key of another type
    before = pending_rows(client8, keys.stream, keys.group)

    report = dry_run(connect(settings), settings).as_dict()
    assert [r[:2] + r[3:] for r in before] == [
        r[:2] + r[3:] for r in pending_rows(client8, keys.stream, keys.group)
    ]

    summary = Monitor(settings).run_once(lambda: False)
    assert not isinstance(summary, CycleFailed), summary
    assert outcome(summary.as_dict()) == prediction(report)
    assert summary.pages == report["pages"]


def test_reclaim_dry_run_changes_nothing(redis_8: LocalRedis, group: redis.Redis) -> None:
    group.set(b"tweet:1394000000000000002", b"a string")
    ids = abandon_in_pipeline(group, [tweet(0), tweet(1), tweet(2), [b"text", b"no id"], tweet(4)])
    group.xdel(STREAM, ids[4])
    rows_before = pending_rows(group, STREAM, GROUP)
    done = cli(redis_8, "reclaim", "--dry-run")
    report = json.loads(done.stdout)
    assert (5, 4, 2, 1) == (
        report["pending"],
        report["would_claim"],
        report["would_write"],
        report["would_acknowledge_deleted"],
    )
    assert {"missing-id": 1, "write-failed": 1} == report["would_dead_letter"]
    after = pending_rows(group, STREAM, GROUP)
    assert [(r[0], r[1], r[3]) for r in rows_before] == [(r[0], r[1], r[3]) for r in after]  # owners, counts
    assert all(a[2] >= b[2] for a, b in zip(after, rows_before, strict=True))  # nobody touched them
    assert {b"tweet:1394000000000000002"} == tweet_keys(group)


def test_a_budget_shorter_than_any_page_is_predicted_as_the_one_page_every_cycle_claims(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """The budget is spent before the first page is read: the cycle claims that page all the same (every
    invocation claims one), and the dry run says so rather than predicting nothing."""
    settings = settings_for(redis_8, names, RECLAIM_PAGE_SIZE=7, CYCLE_TIME_BUDGET_SEC=1e-6)
    keys = StreamKeys.from_settings(settings)
    client8.xgroup_create(keys.stream, keys.group, "$", mkstream=True)
    abandon(client8, keys.stream, keys.group, [tweet(n) for n in range(20)])
    report = dry_run(connect(settings), settings).as_dict()
    summary = Monitor(settings).run_once(lambda: False)
    assert not isinstance(summary, CycleFailed), summary
    assert (1, 7) == (summary.pages, summary.counts.claimed)
    assert (1, 7) == (report["pages"], report["would_claim"])
