"""The heartbeat: every cycle the timer or `run` completes records Redis's time in the stream's slot;
`status`, `check` and the metrics read it, so a stopped timer is told apart from a monitor with nothing to do.
A manual `reclaim` records nothing. Real servers, the handler under the host harness, real CLI processes."""

from __future__ import annotations

import json

import redis

from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, free_port
from handler.keys import hash_tag_of
from handler.reclaim import heartbeat
from handler.reclaim.streams import StreamsCycle
from handler.transport.connect import RedisConnection
from tests.acl import ACL_RULE
from tests.cli import cli, env_for
from tests.conftest import settings_for
from tests.pipeline import abandon, command, create_group, tweet

MICROS = 1_000_000


def heartbeat_key(names: dict[str, str], stream: str | None = None) -> str:
    tag = hash_tag_of(stream or names["STREAM_NAME"])
    return f"{tag}:last-cycle:{names['STREAM_CONSUMER_GROUP_NAME']}"


def redis_micros(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * MICROS + int(micros)


def test_a_timer_invocation_records_the_time_even_with_nothing_to_do(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    create_group(client8, names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
    host = FunctionsHost(env_for(redis_8, names)).start()
    try:
        before = redis_micros(client8)
        summary = completed(host.invoke())
        after = redis_micros(client8)
        metrics = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    assert 0 == summary["pending"]  # an empty cycle
    recorded = int(client8.get(heartbeat_key(names)) or 0)
    assert before <= recorded <= after
    gauge = [
        line for line in metrics.splitlines() if line.startswith("tweets_monitor_seconds_since_last_cycle{")
    ]
    assert len(gauge) == 1 and f'stream="{names["STREAM_NAME"]}"' in gauge[0], gauge
    assert 0 <= float(gauge[0].rsplit(" ", 1)[1]) < 10


def test_the_heartbeat_never_expires(client8: redis.Redis, names: dict[str, str]) -> None:
    """A stopped timer must read as stopped however long ago it stopped: a heartbeat with a TTL would read,
    once expired, as a monitor that never ran a cycle."""
    key = heartbeat_key(names)
    before = redis_micros(client8)
    heartbeat.record(client8, key)
    assert -1 == client8.ttl(key)
    assert before <= int(client8.get(key) or 0) <= redis_micros(client8)
    age = heartbeat.seconds_since(client8, key)
    assert age is not None and 0 <= age < 10


def test_a_manual_reclaim_records_nothing_and_run_once_does(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    create_group(client8, names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
    abandon(client8, names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"], [tweet(n) for n in range(3)])
    env = env_for(redis_8, names, METRICS_ADDRESS=f"127.0.0.1:{free_port()}")
    assert 0 == cli(env, "reclaim").returncode
    assert client8.get(heartbeat_key(names)) is None
    done = cli(env, "run", "--once")
    assert 0 == done.returncode, done.stderr
    assert client8.get(heartbeat_key(names)) is not None


def test_status_and_check_tell_a_stopped_timer_apart(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    create_group(client8, names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
    env = env_for(redis_8, names, SWEEP_STALE_AFTER_SEC="300")

    never = cli(env, "check")
    line = next(x for x in never.stdout.splitlines() if "last completed cycle" in x)
    assert line.startswith("WARN") and 0 == never.returncode, never.stdout
    assert json.loads(cli(env, "status", "--json").stdout)["last_cycle_age_sec"] is None

    client8.set(heartbeat_key(names), redis_micros(client8) - 1000 * MICROS)  # the timer stopped 1,000 s ago
    stale = cli(env, "check")
    line = next(x for x in stale.stdout.splitlines() if "last completed cycle" in x)
    assert line.startswith("FAIL") and "SWEEP_STALE_AFTER_SEC" in line and 1 == stale.returncode, stale.stdout
    status = cli(env, "status", "--json")
    age = json.loads(status.stdout)["last_cycle_age_sec"]
    assert 1000 <= age < 1010, status.stdout
    assert "is the timer still running" in json.dumps(json.loads(status.stdout)["warnings"])

    client8.set(heartbeat_key(names), redis_micros(client8) - 5 * MICROS)
    fresh = cli(env, "check")
    line = next(x for x in fresh.stdout.splitlines() if "last completed cycle" in x)
    assert line.startswith("PASS") and 0 == fresh.returncode, fresh.stdout


def test_each_stream_of_several_records_its_own_heartbeat(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    streams = [names["STREAM_NAME"] + ":0", names["STREAM_NAME"] + ":1"]
    for stream in streams:
        create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    host = FunctionsHost(env_for(redis_8, {**names, "STREAM_NAME": names["STREAM_NAME"] + ":*"})).start()
    try:
        completed(host.invoke())
    finally:
        host.stop()
    assert all(client8.get(heartbeat_key(names, stream)) is not None for stream in streams)


def test_the_documented_acl_rule_allows_the_heartbeat(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    rule = ACL_RULE.replace("tweets_stream", stream).format(password="hb-secret")
    user = "hb-" + stream[-6:]
    command(client8, "ACL", "SETUSER", user, "reset", *rule.split())
    host = FunctionsHost(env_for(redis_8, names, REDIS_USERNAME=user, REDIS_PASSWORD="hb-secret")).start()
    try:
        completed(host.invoke())
    finally:
        host.stop()
    assert "heartbeat" not in host.stderr, host.stderr[-2000:]
    assert client8.get(heartbeat_key(names)) is not None


def test_only_the_streams_an_invocation_reached_get_the_heartbeat_and_check_names_the_others(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """Too many streams for one invocation: the heartbeat is recorded for the streams it reached only, so
    `check` fails for a stream the invocations do not reach instead of reporting it served."""
    prefix, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    streams = [f"{prefix}:{n:03d}" for n in range(300)]
    for index, stream in enumerate(streams):
        create_group(client8, stream, group)
        abandon(client8, stream, group, [tweet(index * 20 + n) for n in range(20)])
        client8.set(heartbeat_key(names, stream), redis_micros(client8) - 1000 * MICROS)  # long stopped
    env = env_for(redis_8, {**names, "STREAM_NAME": prefix + ":*"}, CYCLE_TIME_BUDGET_SEC="0.3")
    settings = settings_for(redis_8, {**names, "STREAM_NAME": prefix + ":*"}, CYCLE_TIME_BUDGET_SEC=0.3)
    summary = StreamsCycle(RedisConnection(settings), settings).run_scheduled().as_dict()
    served = {name for name, one in summary["streams"].items() if one["processed"]}
    assert served and len(served) < len(streams), len(served)
    fresh = {
        stream
        for stream in streams
        if redis_micros(client8) - int(client8.get(heartbeat_key(names, stream)) or 0) < 100 * MICROS
    }
    assert served == fresh
    check = cli({**env, "SWEEP_STALE_AFTER_SEC": "300"}, "check")
    stale = [line for line in check.stdout.splitlines() if "last completed cycle" in line and "FAIL" in line]
    assert len(streams) - len(served) == len(stale), check.stdout[-3000:]
    assert 1 == check.returncode
