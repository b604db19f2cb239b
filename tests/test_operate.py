"""Operating the monitor: status, metrics, JSON logs, dead-letter tools and retention, the
standalone runner, reclaim --dry-run, check, dead-consumer cleanup."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from handler.dev.demo import SEARCH_QUERIES
from handler.dev.host import APP_ROOT, FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, tweet_id
from handler.functions.host_files import APP_ROOT_VARIABLES, app_root, function_schedule
from handler.reclaim.consumers import prune_idle_consumers
from handler.runner import next_run
from tests import pipeline
from tests.pipeline import (
    age,
    command,
    create_group,
    dead_letters,
    pending_rows,
    set_deliveries,
    tweet,
    tweet_keys,
)

DEAD_LETTER = "{tweets_stream}:dead-letter"
NAMES = PIPELINE_NAMES


def env_for(server: LocalRedis, **settings: str) -> dict[str, str]:
    return environment_for(server, **{**NAMES, "MIN_IDLE_TIME_SEC": "10", **settings})


def cli(
    server: LocalRedis, *args: str, stdin: str | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handler", *args],
        env=env_for(server, **settings),
        cwd=APP_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def abandon(
    client: redis.Redis, entries: list[list[bytes]], consumer: str = "consumer-crashed"
) -> list[bytes]:
    return pipeline.abandon(client, STREAM, GROUP, entries, consumer)


@pytest.fixture
def group(client8: redis.Redis) -> redis.Redis:
    create_group(client8, STREAM, GROUP)
    return client8


def test_status_json_shows_the_group_per_consumer(redis_8: LocalRedis, group: redis.Redis) -> None:
    ids = abandon(group, [tweet(n) for n in range(30)], "consumer-a")
    set_deliveries(group, STREAM, GROUP, "consumer-a", ids[:1], 7)
    age(group, STREAM, GROUP, "consumer-a", ids, 90_000)
    abandon(group, [tweet(n) for n in range(30, 35)], "consumer-b")
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
    abandon(group, [tweet(n) for n in range(3)])
    done = cli(redis_8, "status")
    assert 0 == done.returncode, done.stderr
    assert "consumer-crashed" in done.stdout
    assert "3 pending" in done.stdout


def test_status_warns_when_the_dead_letter_stream_nears_its_bound(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    abandon(group, [[b"text", b"no id"] for _ in range(10)])
    assert 0 == cli(redis_8, "reclaim").returncode
    done = cli(redis_8, "status", DEAD_LETTER_MAXLEN="10")
    assert "warning:" in done.stderr
    assert "DEAD_LETTER_MAXLEN" in done.stderr


def test_dead_letter_retention_trims_approximately(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon(group, [[b"text", b"no id", b"n", b"%d" % n] for n in range(600)])
    done = cli(redis_8, "reclaim", DEAD_LETTER_MAXLEN="100")
    assert 600 == json.loads(done.stdout)["dead_lettered"]
    assert 100 <= group.xlen(DEAD_LETTER) < 600  # MAXLEN ~ trims whole nodes, never below the bound


def test_metrics_count_what_the_invocations_did(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon(group, [tweet(n) for n in range(4)] + [[b"text", b"no id"]])
    host = FunctionsHost(env_for(redis_8)).start()
    try:
        completed(host.invoke())
        completed(host.invoke())
        text = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    samples = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    by_stream = f'{{stream="{STREAM}"}}'
    assert 4 == samples["tweets_monitor_processed_entries_total" + by_stream]
    assert 1 == samples["tweets_monitor_dead_lettered_entries_total" + by_stream]
    assert 5 == samples["tweets_monitor_claimed_entries_total" + by_stream]
    assert 1 == samples['tweets_monitor_cycles_total{outcome="end"}']
    assert 1 == samples['tweets_monitor_cycles_total{outcome="empty"}']
    assert 2 == samples["tweets_monitor_cycle_duration_seconds_count"]
    assert 0 == samples["tweets_monitor_pending_entries" + by_stream]
    assert 1 == samples["tweets_monitor_dead_letter_length" + by_stream]


def test_json_log_lines_carry_the_summary(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon(group, [tweet(n) for n in range(2)])
    done = cli(redis_8, "reclaim", LOG_FORMAT="json")
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    (cycle_line,) = [line for line in lines if line["message"].startswith("reclaim cycle:")]
    assert json.loads(done.stdout) == cycle_line["summary"]
    assert {"time", "level", "logger", "invocation_id", "message"} <= cycle_line.keys()


def dead_lettered(client: redis.Redis, redis_8: LocalRedis, count: int) -> list[bytes]:
    """`count` poison entries (delivered 50 times) moved to the dead-letter stream by a real cycle."""
    ids = abandon(client, [[*tweet(n), b"text", b"\xffrepeated"] for n in range(count)])
    set_deliveries(client, STREAM, GROUP, "consumer-crashed", ids, 50)
    age(client, STREAM, GROUP, "consumer-crashed", ids, 60_000)
    assert 0 == cli(redis_8, "reclaim").returncode
    return ids


def test_dead_letter_list_and_show(redis_8: LocalRedis, group: redis.Redis) -> None:
    ids = dead_lettered(group, redis_8, 3)
    listed = json.loads(cli(redis_8, "dead-letter", "list", "--json").stdout)
    assert [i.decode() for i in ids] == [row["original-id"] for row in listed]
    assert {"max-deliveries"} == {row["reason"] for row in listed}
    shown = json.loads(cli(redis_8, "dead-letter", "show", listed[0]["id"], "--json").stdout)
    assert "1394000000000000000" == shown["original"]["id"]
    assert 1 == cli(redis_8, "dead-letter", "show", "1-1").returncode


def test_replay_puts_the_original_fields_back_atomically(redis_8: LocalRedis, group: redis.Redis) -> None:
    dead_lettered(group, redis_8, 250)
    before = group.xlen(STREAM)
    assert "would replay 250" in cli(redis_8, "dead-letter", "replay", "--all", "--dry-run").stdout
    assert 250 == group.xlen(DEAD_LETTER)
    done = cli(redis_8, "dead-letter", "replay", "--all")
    assert "replayed 250 of 250" in done.stdout, done.stderr
    assert 0 == group.xlen(DEAD_LETTER)
    replayed = command(group, "XRANGE", STREAM, "-", "+")[before:]
    assert [[*tweet(n), b"text", b"\xffrepeated"] for n in range(250)] == [list(f) for _, f in replayed]


def test_purge_asks_unless_yes(redis_8: LocalRedis, group: redis.Redis) -> None:
    dead_lettered(group, redis_8, 4)
    first = dead_letters(group, DEAD_LETTER)
    assert 1 == cli(redis_8, "dead-letter", "purge", "--all").returncode  # nobody to answer: refused
    assert 4 == group.xlen(DEAD_LETTER)
    ids = [e[0] for e in command(group, "XRANGE", DEAD_LETTER, "-", "+")][:2]
    assert 0 == cli(redis_8, "dead-letter", "purge", *[i.decode() for i in ids], "--yes").returncode
    assert 2 == group.xlen(DEAD_LETTER)
    assert 0 == cli(redis_8, "dead-letter", "purge", "--all", "--yes").returncode
    assert (0, 4) == (group.xlen(DEAD_LETTER), len(first))
    assert 2 == cli(redis_8, "dead-letter", "purge").returncode  # neither ids nor --all


def test_reclaim_dry_run_changes_nothing(redis_8: LocalRedis, group: redis.Redis) -> None:
    group.set(b"tweet:1394000000000000002", b"a string")
    ids = abandon(group, [tweet(0), tweet(1), tweet(2), [b"text", b"no id"], tweet(4)])
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


def test_check_passes_on_a_ready_deployment_and_names_what_fails(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    done = cli(redis_8, "check")
    assert 0 == done.returncode, done.stdout
    # settings, connectivity, replicas, authentication, server version, stream and group, dead-letter
    # stream, permissions; and a WARN: no scheduled cycle recorded yet (the heartbeat)
    assert 8 == done.stdout.count("PASS"), done.stdout
    assert 1 == done.stdout.count("WARN  last completed cycle"), done.stdout
    missing = cli(redis_8, "check", STREAM_CONSUMER_GROUP_NAME="no_such_group")
    assert 1 == missing.returncode
    assert "FAIL  stream and group: no group 'no_such_group'" in missing.stdout
    unreachable = cli(redis_8, "check", REDIS_HOST=f"127.0.0.1:{free_port()}", REDIS_TIMEOUT_SEC="1")
    assert 1 == unreachable.returncode
    assert "FAIL  connectivity" in unreachable.stdout
    command(group, "ACL", "SETUSER", "narrow", "on", ">pw", "~*", "+@all", "-hset")
    narrow = cli(redis_8, "check", REDIS_USERNAME="narrow", REDIS_PASSWORD="pw")
    assert 1 == narrow.returncode
    assert "FAIL  permissions: 'narrow' is not allowed: HSET" in narrow.stdout


def test_only_idle_consumers_with_nothing_pending_are_removed(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    abandon(group, [tweet(1)], "consumer-with-work")
    for name in ("consumer-old-1", "consumer-old-2", "monitoring_app"):
        command(group, "XGROUP", "CREATECONSUMER", STREAM, GROUP, name)
    time.sleep(2.5)
    command(group, "XGROUP", "CREATECONSUMER", STREAM, GROUP, "consumer-fresh")
    assert ["consumer-old-1", "consumer-old-2"] == sorted(
        prune_idle_consumers(group, STREAM, GROUP, 2.0, keep=["monitoring_app"], dry_run=True)
    )
    done = cli(redis_8, "consumers", "prune", "--idle-sec", "2")
    assert "removed 2 consumers" in done.stdout
    left = {c["name"] for c in group.xinfo_consumers(STREAM, GROUP)}
    assert {b"consumer-with-work", b"monitoring_app", b"consumer-fresh"} == left
    assert 1 == len(pending_rows(group, STREAM, GROUP))  # the pending entry kept its owner


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("*/20 * * * * *", "2026-11-27T12:00:05+00:00", "2026-11-27T12:00:20+00:00"),
        ("*/20 * * * * *", "2026-11-27T12:00:40+00:00", "2026-11-27T12:01:00+00:00"),
        ("0 */5 * * * *", "2026-11-27T12:01:00+00:00", "2026-11-27T12:05:00+00:00"),  # seconds come first
        ("30 0 9 * * *", "2026-11-27T12:00:00+00:00", "2026-11-28T09:00:30+00:00"),
        ("*/10 * * * *", "2026-11-27T12:01:00+00:00", "2026-11-27T12:10:00+00:00"),  # 5 fields: minutes first
    ],
)
def test_ncrontab_schedules_put_seconds_first(schedule: str, after: str, expected: str) -> None:
    assert datetime.fromisoformat(expected) == next_run(schedule, datetime.fromisoformat(after))


def test_the_schedule_follows_website_time_zone() -> None:
    after = datetime(2026, 11, 27, 8, 30, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    due = next_run("0 0 9 * * *", after)  # 09:00 in New York, not in UTC
    assert datetime(2026, 11, 27, 14, 0, tzinfo=UTC) == due.astimezone(UTC)


def test_run_uses_function_json_schedule_from_the_app_root() -> None:
    assert json.loads((APP_ROOT / "monitor" / "function.json").read_text())["bindings"][0]["schedule"] == (
        function_schedule(APP_ROOT)
    )


@pytest.mark.parametrize("variable", APP_ROOT_VARIABLES)
def test_the_app_root_is_named_by_the_host_or_the_launcher(variable: str, tmp_path: Path) -> None:
    assert tmp_path == app_root({variable: str(tmp_path)})
    assert Path.cwd() == app_root({})


def test_run_without_function_json_exits_2_naming_the_path(
    redis_8: LocalRedis, group: redis.Redis, tmp_path: Path
) -> None:
    """No built-in copy of the schedule: a `run` that cannot find the timer says where it looked."""
    done = subprocess.run(
        [sys.executable, "-m", "handler", "run"], env={**env_for(redis_8), "PYTHONPATH": str(APP_ROOT)},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert 2 == done.returncode, done.stderr
    assert str(tmp_path / "monitor" / "function.json") in done.stderr
    assert "Traceback" not in done.stderr


def test_run_once_for_cron(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon(group, [tweet(n) for n in range(6)])
    done = cli(redis_8, "run", "--once", METRICS_ADDRESS=f"127.0.0.1:{free_port()}")
    assert 0 == done.returncode, done.stderr
    assert 6 == len(tweet_keys(group))


def test_run_cycles_on_schedule_serves_metrics_and_exits_0_on_sigterm(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    abandon(group, [tweet(n) for n in range(5)])
    port = free_port()
    env = env_for(redis_8, METRICS_ADDRESS=f"127.0.0.1:{port}")
    process = subprocess.Popen(
        [sys.executable, "-m", "handler", "run", "--schedule", "* * * * * *"],
        env=env,
        cwd=APP_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as answer:
                    text = answer.read().decode()
                if 'tweets_monitor_cycles_total{outcome="empty"} 1.0' in text:
                    break  # the second cycle, one second after the first, found nothing left
            except OSError:
                pass
            time.sleep(0.2)
        assert f'tweets_monitor_processed_entries_total{{stream="{STREAM}"}} 5.0' in text
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert 0 == process.returncode, err
    assert err.count("reclaim cycle:") >= 2  # it kept cycling, one second apart
    assert 5 == len(tweet_keys(group))


def test_search_finds_what_the_monitor_reclaimed(redis_search: LocalRedis) -> None:
    """The pipeline's seven example FT.SEARCH queries find the reclaimed tweets like the processor's."""
    client = redis_search.client()
    client.flushall()
    command(
        client,
        "FT.CREATE",
        "tweets-index",
        "ON",
        "HASH",
        "PREFIX",
        "1",
        "tweet:",
        "SCHEMA",
        "id",
        "TEXT",
        "user",
        "TEXT",
        "text",
        "TEXT",
        "location",
        "TEXT",
        "hashtags",
        "TAG",
    )
    create_group(client, STREAM, GROUP)
    samples = {
        "t1": tweet(
            1, user="john", location="Mumbai, India", text="hello from Mumbai", hashtags="covid19,Medicine"
        ),
        "t2": tweet(2, user="maria", location="London", text="world news today", hashtags="MedTech"),
        "t3": tweet(3, user="joanna", location="Berlin", text="nothing to see", hashtags=""),
        "t4": tweet(4, user="priya", location="New Delhi, India", text="just saying hi", hashtags="cov19"),
    }
    abandon(client, list(samples.values()))
    env = environment_for(redis_search, **{**NAMES, "MIN_IDLE_TIME_SEC": "10"})
    host = FunctionsHost(env).start()
    try:
        assert 4 == completed(host.invoke())["processed"]
    finally:
        host.stop()
    # The control: the same tweets as the processor writes them (HSET of the entry's fields), other ids.
    for number, fields in enumerate(samples.values(), start=101):
        values = {
            k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=True) if k != b"id"
        }
        control = tweet(number, **values)
        command(client, "HSET", b"tweet:" + control[3], *control)
    name_of = {b"tweet:" + fields[3]: name for name, fields in samples.items()}
    control_of = {b"tweet:" + tweet_id(n): name for n, name in enumerate(samples, start=101)}
    assert 7 == len(SEARCH_QUERIES)  # the pipeline's seven
    for query in SEARCH_QUERIES:
        found: Any = command(client, "FT.SEARCH", "tweets-index", query, "NOCONTENT", "LIMIT", 0, 100)
        reclaimed = {name_of[key] for key in found[1:] if key in name_of}
        written_by_processor = {control_of[key] for key in found[1:] if key in control_of}
        assert reclaimed, query  # every query finds reclaimed tweets...
        assert written_by_processor == reclaimed, query  # ...exactly as it finds the processor's
    done = subprocess.run(
        [sys.executable, "-m", "handler", "status", "--json"],
        env=env,
        cwd=APP_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 8 == json.loads(done.stdout)["search_documents"]
    client.close()
