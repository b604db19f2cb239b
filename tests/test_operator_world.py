"""The operator's world: a scheduler that keeps going, state keys that cannot stop the monitor for good,
housekeeping that never fails an invocation, a `check` that reports instead of crashing, a replay that will
not feed a group that is gone, and settings that cannot work refused at start. Real servers and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.host import APP_ROOT, FunctionsHost, completed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.redis_binaries import BINARIES
from handler.functions.host_files import budget_warning, function_timeout
from handler.reclaim.summary import StopReason
from handler.settings import MAX_DEAD_LETTER_MAXLEN
from tests import pipeline
from tests.acl import ACL_RULE
from tests.pipeline import command, create_group, dead_letters, tweet, tweet_keys
from tests.world import PROCESSOR, World

BUILT_IN = {
    "STREAM_CONSUMER_GROUP_NAME": "redisearch_app_group",
    "MONITORING_CONSUMER_NAME": "monitoring_app",
}
VERDICTS = ("PASS ", "FAIL ", "WARN ", "SKIP ")


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handler", *args], env=env, cwd=APP_ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def env_for(server: LocalRedis, names: dict[str, str], **settings: str) -> dict[str, str]:
    return environment_for(server, **{**names, "MIN_IDLE_TIME_SEC": "10", **settings})


def add_user(client: redis.Redis, name: str, rule: str) -> dict[str, str]:
    """An ACL user with `rule` (the README's rule with changes); its settings to sign in."""
    password = "s3cret-" + name
    command(client, "ACL", "SETUSER", name, "reset", *rule.format(password=password).split())
    return {"REDIS_USERNAME": name, "REDIS_PASSWORD": password}


def readme_rule_for(stream: str) -> str:
    return ACL_RULE.replace("tweets_stream", stream.replace("{", "{{").replace("}", "}}"))


def user_without_scan(client: redis.Redis, names: dict[str, str], prefix: str) -> dict[str, str]:
    """A group on `<stream>:0` and a user with the README's rule for every `<stream>*` key, without +scan
    (which a pattern in STREAM_NAME needs)."""
    stream = names["STREAM_NAME"]
    create_group(client, stream + ":0", names["STREAM_CONSUMER_GROUP_NAME"])
    rule = readme_rule_for(stream + ":0").replace("~" + stream, "~" + stream + "*")
    return add_user(client, prefix + stream[-6:], rule)


def start_run(env: dict[str, str], schedule: str = "* * * * * *") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "handler", "run", "--schedule", schedule], env=env, cwd=APP_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def stop_run(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


# 2. A scheduler keeps going ------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", ["off", "on", "detect"])
def test_run_keeps_going_while_redis_is_unreachable(names: dict[str, str], cluster: str) -> None:
    metrics_port = free_port()
    env = dict(
        os.environ, REDIS_HOST=f"127.0.0.1:{free_port()}", REDIS_TLS="false",
        REDIS_CLUSTER=cluster, REDIS_TIMEOUT_SEC="0.5", MIN_IDLE_TIME_SEC="10",
        METRICS_ADDRESS=f"127.0.0.1:{metrics_port}", **names,
    )  # fmt: skip
    process = start_run(env)
    time.sleep(6)
    alive = process.poll() is None
    metrics = scrape(metrics_port) if alive else ""
    code, stderr = stop_run(process)
    assert alive, f"run exited {process.returncode}: {stderr[-1500:]}"
    assert 0 == code, stderr[-1500:]
    assert stderr.count("reclaim cycle failed") >= 2, stderr[-1500:]
    assert "Traceback" not in stderr
    failed = [line for line in metrics.splitlines() if line.startswith("tweets_monitor_cycles_total{")]
    assert any('outcome="redis-unavailable"' in line and not line.endswith(" 0.0") for line in failed), failed


def test_run_keeps_going_when_the_user_may_not_scan(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    """A pattern needs SCAN; a user without it fails each cycle (logged, counted) and run goes on."""
    stream = names["STREAM_NAME"]
    login = user_without_scan(client8, names, "no-scan-")
    env = env_for(
        redis_8, {**names, "STREAM_NAME": stream + ":*"}, METRICS_ADDRESS=f"127.0.0.1:{free_port()}", **login
    )
    process = start_run(env)
    time.sleep(4)
    alive = process.poll() is None
    code, stderr = stop_run(process)
    assert alive, f"run exited {process.returncode}: {stderr[-1500:]}"
    assert 0 == code
    assert stderr.count("reclaim cycle failed") >= 2, stderr[-1500:]
    assert "scan" in stderr.lower()


@pytest.mark.parametrize("streams", ["one name", "a pattern"])
def test_serve_answers_503_when_the_whole_cluster_is_down(names: dict[str, str], streams: str) -> None:
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=0) as cluster:
        client = cluster.client()
        create_group(client, names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
        pattern = {"STREAM_NAME": names["STREAM_NAME"][:-3] + "*"} if streams == "a pattern" else {}
        env = dict(
            os.environ, REDIS_HOST=cluster.address, REDIS_TLS="false", REDIS_CLUSTER="on",
            REDIS_TIMEOUT_SEC="0.5", MIN_IDLE_TIME_SEC="10", **{**names, **pattern},
        )  # fmt: skip
        host = FunctionsHost(env).start()
        try:
            completed(host.invoke())
            client.close()
            for node in cluster.live_nodes():
                node.stop()
            answer = host.invoke()
            assert 503 == answer.status, answer.body[:2000]
        finally:
            host.stop()


# 3. State keys cannot stop the monitor for good ---------------------------------------------------------


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


def test_a_lease_without_a_ttl_is_taken_over_after_lease_ttl(
    world8: World, caplog: pytest.LogCaptureFixture
) -> None:
    world8.abandon([tweet(n) for n in range(10)])
    world8.client.set(world8.keys.lease, "old-monitor@gone:1:deadbeef")  # no TTL: a script's, or an old one's
    first = world8.run(LEASE_TTL_SEC=1)
    assert first.stopped_by is StopReason.SKIPPED
    assert any("no time to live" in record.getMessage() for record in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    time.sleep(1.2)
    second = world8.run(LEASE_TTL_SEC=1)
    assert 10 == second.counts.processed, second
    assert not world8.pending()


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


# 4. Housekeeping never fails the invocation ------------------------------------------------------------


def test_pruning_refused_is_a_warning_and_a_metric_not_a_failed_invocation(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    pipeline.abandon(
        client8, stream, names["STREAM_CONSUMER_GROUP_NAME"], [tweet(n) for n in range(5)], PROCESSOR
    )
    login = add_user(client8, "readme-" + stream[-6:], readme_rule_for(stream))
    env = env_for(redis_8, names, DELETE_IDLE_CONSUMERS_AFTER_SEC="60", **login)
    host = FunctionsHost(env).start()
    try:
        answer = host.invoke()
        result = completed(answer)
        metrics = host.request("GET", "/metrics").body.decode()
    finally:
        host.stop()
    assert 5 == len(tweet_keys(client8))
    assert 5 == result["processed"]
    logs = "\n".join(answer.json["Logs"])
    assert "consumers" in logs and "WARNING" in logs.upper(), logs
    expected = f'tweets_monitor_housekeeping_failures_total{{stream="{stream}",task="prune consumers"}} 1.0'
    assert expected in metrics, metrics[-3000:]


def test_check_verifies_pruning_commands_when_pruning_is_on(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "readme2-" + stream[-6:], readme_rule_for(stream))
    off = cli(env_for(redis_8, names, **login), "check")
    on = cli(env_for(redis_8, names, DELETE_IDLE_CONSUMERS_AFTER_SEC="60", **login), "check")
    assert 0 == off.returncode, off.stdout + off.stderr
    assert 1 == on.returncode, on.stdout + on.stderr
    assert "XINFO" in on.stdout and "DELETE_IDLE_CONSUMERS_AFTER_SEC" in on.stdout, on.stdout


# 5. check reports; it never crashes -------------------------------------------------------------------


def _assert_every_line_has_a_verdict(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith(VERDICTS) for line in lines), done.stdout


def test_check_without_scan_for_a_pattern_reports_it(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    login = user_without_scan(client8, names, "cnoscan-")
    done = cli(env_for(redis_8, {**names, "STREAM_NAME": stream + ":*"}, **login), "check")
    _assert_every_line_has_a_verdict(done)
    assert 1 == done.returncode
    assert any(line.startswith("FAIL") and "SCAN" in line for line in done.stdout.splitlines()), done.stdout


def test_check_without_info_and_cluster_off_reports_it(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "cnoinfo-" + stream[-6:], readme_rule_for(stream).replace(" +info", ""))
    done = cli(env_for(redis_8, names, REDIS_CLUSTER="off", **login), "check")
    _assert_every_line_has_a_verdict(done)
    reported = [line for line in done.stdout.splitlines() if line.startswith(("FAIL", "WARN", "SKIP"))]
    assert any("INFO" in line for line in reported), done.stdout


def test_check_user_verifies_another_user_with_an_administrators_login(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    good = "good-" + stream[-6:]
    add_user(client8, good, readme_rule_for(stream))
    bad = "bad-" + stream[-6:]
    add_user(client8, bad, readme_rule_for(stream).replace(" +xclaim", ""))
    as_admin = env_for(redis_8, names)
    for user, verdict in ((good, "PASS"), (bad, "FAIL")):
        done = cli(as_admin, "check", "--user", user)
        _assert_every_line_has_a_verdict(done)
        permissions = [line for line in done.stdout.splitlines() if "permissions" in line]
        assert permissions and permissions[0].startswith(verdict) and f"'{user}'" in permissions[0], (
            done.stdout
        )
    assert "XCLAIM" in cli(as_admin, "check", "--user", bad).stdout


def test_check_never_advises_running_itself_as_an_administrator(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "nodry-" + stream[-6:], readme_rule_for(stream))
    done = cli(env_for(redis_8, names, **login), "check")
    _assert_every_line_has_a_verdict(done)
    assert "check --user" in done.stdout, done.stdout


# 6. A replay into a group that is gone -------------------------------------------------------------


def test_replay_refuses_when_the_group_is_gone(world8: World) -> None:
    ids = world8.abandon([tweet(n, id="") for n in range(3)])  # no tweet id: dead-lettered at once
    world8.run()
    dead_letter = world8.keys.dead_letter
    before = dead_letters(world8.client, dead_letter)
    assert 3 == len(before) and len(ids) == 3
    command(world8.client, "XGROUP", "DESTROY", world8.stream, world8.group)
    stream_length = world8.client.xlen(world8.stream)
    env = env_for(world8.server, world8.names)
    done = cli(env, "dead-letter", "replay", "--all")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert "replayed" not in done.stdout
    assert world8.group in done.stderr
    assert before == dead_letters(world8.client, dead_letter)
    assert stream_length == world8.client.xlen(world8.stream)


# 7. Settings that cannot work -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("DEAD_LETTER_STREAM", "{stream}"),
        ("DEAD_LETTER_MAXLEN", "9223372036854775807"),
        ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ("REDIS_TIMEOUT_SEC", "nan"),
        ("CYCLE_TIME_BUDGET_SEC", "inf"),
        ("DELETE_IDLE_CONSUMERS_AFTER_SEC", "inf"),
        ("DELETE_IDLE_CONSUMERS_AFTER_SEC", "nan"),
        ("LEASE_TTL_SEC", "nan"),
        ("MAX_DELIVERIES", "-1"),
        ("CYCLE_MAX_MESSAGES", "99999999999999999999"),
        ("MIN_IDLE_TIME_SEC", "99999999999999"),
    ],
)
def test_settings_that_cannot_work_exit_2_naming_the_setting(
    redis_8: LocalRedis, names: dict[str, str], setting: str, value: str
) -> None:
    value = value.replace("{stream}", names["STREAM_NAME"])
    done = cli(env_for(redis_8, names, REDIS_TLS="true" if setting == "REDIS_TLS_CA_FILE" else "false",
                       **{setting: value}), "reclaim")  # fmt: skip
    assert 2 == done.returncode, done.stdout + done.stderr
    assert setting in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_dead_letter_maxlen_at_its_bound_still_dead_letters(world8: World) -> None:
    world8.abandon([tweet(n, id="") for n in range(2)])
    summary = world8.run(DEAD_LETTER_MAXLEN=MAX_DEAD_LETTER_MAXLEN)
    assert 2 == summary.counts.dead_lettered
    assert 2 == len(dead_letters(world8.client, world8.keys.dead_letter))


@pytest.mark.parametrize(
    "args",
    [
        ["consumers", "prune", "--idle-sec", "nan"],
        ["consumers", "prune", "--idle-sec", "-1"],
        ["consumers", "prune", "--idle-sec", "inf"],
        ["dead-letter", "list", "--count", "0"],
        ["run", "--schedule", "every twenty seconds"],
        ["run", "--schedule", "* * * * * * *"],
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    redis_8: LocalRedis, names: dict[str, str], args: list[str]
) -> None:
    done = cli(env_for(redis_8, names, METRICS_ADDRESS=f"127.0.0.1:{free_port()}"), *args, timeout=30)
    assert 2 == done.returncode, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip(), done.stderr


def test_a_schedule_written_as_an_app_setting_is_resolved(
    redis_8: LocalRedis, names: dict[str, str], tmp_path: Path
) -> None:
    create_group(redis_8.client(), names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
    env = env_for(redis_8, names, METRICS_ADDRESS=f"127.0.0.1:{free_port()}", TIMER_SCHEDULE="*/2 * * * * *")
    process = start_run(env, schedule="%TIMER_SCHEDULE%")
    time.sleep(5)
    code, stderr = stop_run(process)
    assert 0 == code, stderr[-2000:]
    assert stderr.count("reclaim cycle:") >= 2, stderr[-2000:]


def test_a_budget_longer_than_the_function_timeout_is_warned_at_start(
    redis_8: LocalRedis, names: dict[str, str]
) -> None:
    env = env_for(redis_8, names, CYCLE_TIME_BUDGET_SEC="400")  # Consumption's default timeout is 300 s
    host = FunctionsHost(env).start()
    host.stop()
    assert (
        "CYCLE_TIME_BUDGET_SEC" in host.stderr + host.stdout
        and "functionTimeout" in host.stderr + host.stdout
    )


# 10. Small ------------------------------------------------------------------------------------------


def test_an_ipv6_host_is_printed_in_brackets(names: dict[str, str]) -> None:
    port = free_port()
    env = dict(os.environ, REDIS_HOST=f"[::1]:{port}", REDIS_TLS="false", REDIS_TIMEOUT_SEC="0.5",
               MIN_IDLE_TIME_SEC="10", **names)  # fmt: skip
    done = cli(env, "reclaim")
    assert 1 == done.returncode
    assert f"[::1]:{port}" in done.stderr, done.stderr
    checked = cli(env, "check")
    assert f"[::1]:{port}" in checked.stdout, checked.stdout


def test_serve_starts_with_a_time_zone_that_has_a_trailing_space(
    redis_8: LocalRedis, names: dict[str, str]
) -> None:
    host = FunctionsHost(env_for(redis_8, names, WEBSITE_TIME_ZONE="Europe/London ")).start()
    assert 0 == host.stop()


def test_dead_letter_stream_in_the_pattern_is_refused(redis_8: LocalRedis, names: dict[str, str]) -> None:
    stream = names["STREAM_NAME"]
    taken = cli(env_for(redis_8, names, DEAD_LETTER_STREAM=stream), "reclaim")
    assert 2 == taken.returncode and "DEAD_LETTER_STREAM" in taken.stderr, taken.stderr


# After a second review ------------------------------------------------------------------------------


def test_a_big_dead_letter_is_replayed_while_producers_write_to_the_stream(world8: World) -> None:
    """A continued dead letter is replayed in a transaction that watches the dead-letter stream only: live
    producers writing to the main stream must not abort it."""
    big = [part for n in range(4500) for part in (b"f%d" % n, b"v")]  # past one Lua call, and no id
    world8.abandon([big])
    assert 1 == world8.run().counts.dead_lettered
    stop = threading.Event()

    def produce() -> None:
        producer = world8.server.client()
        while not stop.is_set():
            producer.xadd(world8.stream, {"id": "1", "text": "live"})

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        done = cli(env_for(world8.server, world8.names), "dead-letter", "replay", "--all")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert 0 == done.returncode, done.stderr[-2000:]
    assert "replayed 1 of 1" in done.stdout
    assert 0 == world8.client.xlen(world8.keys.dead_letter)


def test_an_acl_rule_without_pttl_still_respects_another_monitors_lease(
    world8: World, caplog: pytest.LogCaptureFixture
) -> None:
    world8.abandon([tweet(n) for n in range(5)])
    login = add_user(
        world8.client, "old-rule-" + world8.stream[-6:], readme_rule_for(world8.stream).replace(" +pttl", "")
    )
    world8.client.set(world8.keys.lease, "another-monitor@host:1:cafe", px=60_000)
    summary = world8.run(REDIS_USERNAME=login["REDIS_USERNAME"], REDIS_PASSWORD=login["REDIS_PASSWORD"])
    assert summary.stopped_by is StopReason.SKIPPED, summary
    assert 5 == len(world8.pending())
    assert any("+pttl" in record.getMessage() for record in caplog.records)


def test_check_user_fails_when_it_cannot_verify_or_the_user_does_not_exist(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    missing = cli(env_for(redis_8, names), "check", "--user", "nobody-" + stream[-6:])
    _assert_every_line_has_a_verdict(missing)
    line = next(x for x in missing.stdout.splitlines() if "permissions" in x)
    assert line.startswith("FAIL") and "there is no user" in line and 1 == missing.returncode, missing.stdout
    login = add_user(client8, "notadmin-" + stream[-6:], readme_rule_for(stream))
    unverified = cli(env_for(redis_8, names, **login), "check", "--user", login["REDIS_USERNAME"])
    line = next(x for x in unverified.stdout.splitlines() if "permissions" in x)
    assert line.startswith("FAIL") and 1 == unverified.returncode, unverified.stdout


def test_check_fails_pruning_when_the_deletion_is_not_allowed(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "noprune-" + stream[-6:], readme_rule_for(stream) + " +xinfo|consumers")
    done = cli(env_for(redis_8, names, DELETE_IDLE_CONSUMERS_AFTER_SEC="60", **login), "check")
    line = next(x for x in done.stdout.splitlines() if "consumer pruning" in x)
    assert line.startswith("FAIL") and "DELCONSUMER" in line, done.stdout


def test_the_budget_warning_names_where_the_timeout_comes_from(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "00:05:00"}')
    said = budget_warning(400, function_timeout(tmp_path))
    assert "host.json's functionTimeout 00:05:00" in said and "sets no" not in said
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    assert "host.json sets no functionTimeout" in budget_warning(400, function_timeout(tmp_path))
    (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "-1"}')
    assert float("inf") == function_timeout(tmp_path).seconds
