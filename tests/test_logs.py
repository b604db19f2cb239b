"""Log lines: the cycle's JSON lines carry its summary, every worker's lines reach the host's Logs with the
invocation id, and one invocation's Logs are capped."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from handler.dev.host import FunctionsHost
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM
from handler.logs import MAX_CAPTURED_LINES, capture_logs, configure_logging
from tests import pipeline
from tests.cli import cli
from tests.pipeline import (
    abandon,
    create_group,
    tweet,
)


def test_page_workers_log_lines_reach_the_hosts_logs(redis_8: LocalRedis, client8: redis.Redis) -> None:
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [[b"text", b"no id"]])
    host = FunctionsHost(environment_for(redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10")).start()
    try:
        answer = host.invoke(invocation_id="4d1f2a7e-0000-4000-8000-00000000beef")
    finally:
        host.stop()
    body = answer.json
    assert any("dead-lettered" in line for line in body["Logs"]), body["Logs"]
    dead_lettered = [line for line in host.stderr.splitlines() if "dead-lettered" in line]
    assert dead_lettered and all("4d1f2a7e-0000-4000-8000-00000000beef" in line for line in dead_lettered)


def test_the_hosts_logs_of_one_invocation_are_capped() -> None:
    with capture_logs("cap-test") as lines:
        configure_logging(logging.INFO, info_to_stdout=False)
        for n in range(MAX_CAPTURED_LINES + 500):
            logging.getLogger("tests.cap").info("line %d", n)
    assert MAX_CAPTURED_LINES + 1 == len(lines)
    assert "more log lines" in lines[-1]


DEAD_LETTER = "{tweets_stream}:dead-letter"


NAMES = PIPELINE_NAMES


def abandon_in_pipeline(
    client: redis.Redis, entries: list[list[bytes]], consumer: str = "consumer-crashed"
) -> list[bytes]:
    return pipeline.abandon(client, STREAM, GROUP, entries, consumer)


@pytest.fixture
def group(client8: redis.Redis) -> redis.Redis:
    create_group(client8, STREAM, GROUP)
    return client8


def test_json_log_lines_carry_the_summary(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon_in_pipeline(group, [tweet(n) for n in range(2)])
    done = cli(redis_8, "reclaim", LOG_FORMAT="json")
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    (cycle_line,) = [line for line in lines if line["message"].startswith("reclaim cycle:")]
    assert json.loads(done.stdout) == cycle_line["summary"]
    assert {"time", "level", "logger", "invocation_id", "message"} <= cycle_line.keys()
