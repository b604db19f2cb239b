"""The command line, run as a real process: `reclaim`, exit codes, signals, `demo`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from handler.dev.host import APP_ROOT
from handler.dev.local_redis import LocalRedis, free_port
from tests import pipeline
from tests.cli import cli, env_for
from tests.pipeline import create_group, pending_rows, tweet, tweet_keys

SUMMARY_KEYS = {"pending", "claimed", "processed", "deleted", "dead_lettered", "failed", "duration_ms"}


def abandon(client: redis.Redis, names: dict[str, str], count: int) -> list[bytes]:
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client, stream, group)
    return pipeline.abandon(client, stream, group, [tweet(n) for n in range(count)])


def test_reclaim_prints_the_summary_as_one_json_line(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    abandon(client8, names, 7)
    done = cli(env_for(redis_8, names), "reclaim")
    assert 0 == done.returncode, done.stderr
    (line,) = done.stdout.splitlines()
    summary = json.loads(line)
    assert SUMMARY_KEYS <= summary.keys()
    assert (7, 7, 7) == (summary["pending"], summary["claimed"], summary["processed"])
    assert "reclaim cycle: pending=7 claimed=7 processed=7" in done.stderr  # logs never mix into stdout
    assert 7 == len(tweet_keys(client8))


def test_the_cycle_log_line_carries_the_same_counts(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    abandon(client8, names, 2)
    done = cli(env_for(redis_8, names), "reclaim", timeout=60)
    summary = json.loads(done.stdout)
    log_line = next(line for line in done.stderr.splitlines() if "reclaim cycle:" in line)
    for key in SUMMARY_KEYS - {"duration_ms"}:
        assert f"{key}={summary[key]}" in log_line


def test_a_failed_cycle_exits_1_with_a_message(redis_8: LocalRedis, names: dict[str, str]) -> None:
    done = cli(env_for(redis_8, names), "reclaim")  # neither stream nor group exists
    assert 1 == done.returncode
    assert "" == done.stdout
    assert "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_redis_exits_1_naming_the_address(redis_8: LocalRedis, names: dict[str, str]) -> None:
    port = free_port()
    done = cli(env_for(redis_8, names, REDIS_HOST=f"127.0.0.1:{port}", REDIS_TIMEOUT_SEC="1"), "reclaim")
    assert 1 == done.returncode
    assert f"Redis at 127.0.0.1:{port} is unavailable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_HOST", ""),
        ("MIN_IDLE_TIME_SEC", "-5"),
        ("MIN_IDLE_TIME_SEC", "abc"),
        ("REDIS_HOST", "h:0"),
        ("MAX_DELIVERIES", "-1"),
        ("REDIS_TLS", "perhaps"),
        ("STREAM_NAME", ""),
    ],
)
def test_bad_settings_exit_2_with_one_message_naming_the_variable(
    redis_8: LocalRedis, names: dict[str, str], variable: str, value: str
) -> None:
    env = env_for(redis_8, names, REDIS_PASSWORD="Sup3r-S3cret", **{variable: value})
    for command in ("reclaim", "serve"):
        done = cli(env, command, timeout=60)
        assert 2 == done.returncode
        (line,) = done.stderr.splitlines()
        assert variable in line
        assert "Sup3r-S3cret" not in line
        assert "Traceback" not in done.stderr


def test_min_idle_zero_is_allowed_with_a_warning(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    abandon(client8, names, 1)
    done = cli(env_for(redis_8, names, MIN_IDLE_TIME_SEC="0"), "reclaim")
    assert 0 == done.returncode
    assert "MIN_IDLE_TIME_SEC is 0" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_cycle_finishes_the_page_in_hand_and_exits_0(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], sig: signal.Signals
) -> None:
    abandon(client8, names, 50_000)
    env = env_for(redis_8, names, RECLAIM_PAGE_SIZE="200", CYCLE_TIME_BUDGET_SEC="60")
    process = subprocess.Popen(
        [sys.executable, "-m", "handler", "reclaim"],
        env=env,
        cwd=APP_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    deadline = time.monotonic() + 30
    while len(pending_rows(client8, stream, group)) == 50_000 and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert 0 == process.returncode, err
    summary = json.loads(out.splitlines()[-1])
    assert "signal" == summary["stopped_by"]
    assert 0 < summary["processed"] < 50_000
    assert [] == [row for row in pending_rows(client8, stream, group) if row[1] == b"monitoring_app"]
    assert summary["processed"] == len(tweet_keys(client8))


def test_the_console_script_is_installed() -> None:
    script = shutil.which(
        "tweets-monitor", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    )
    assert script is not None
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert 0 == done.returncode
    for command in ("serve", "reclaim", "demo"):
        assert command in done.stdout


def test_the_demo_reclaims_the_crashed_processors_tweets() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "handler", "demo"], cwd=APP_ROOT, capture_output=True, text=True, timeout=120
    )
    assert 0 == done.returncode, done.stderr
    assert '"processed": 4' in done.stdout
    assert '"dead_lettered": 3' in done.stdout
    assert '"deleted": 1' in done.stdout
    assert "XPENDING tweets_stream redisearch_app_group: 0 pending" in done.stdout
    for reason in ("missing-id", "max-deliveries", "write-failed"):
        assert f"reason={reason}" in done.stdout
    # With the search module (a test dependency) the demo ends with the pipeline's example searches.
    assert "FT.SEARCH tweets-index '@hashtags:{cov*}': 4 found, 4 reclaimed" in done.stdout


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
