"""`status`: the group at a glance (pending per consumer, dead letters, the last refusal), as JSON and for
people."""

from __future__ import annotations

import json

import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, STREAM
from tests.cli import cli
from tests.pipeline import (
    abandon_in_pipeline,
    age,
    command,
    set_deliveries,
    tweet,
)


def test_status_json_shows_the_group_per_consumer(redis_8: LocalRedis, group: redis.Redis) -> None:
    ids = abandon_in_pipeline(group, [tweet(n) for n in range(30)], "consumer-a")
    set_deliveries(group, STREAM, GROUP, "consumer-a", ids[:1], 7)
    age(group, STREAM, GROUP, "consumer-a", ids, 90_000)
    abandon_in_pipeline(group, [tweet(n) for n in range(30, 35)], "consumer-b")
    command(group, "XGROUP", "CREATECONSUMER", STREAM, GROUP, "consumer-idle")
    done = cli(redis_8, "status", "--json")
    assert 0 == done.returncode, done.stderr
    status = json.loads(done.stdout)
    assert 35 == status["pending"]
    consumers = {c["name"]: c for c in status["consumers"]}
    assert (30, 7) == (consumers["consumer-a"]["pending"], consumers["consumer-a"]["highest_deliveries"])
    assert consumers["consumer-a"]["oldest_pending_idle_ms"] >= 90_000
    assert 5 == consumers["consumer-b"]["pending"]
    assert ["consumer-idle"] == status["idle_consumers_without_pending"]
    assert 0 == status["lag"]  # Redis 8.2 reports it
    assert (0, None) == (status["dead_letter_length"], status["search_documents"])


def test_status_table_for_people(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon_in_pipeline(group, [tweet(n) for n in range(3)])
    done = cli(redis_8, "status")
    assert 0 == done.returncode, done.stderr
    assert "consumer-crashed" in done.stdout
    assert "3 pending" in done.stdout


def test_status_warns_when_the_dead_letter_stream_nears_its_bound(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    abandon_in_pipeline(group, [[b"text", b"no id"] for _ in range(10)])
    assert 0 == cli(redis_8, "reclaim").returncode
    done = cli(redis_8, "status", DEAD_LETTER_MAXLEN="10")
    assert "warning:" in done.stderr
    assert "DEAD_LETTER_MAXLEN" in done.stderr


def test_status_names_a_missing_stream(redis_8: LocalRedis) -> None:
    done = cli(redis_8, "status", STREAM_NAME="no_such_stream")
    assert 1 == done.returncode
    assert "stream 'no_such_stream' does not exist" in done.stderr
    assert "no such key" not in done.stderr


def test_status_leaves_out_a_search_index_that_is_not_there(redis_8: LocalRedis, group: redis.Redis) -> None:
    done = cli(redis_8, "status")
    assert 0 == done.returncode, done.stderr
    assert "tweets-index" not in done.stdout


def test_a_warning_piped_stays_on_one_line(redis_8: LocalRedis, group: redis.Redis) -> None:
    done = cli(redis_8, "status")
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert [
        "warning: no scheduled cycle has been recorded yet (the timer, or `run`, records each one)"
    ] == warnings
