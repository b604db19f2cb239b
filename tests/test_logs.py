"""Log lines: the cycle's JSON lines carry its summary, every worker's lines reach the host's Logs with the
invocation id, and one invocation's Logs are capped."""

from __future__ import annotations

import json
import logging

import pytest
import redis

from handler.dev.host import FunctionsHost, Record, envelope
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, timer
from handler.logs import MAX_CAPTURED_LINES, capture_logs, configure_logging, invocation_id
from tests.cli import cli
from tests.pipeline import (
    abandon,
    abandon_in_pipeline,
    create_group,
    tweet,
)


def test_page_workers_log_lines_reach_the_host_with_the_invocation_id(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """A page worker's INFO line goes into the invocation's Logs; its warning to stderr, with the id."""
    create_group(client8, STREAM, GROUP)
    ids = abandon(client8, STREAM, GROUP, [[b"text", b"no id"], tweet(1)])
    client8.xdel(STREAM, ids[1])  # deleted while pending: the page acknowledges it and says so
    host = FunctionsHost(environment_for(redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10")).start()
    try:
        answer = host.invoke(invocation_id="4d1f2a7e-0000-4000-8000-00000000beef")
    finally:
        host.stop()
    body = answer.json
    assert any("pending entries deleted from the stream" in line for line in body["Logs"]), body["Logs"]
    dead_lettered = [line for line in host.stderr.splitlines() if "dead-lettered" in line]
    assert dead_lettered and all("4d1f2a7e-0000-4000-8000-00000000beef" in line for line in dead_lettered)


def test_the_hosts_logs_of_one_invocation_are_capped() -> None:
    with capture_logs("cap-test") as lines:
        configure_logging(logging.INFO, info_to_stdout=False)
        for n in range(MAX_CAPTURED_LINES + 500):
            logging.getLogger("tests.cap").info("line %d", n)
    assert MAX_CAPTURED_LINES + 1 == len(lines)
    assert "more log lines" in lines[-1]


def test_json_log_lines_carry_the_summary(redis_8: LocalRedis, group: redis.Redis) -> None:
    abandon_in_pipeline(group, [tweet(n) for n in range(2)])
    done = cli(redis_8, "reclaim", LOG_FORMAT="json")
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    (cycle_line,) = [line for line in lines if line["message"].startswith("reclaim cycle:")]
    assert json.loads(done.stdout) == cycle_line["summary"]
    assert {"time", "level", "logger", "invocation_id", "message"} <= cycle_line.keys()


# --- what reaches Application Insights through the host ------------------------------------------------

INVOCATION = "4d1f2a7e-0000-4000-8000-00000000cafe"


def once_each(records: list[Record]) -> dict[str, int]:
    """How often each line of the handler reached the host (by its message, without the time stamp)."""
    counts: dict[str, int] = {}
    for record in records:
        # "INFO: <message>" in Logs; "<time> INFO <logger> [invocation <id>] <message>" on stdout and stderr
        text = (
            record.message.split(": ", 1)[-1] if record.via == "Logs" else record.message.split("] ", 1)[-1]
        )
        counts[text] = counts.get(text, 0) + 1
    return counts


def test_every_line_reaches_the_host_once_at_its_severity_with_the_invocation_id(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """The host logs stdout as Information, stderr as Warning (a line with "warn") or Error, and each `Logs`
    entry as Information with the invocation id: a line sent two ways is billed twice and shows at two
    severities."""
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [[b"text", b"no id"], *[tweet(n) for n in range(3)]])
    host = FunctionsHost(environment_for(redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10")).start()
    try:
        host.invoke(invocation_id=INVOCATION)
    finally:
        host.stop()
    mine = [r for r in host.records() if INVOCATION in (r.invocation_id or "") or INVOCATION in r.message]
    cycle = [r for r in mine if "reclaim cycle:" in r.message]
    assert 1 == len(cycle), cycle
    assert ("Information", INVOCATION) == (cycle[0].level, cycle[0].invocation_id)
    dead = [r for r in mine if "dead-lettered" in r.message]
    assert 1 == len(dead), dead
    assert "Warning" == dead[0].level and INVOCATION in dead[0].message
    assert [] == [line for line, n in once_each(mine).items() if n > 1]


def test_a_failed_invocations_lines_still_reach_the_host(redis_8: LocalRedis, client8: redis.Redis) -> None:
    """The host drops the `Logs` of a non-2xx answer: the lines of a failed invocation must reach it by
    stdout and stderr, each once, with the invocation id."""
    host = FunctionsHost(environment_for(redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10")).start()
    past_due = envelope(timer({"Last": "2024-11-30T14:43:00+00:00", "Next": None}, is_past_due=True))
    try:
        answer = host.invoke(past_due, invocation_id=INVOCATION)  # no stream, no group: 500
    finally:
        host.stop()
    assert 500 == answer.status
    mine = [r for r in host.records() if INVOCATION in r.message]
    assert any(r.level == "Information" and "past due" in r.message for r in mine), host.stdout[-2000:]
    assert any(r.level == "Error" and "invocation failed (HTTP 500)" in r.message for r in mine)
    assert [] == [line for line, n in once_each(mine).items() if n > 1]


def test_a_traceback_is_one_record_for_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(logging.INFO, info_to_stdout=True)
    token = invocation_id.set(INVOCATION)
    try:
        try:
            raise RuntimeError("first line\nsecond line")
        except RuntimeError:
            logging.getLogger("tests.traceback").exception("the cycle broke")
    finally:
        invocation_id.reset(token)
    err = capsys.readouterr().err
    assert 1 == len(err.splitlines()), err
    assert "Traceback" in err and "second line" in err and INVOCATION in err
