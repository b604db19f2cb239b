"""Several streams under one group: names or patterns in STREAM_NAME, swept fairly in one invocation, with
per-stream summaries and metrics; on one node and on a cluster."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from redis.cluster import RedisCluster

from handler.dev.host import APP_ROOT, FunctionsHost, completed
from handler.dev.latency_proxy import LatencyProxy
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import GROUP, MONITOR
from handler.errors import MonitorError, SettingsError, StreamOrGroupMissingError
from handler.monitor import Monitor
from handler.reclaim import streams as streams_module
from handler.reclaim.streams import StreamFinder, StreamsCycle
from handler.reclaim.summary import CycleSummary
from handler.settings import MonitorSettings
from handler.transport.client import Client
from handler.transport.connect import RedisConnection, connect
from tests.pipeline import abandon, create_group, expected_hash, hash_fields, tweet

SHARDS = [f"tweets_stream:{n}" for n in range(4)]


def settings_for(address: str, stream_name: str, **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        "REDIS_HOST": address,
        "REDIS_TLS": False,
        "MIN_IDLE_TIME_SEC": 10,
        "STREAM_NAME": stream_name,
        "STREAM_CONSUMER_GROUP_NAME": GROUP,
        "MONITORING_CONSUMER_NAME": MONITOR,
        **overrides,
    }
    return MonitorSettings(**values)


def shard_backlog(client: Client, sizes: list[int], first: int = 0) -> dict[str, list[list[bytes]]]:
    """Each shard gets its own tweets (ids never repeat across shards), read by a processor that crashed."""
    produced: dict[str, list[list[bytes]]] = {}
    number = first
    for stream, size in zip(SHARDS, sizes, strict=False):
        create_group(client, stream, GROUP)
        entries = [tweet(n) for n in range(number, number + size)]
        number += size
        abandon(client, stream, GROUP, entries)
        produced[stream] = entries
    return produced


def written(client: Client, produced: dict[str, list[list[bytes]]]) -> bool:
    return all(
        expected_hash(fields) == hash_fields(client, b"tweet:" + fields[3])
        for entries in produced.values()
        for fields in entries
    )


def test_stream_name_lists_names_and_patterns() -> None:
    settings = settings_for("127.0.0.1", " tweets_stream:0 , tweets_stream:1,other:* ")
    assert ("tweets_stream:0", "tweets_stream:1", "other:*") == settings.stream_names
    with pytest.raises(SettingsError, match="works on one stream"):
        _ = settings.single_stream
    with pytest.raises(ValueError, match="a stream name or pattern is empty"):
        settings_for("127.0.0.1", "a,,b")
    with pytest.raises(ValueError, match="DEAD_LETTER_STREAM names one dead-letter stream"):
        settings_for("127.0.0.1", "tweets_stream:*", DEAD_LETTER_STREAM="{tweets_stream:0}:dlq")


def test_a_pattern_sweeps_every_shard_in_one_invocation(redis_8: LocalRedis, client8: redis.Redis) -> None:
    produced = shard_backlog(client8, [300, 50, 0, 1200])
    client8.xadd("unrelated_stream", {"a": "b"})  # matches the pattern below, has no such group
    settings = settings_for(redis_8.address, "*tweets_stream*,*unrelated*")
    first = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert 1550 == first.counts.processed
    assert first.streams is not None
    # Every shard, but not the shards' own dead-letter streams, which the pattern matches too, nor the
    # unrelated stream without the group (one warning says so).
    assert sorted(SHARDS) == sorted(first.streams)
    assert [300, 50, 0, 1200] == [first.streams[name].counts.processed for name in SHARDS]
    assert "empty" == first.streams["tweets_stream:2"].stopped_by
    assert written(client8, produced)


def test_the_time_budget_is_shared_fairly(redis_8: LocalRedis, client8: redis.Redis) -> None:
    """Three shards with more than one budget's work each: each gets its share, whichever goes first."""
    shard_backlog(client8, [40_000, 40_000, 40_000])
    settings = settings_for(
        redis_8.address, ",".join(SHARDS[:3]), CYCLE_TIME_BUDGET_SEC=0.5, RECLAIM_PAGE_SIZE=500
    )
    cycle = StreamsCycle(RedisConnection(settings, connect(settings)), settings)
    for _ in range(2):
        summary = cycle.run()
        assert summary.streams is not None
        done = [summary.streams[name].counts.processed for name in SHARDS[:3]]
        assert min(done) > 0 and max(done) < 2 * sum(done) / 3, done  # no shard starved, none took it all
        assert "budget" == summary.stopped_by
    assert summary.duration_ms < 2000  # the shares add up to one budget (0.5 s), not three


