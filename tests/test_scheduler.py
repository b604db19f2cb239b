"""The standalone scheduler (`run`): cycles on function.json's NCRONTAB schedule, in WEBSITE_TIME_ZONE, that
keep going whatever a cycle meets, and `run --once` for cron. Real servers and processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from handler.dev.host import APP_ROOT
from handler.dev.local_redis import LocalRedis, free_port
from handler.dev.samples import STREAM
from handler.functions.host_files import (
    APP_ROOT_VARIABLES,
    app_root,
    function_schedule,
)
from handler.runner import next_run
from tests.acl import user_without_scan
from tests.cli import cli, env_for
from tests.pipeline import abandon_in_pipeline, create_group, tweet, tweet_keys


def start_run(env: dict[str, str], schedule: str = "* * * * * *") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "handler", "run", "--schedule", schedule],
        env=env,
        cwd=APP_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_run(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


@pytest.mark.parametrize("cluster", ["off", "on", "detect"])
def test_run_keeps_going_while_redis_is_unreachable(names: dict[str, str], cluster: str) -> None:
    metrics_port = free_port()
    env = dict(
        os.environ,
        REDIS_HOST=f"127.0.0.1:{free_port()}",
        REDIS_TLS="false",
        REDIS_CLUSTER=cluster,
        REDIS_TIMEOUT_SEC="0.5",
        MIN_IDLE_TIME_SEC="10",
        METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        **names,
    )
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
        [sys.executable, "-m", "handler", "run"],
        env={**env_for(redis_8), "PYTHONPATH": str(APP_ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 2 == done.returncode, done.stderr
    assert str(tmp_path / "monitor" / "function.json") in done.stderr
    assert "Traceback" not in done.stderr


def test_run_once_for_cron(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon_in_pipeline(group, [tweet(n) for n in range(6)])
    done = cli(redis_8, "run", "--once", METRICS_ADDRESS=f"127.0.0.1:{free_port()}")
    assert 0 == done.returncode, done.stderr
    assert 6 == len(tweet_keys(group))


def test_run_once_opens_no_metrics_listener(redis_8: LocalRedis, group: redis.Redis) -> None:
    """A cron job's one cycle serves no scrape: METRICS_ADDRESS already taken does not stop it."""
    abandon_in_pipeline(group, [tweet(n) for n in range(2)])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = cli(redis_8, "run", "--once", METRICS_ADDRESS=f"127.0.0.1:{port}")
    assert 0 == done.returncode, done.stderr
    assert "metrics on" not in done.stderr
    assert 2 == len(tweet_keys(group))


def test_run_cycles_on_schedule_serves_metrics_and_exits_0_on_sigterm(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    abandon_in_pipeline(group, [tweet(n) for n in range(5)])
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