def test_a_named_stream_without_the_group_fails_after_the_others_are_swept(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    produced = shard_backlog(client8, [100])
    settings = settings_for(redis_8.address, "tweets_stream:0,tweets_stream:missing")
    with pytest.raises(StreamOrGroupMissingError, match="tweets_stream:missing"):
        StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert written(client8, produced)


def test_the_host_gets_per_stream_summaries_and_metrics(redis_8: LocalRedis, client8: redis.Redis) -> None:
    shard_backlog(client8, [7, 3])
    env = environment_for(
        redis_8,
        STREAM_NAME="tweets_stream:*",
        STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR,
        MIN_IDLE_TIME_SEC="10",
    )
    host = FunctionsHost(env).start()
    try:
        answer = completed(host.invoke())
        metrics = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    assert 10 == answer["processed"]
    assert {"tweets_stream:0": 7, "tweets_stream:1": 3} == {
        name: summary["processed"] for name, summary in answer["streams"].items()
    }
    assert 'tweets_monitor_processed_entries_total{stream="tweets_stream:0"} 7.0' in metrics
    assert 'tweets_monitor_processed_entries_total{stream="tweets_stream:1"} 3.0' in metrics
    assert 'tweets_monitor_pending_entries{stream="tweets_stream:1"} 0.0' in metrics


def test_check_covers_every_stream_and_per_stream_commands_ask_for_one(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    shard_backlog(client8, [1, 1])
    env = environment_for(
        redis_8,
        STREAM_NAME="tweets_stream:*",
        STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR,
        MIN_IDLE_TIME_SEC="10",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "handler", *args]
        return subprocess.run(command, env=env, cwd=APP_ROOT, capture_output=True, text=True, timeout=60)

    check = cli("check")
    assert 0 == check.returncode, check.stdout
    for shard in SHARDS[:2]:
        assert f"PASS  stream and group: stream '{shard}' has group '{GROUP}'" in check.stdout
    for command in (["status"], ["reclaim", "--dry-run"], ["dead-letter", "list"]):
        done = cli(*command)
        assert 2 == done.returncode, command
        assert "this command works on one stream" in done.stderr
        assert "Traceback" not in done.stderr


def test_shards_spread_over_a_cluster_are_all_swept(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    produced = shard_backlog(cluster_client, [500, 500, 500, 500])
    masters = {redis_cluster.master_of(name).port for name in SHARDS}
    assert len(masters) > 1  # the shards live on different nodes: SCAN must visit each
    settings = settings_for(redis_cluster.address, "tweets_stream:*")
    summary = StreamsCycle(RedisConnection(settings), settings).run()
    assert 2000 == summary.counts.processed
    assert written(cluster_client, produced)
    done = subprocess.run(
        [sys.executable, "-m", "handler", "reclaim"],
        cwd=APP_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment_for(
            redis_cluster.masters[0],
            STREAM_NAME="tweets_stream:*",
            STREAM_CONSUMER_GROUP_NAME=GROUP,
            MONITORING_CONSUMER_NAME=MONITOR,
            MIN_IDLE_TIME_SEC="10",
        ),
    )
    assert sorted(SHARDS) == sorted(json.loads(done.stdout)["streams"])


def test_a_pattern_is_expanded_again_only_after_a_while(redis_8: LocalRedis, client8: redis.Redis) -> None:
    """SCAN walks every key: the expansion is remembered, and a new shard appears at the next rescan,
    which runs beside the callers (they keep the last expansion meanwhile)."""
    shard_backlog(client8, [1])
    settings = settings_for(redis_8.address, "tweets_stream:*")
    finder = StreamFinder(settings, rescan_after_sec=0.3)
    assert ["tweets_stream:0"] == finder.find(client8)
    create_group(client8, "tweets_stream:1", GROUP)
    assert ["tweets_stream:0"] == finder.find(client8)
    time.sleep(0.35)
    deadline = time.monotonic() + 5
    while finder.find(client8) != ["tweets_stream:0", "tweets_stream:1"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ["tweets_stream:0", "tweets_stream:1"] == finder.find(client8)


def test_a_pattern_that_matches_nothing_says_so(redis_8: LocalRedis, client8: redis.Redis) -> None:
    settings = settings_for(redis_8.address, "no_such_stream:*")
    summary = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert ("skipped", "no stream matches 'no_such_stream:*'") == (summary.stopped_by, summary.skipped)


def many_shards(client: Client, prefix: str, count: int, each: int) -> list[str]:
    """`count` streams with the group, each with `each` abandoned tweets (ids never repeat)."""
    streams = [f"{prefix}:{n:04d}" for n in range(count)]
    for index, stream in enumerate(streams):
        create_group(client, stream, GROUP)
        abandon(client, stream, GROUP, [tweet(index * each + n) for n in range(each)])
    return streams


def reached(summary: Any) -> set[str]:
    """The streams an invocation's cycle ran on (not those reported as not reached)."""
    assert summary.streams is not None
    return {
        name for name, one in summary.streams.items() if not (one.skipped or "").startswith("not reached")
    }


def test_more_streams_than_budget_slices_are_served_in_rotation(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """Far more streams than slices of MIN_SLICE_SEC in the budget: every invocation still makes progress,
    each stream it reaches gets a page, the next starts at the first stream not reached, and a stream not
    read is reported as not read (pending null), never as 0 pending."""
    streams = many_shards(client8, names["STREAM_NAME"], 400, 20)
    settings = settings_for(redis_8.address, names["STREAM_NAME"] + ":*", CYCLE_TIME_BUDGET_SEC=0.3)
    cycle = StreamsCycle(RedisConnection(settings, connect(settings)), settings)
    first = cycle.run()
    got = reached(first)
    assert got, first.log_line()  # progress in every invocation
    assert first.counts.processed == 20 * len(got)  # each stream reached got at least a page (its all)
    assert first.streams is not None
    missed = set(first.streams) - got
    assert missed, "every stream was reached: make the test's budget smaller"
    for name in missed:
        document = first.streams[name].as_dict()
        assert (None, "budget", "not reached: budget") == (
            document["pending"],
            document["stopped_by"],
            document["skipped"],
        ), document
    second = cycle.run()
    got_next = reached(second)
    # The second invocation starts at the first stream the first did not reach: it reaches only streams
    # the first missed, or all of them.
    assert got_next <= missed or missed <= got_next, (sorted(got_next)[:5], sorted(missed)[:5])
    served = got | got_next
    for _ in range(len(streams) // len(got) + 2):
        if len(served) == len(streams):
            break
        served |= reached(cycle.run())
    assert set(streams) == served
    assert 0 == sum(int(client8.xpending(stream, GROUP)["pending"]) for stream in streams)


def scrape(monitor: Monitor) -> str:
    assert monitor.metrics is not None
    return generate_latest(monitor.metrics.registry).decode()


def test_streams_that_are_gone_leave_the_metrics(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted stream's series (counters and gauges) are removed once discovery no longer finds it."""
    monkeypatch.setattr(streams_module, "RESCAN_AFTER_SEC", 0.0)
    prefix = names["STREAM_NAME"]
    kept, gone = many_shards(client8, prefix, 2, 5)
    monitor = Monitor.observed(settings_for(redis_8.address, prefix + ":*"))
    try:
        first = monitor.run_scheduled(lambda: False)
        assert isinstance(first, CycleSummary) and 10 == first.counts.processed
        assert f'stream="{gone}"' in scrape(monitor)
        client8.delete(gone)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            later = monitor.run_scheduled(lambda: False)
            assert isinstance(later, CycleSummary) and later.streams is not None
            if gone not in later.streams:
                break
            time.sleep(0.05)
        text = scrape(monitor)
    finally:
        monitor.close()
    assert f'stream="{kept}"' in text
    assert f'stream="{gone}"' not in text, [line for line in text.splitlines() if gone in line]


def test_streams_without_the_group_neither_starve_the_others_nor_fill_the_metrics(
    redis_8: LocalRedis,
    client8: redis.Redis,
    names: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hundreds of streams a pattern matches that lack the group (another pipeline's, or made on purpose):
    the stream with the group is swept in the first invocation, and the scrape makes no series and one
    warning for them all."""
    prefix = names["STREAM_NAME"]
    pipe = client8.pipeline(transaction=False)
    for n in range(300):
        pipe.xadd(f"{prefix}:other:{n:03d}", {"a": "b"})
    pipe.execute()
    (real,) = many_shards(client8, prefix + ":real", 1, 50)
    monitor = Monitor.observed(settings_for(redis_8.address, prefix + ":*", CYCLE_TIME_BUDGET_SEC=1.0))
    try:
        summary = monitor.run_scheduled(lambda: False)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            text = scrape(monitor)
    finally:
        monitor.close()
    assert isinstance(summary, CycleSummary) and summary.streams is not None
    assert 50 == summary.streams[real].counts.processed
    series = [line for line in text.splitlines() if f"{prefix}:other" in line]
    assert [] == series, series[:5]
    assert f'tweets_monitor_processed_entries_total{{stream="{real}"}} 50.0' in text
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert 1 == len(warnings), [record.getMessage()[:200] for record in warnings[:5]]
    assert "300" in warnings[0].getMessage()


def test_streams_without_the_group_are_one_line_not_a_row_each_in_the_answer(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The invocation's answer (the host's ReturnValue, the CLI's JSON) names the streams the monitor
    serves; streams a pattern matches without the group are counted in one warning, so hundreds of them do
    not make the answer hundreds of rows."""
    prefix = names["STREAM_NAME"]
    pipe = client8.pipeline(transaction=False)
    for n in range(300):
        pipe.xadd(f"{prefix}:other:{n:03d}", {"a": "b"})
    pipe.execute()
    (real,) = many_shards(client8, prefix + ":real", 1, 5)
    monitor = Monitor(settings_for(redis_8.address, prefix + ":*", CYCLE_TIME_BUDGET_SEC=2.0))
    try:
        with caplog.at_level(logging.WARNING):
            answers = [monitor.run_scheduled(lambda: False) for _ in range(2)]
    finally:
        monitor.close()
    for summary in answers:
        assert isinstance(summary, CycleSummary) and summary.streams is not None
        assert [real] == list(summary.streams), list(summary.streams)[:5]
        assert len(json.dumps(summary.as_dict())) < 2000
    said = [r.getMessage() for r in caplog.records if "no group" in r.getMessage()]
    assert 2 == len(said) and "300" in said[0], said[:3]


def test_a_pattern_takes_a_bounded_number_of_streams(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """Past 1,000 streams (MAX_STREAMS) the invocation fails with a message that says so, instead of
    serving nothing."""
    prefix = names["STREAM_NAME"]
    pipe = client8.pipeline(transaction=False)
    for n in range(1001):
        pipe.xadd(f"{prefix}:{n:04d}", {"a": "b"})
    pipe.execute()
    settings = settings_for(redis_8.address, prefix + ":*")
    with pytest.raises(MonitorError, match="more than the 1,000"):
        StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()


def test_the_scrape_reads_every_stream_in_a_few_round_trips(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """Behind 5 ms round trips, 100 streams' four gauges each are read pipelined, from the streams the
    invocations found (the scrape does not SCAN the keyspace again)."""
    prefix = names["STREAM_NAME"]
    many_shards(client8, prefix, 100, 1)
    pipe = client8.pipeline(transaction=False)
    for n in range(20_000):
        pipe.set(f"tweet-filler:{n}", "x")
    pipe.execute()
    proxy = LatencyProxy(redis_8.port, rtt_ms=5)
    try:
        monitor = Monitor.observed(settings_for(f"127.0.0.1:{proxy.port}", prefix + ":*"))
        try:
            assert isinstance(monitor.run_scheduled(lambda: False), CycleSummary)
            began = time.monotonic()
            text = scrape(monitor)
            took = time.monotonic() - began
        finally:
            monitor.close()
    finally:
        proxy.stop()
    assert 100 == sum(1 for line in text.splitlines() if line.startswith("tweets_monitor_pending_entries{"))
    assert took < 0.5, took


def test_a_pattern_is_expanded_again_off_the_invocations_clock(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind 5 ms round trips with 100,000 keys, SCAN takes about half a second: only the first
    invocation waits for it; later expansions happen beside the invocations, and a new stream is still
    picked up."""
    monkeypatch.setattr(streams_module, "RESCAN_AFTER_SEC", 0.0)
    prefix = names["STREAM_NAME"]
    many_shards(client8, prefix, 2, 1)
    pipe = client8.pipeline(transaction=False)
    for n in range(100_000):
        pipe.set(f"tweet-filler:{n}", "x")
    pipe.execute()
    proxy = LatencyProxy(redis_8.port, rtt_ms=5)
    try:
        settings = settings_for(f"127.0.0.1:{proxy.port}", prefix + ":*")
        connection = RedisConnection(settings)
        cycle = StreamsCycle(connection, settings)
        first = cycle.run()
        assert first.duration_ms > 400  # the first expansion is on the clock: nothing is known yet
        create_group(client8, f"{prefix}:new", GROUP)
        durations, found = [], False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not found:
            later = cycle.run()
            durations.append(later.duration_ms)
            found = later.streams is not None and f"{prefix}:new" in later.streams
        connection.close()
    finally:
        proxy.stop()
    assert found
    assert max(durations) < 300, durations
