"""The Functions host protocol, end to end: a real handler process, a real Redis, the host played by
handler/dev/host.py."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.host import FunctionsHost, completed, envelope, failed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import PIPELINE_NAMES, timer
from handler.functions.app import MAX_BODY_BYTES
from handler.functions.host_files import budget_warning, function_timeout
from tests import pipeline
from tests.cli import env_for
from tests.pipeline import (
    create_group,
    expected_hash,
    pending_rows,
    tweet,
    tweet_keys,
)
from tests.reliability import audit, record

NAMES = PIPELINE_NAMES
SUMMARY_KEYS = {"pending", "claimed", "processed", "deleted", "dead_lettered", "failed", "duration_ms"}


def handler_env(server: LocalRedis, **settings: str) -> dict[str, str]:
    return environment_for(server, **{**NAMES, "MIN_IDLE_TIME_SEC": "10", **settings})


@pytest.fixture(scope="module")
def host(redis_8: LocalRedis) -> Iterator[FunctionsHost]:
    started = FunctionsHost(handler_env(redis_8)).start()
    yield started
    started.stop()


def abandon(client: redis.Redis, count: int) -> list[bytes]:
    tweets = [tweet(n) for n in range(count)]
    return pipeline.abandon(client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], tweets)


@pytest.fixture
def backlog(client8: redis.Redis) -> list[bytes]:
    """Three abandoned tweets waiting in the host-facing handler's stream."""
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    return abandon(client8, 3)


def under_way(client: redis.Redis) -> None:
    """Until the handler's cycle has claimed work it has not acknowledged yet."""
    pipeline.wait_until_claiming(
        client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], "monitoring_app"
    )


def pending(client: redis.Redis) -> int:
    return len(pending_rows(client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"]))


def test_the_readiness_probe_is_answered_at_once(host: FunctionsHost) -> None:
    answer = host.request("GET", "/")
    assert 200 == answer.status
    assert answer.seconds < 1


ENVELOPES = {
    # What `*/20 * * * * *` always sends: the schedule monitor is off, so ScheduleStatus is null.
    "scheduled": envelope(),
    # The timer request of Azure Functions' custom-handler documentation, its binding renamed to `req`.
    "func-start-go-example": json.loads(
        '{"Data":{"req":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":"0001-01-01T00:00:00",'
        '"Next":"2024-11-30T14:45:51+00:00","LastUpdated":"2024-11-30T14:43:50.403838+00:00"},'
        '"IsPastDue":false}},"Metadata":{"sys":{"MethodName":"uk-generation-mix",'
        '"UtcNow":"2024-11-30T14:43:50.46239Z","RandGuid":"fa3b2fbc-26ed-4fcb-be75-82db8773b519"}}}'
    ),
    "past-due": envelope(timer({"Last": "2024-11-30T14:43:00+00:00", "Next": None}, is_past_due=True)),
    "odd-timestamps": envelope(
        timer({"Last": "11/30/2024 14:43:50", "Next": "2024-11-30T14:45:51.1234567Z", "LastUpdated": 0})
    ),
    "retry-context": envelope(
        RetryContext={"MaxRetryCount": 3, "RetryCount": 1, "Exception": {"Message": "earlier failure"}}
    ),
    "no-metadata": {"Data": {"req": timer()}},
    "extra-keys": {"Data": {"req": {**timer(), "Future": 1}, "other": '"x"'}, "Metadata": None},
    # A manual run through POST /admin/functions/monitor arrives as the same envelope ({"input"} ignored).
    "manual-admin-run": envelope(timer(None, is_past_due=False)),
}


@pytest.mark.parametrize("body", ENVELOPES.values(), ids=ENVELOPES.keys())
def test_every_envelope_variant_runs_one_cycle(
    host: FunctionsHost, client8: redis.Redis, backlog: list[bytes], body: dict[str, Any]
) -> None:
    summary = completed(host.invoke(body))
    assert SUMMARY_KEYS <= summary.keys()
    assert (3, 3, 3) == (summary["pending"], summary["claimed"], summary["processed"])
    assert 0 == pending(client8)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_answer_has_the_hosts_shape_with_the_cycles_log_lines(
    host: FunctionsHost, client8: redis.Redis, backlog: list[bytes], chunked: bool
) -> None:
    answer = host.invoke(invocation_id="7f3c1a52-0000-4000-8000-000000000001", chunked=chunked)
    summary = completed(answer)
    document = answer.json
    assert {} == document["Outputs"]
    assert any(
        line.startswith("INFO: reclaim cycle: pending=3 claimed=3 processed=3") for line in document["Logs"]
    )
    assert 3 == summary["processed"]
    assert "reclaim cycle" not in host.stdout  # one way only: the host would record it twice


def test_an_empty_pending_list_is_still_a_complete_answer(host: FunctionsHost, client8: redis.Redis) -> None:
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    summary = completed(host.invoke())
    assert (0, 0) == (summary["pending"], summary["claimed"])


BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "no content type": ({"content_type": None}, 415, "Content-Type must be application/json"),
    "text/plain": ({"content_type": "text/plain"}, 415, "Content-Type must be application/json"),
    "form": ({"content_type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
    "empty body": ({"raw": b""}, 400, "body is empty"),
    "not json": ({"raw": b"{not json"}, 400, "not valid JSON"),
    "invalid utf-8": ({"raw": b'{"Data": "\xff\xfe"}'}, 400, "not valid UTF-8"),
    "json null": ({"raw": b"null"}, 400, "must be a JSON object"),
    "json string": ({"raw": b'"HelloWorld"'}, 400, "must be a JSON object"),
    "no Data": ({"body": {"Metadata": {}}}, 400, "Data"),
    "Data not an object": ({"body": {"Data": [1, 2]}}, 400, "Data"),
    "no timer binding": ({"body": {"Data": {"myTimer": timer()}}}, 400, "Data.req"),
    "timer not an object": ({"body": {"Data": {"req": '"x"'}}}, 400, "Data.req"),
    "IsPastDue not a bool": ({"body": {"Data": {"req": {"IsPastDue": [1]}}}}, 400, "IsPastDue"),
    "deeply nested": ({"raw": b'{"Data": {"req": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"}, 400, "nested"),
    "too large": ({"raw": b'{"Data": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'}, 413, "larger than"),
    "too large chunked": ({"raw": b"x" * (MAX_BODY_BYTES + 10), "chunked": True}, 413, "larger than"),
}


@pytest.mark.parametrize(("request_args", "status", "says"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_malformed_request_gets_a_4xx_json_answer_and_runs_no_cycle(
    host: FunctionsHost,
    client8: redis.Redis,
    backlog: list[bytes],
    request_args: dict[str, Any],
    status: int,
    says: str,
) -> None:
    answer = host.invoke(**request_args)
    assert status == answer.status
    assert says in failed(answer)
    assert 3 == pending(client8)
    assert set() == tweet_keys(client8)
    assert host.alive()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/monitor", 405),
        ("PUT", "/monitor", 405),
        ("POST", "/docs", 404),
        ("GET", "/openapi.json", 404),
        ("GET", "/api/monitor", 404),
        ("DELETE", "/", 405),
        ("POST", "/monitor/", 404),
    ],
)
def test_wrong_methods_and_paths_get_json_4xx(
    host: FunctionsHost, method: str, path: str, status: int
) -> None:
    answer = host.request(method, path)
    assert status == answer.status
    assert failed(answer)


def test_a_missing_stream_or_group_is_a_500_that_names_them(
    host: FunctionsHost, client8: redis.Redis
) -> None:
    answer = host.invoke()
    assert 500 == answer.status
    message = failed(answer)
    assert "'tweets_stream'" in message
    assert "'redisearch_app_group'" in message
    assert "does not exist" in host.stderr  # the host keeps stderr, and throws away a failure's Logs
    assert host.alive()


def test_unreachable_redis_is_a_prompt_503_and_the_next_invocation_works_once_it_is_back(
    redis_8: LocalRedis,
) -> None:
    port = free_port()
    gone = LocalRedis(redis_8.binary, port=port)
    host = FunctionsHost(handler_env(gone, REDIS_TIMEOUT_SEC="1")).start()
    try:
        answer = host.invoke()
        assert 503 == answer.status
        assert f"Redis at 127.0.0.1:{port} is unavailable" in failed(answer)
        assert answer.seconds < 10
        assert "is unavailable" in host.stderr
        with gone:
            client = gone.client()
            create_group(client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
            abandon(client, 2)
            assert 2 == completed(host.invoke())["processed"]
            client.close()
    finally:
        host.stop()


def test_refused_authentication_is_a_503_naming_authentication_without_the_password(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    client8.execute_command("ACL", "SETUSER", "monitor", "on", ">right-password", "~*", "+@all")  # type: ignore[no-untyped-call]
    host = FunctionsHost(
        handler_env(redis_8, REDIS_USERNAME="monitor", REDIS_PASSWORD="wr0ng-Passw0rd")
    ).start()
    try:
        answer = host.invoke()
        assert 503 == answer.status
        message = failed(answer)
        assert "AuthenticationError" in message
        assert "wr0ng-Passw0rd" not in message + host.stdout + host.stderr
    finally:
        host.stop()
        client8.execute_command("ACL", "DELUSER", "monitor")  # type: ignore[no-untyped-call]


def test_a_stalled_redis_fails_the_invocation_in_bounded_time(redis_8: LocalRedis) -> None:
    """A server that accepts the connection and never answers (a listening socket nobody serves)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        env = handler_env(redis_8, REDIS_TIMEOUT_SEC="0.5", REDIS_HOST=f"127.0.0.1:{port}")
        host = FunctionsHost(env).start()
        try:
            answer = host.invoke()
            assert 503 == answer.status
            assert "Timeout" in failed(answer)
            assert answer.seconds < 10  # three attempts of 0.5 s plus backoff, far from the host's 5 min
        finally:
            host.stop()


def test_sigterm_mid_cycle_finishes_the_page_in_hand_then_exits_200(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """A SIGTERM from an operator, or Ctrl-C under `func start` (the host itself never signals): the page in
    hand is finished, and the exit is 200, which the host answers with a restart (0 would close the worker
    for good)."""
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    abandon(client8, 50_000)
    host = FunctionsHost(handler_env(redis_8, RECLAIM_PAGE_SIZE="200", LOG_LEVEL="DEBUG")).start()
    invocation, answers = host.invoke_in_background()
    under_way(client8)
    assert 200 == host.stop(signal.SIGTERM), host.stderr
    invocation.join(timeout=30)
    summary = completed(answers[0])
    assert "signal" == summary["stopped_by"]
    assert 0 < summary["processed"] < 50_000
    owned = [
        row
        for row in pending_rows(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
        if row[1] == b"monitoring_app"
    ]
    assert [] == owned  # every claimed entry was written and acknowledged before the exit
    assert summary["processed"] == len(tweet_keys(client8))
    assert "SIGTERM received" in host.stderr


def test_the_handler_refuses_to_start_on_bad_settings(redis_8: LocalRedis) -> None:
    env = handler_env(redis_8, MIN_IDLE_TIME_SEC="-1")
    env.pop("STREAM_NAME")
    host = FunctionsHost(env)
    with pytest.raises(AssertionError, match="exited at start"):
        host.start()
    host.stop()
    assert 2 == host.exits[0]
    assert "STREAM_NAME: is required but not set" in host.stderr
    assert "MIN_IDLE_TIME_SEC" in host.stderr
    assert "Traceback" not in host.stderr


def test_redis_62_and_60_serve_the_same_protocol() -> None:
    for version in ("6.0", "6.2"):
        with LocalRedis(BINARIES[version]()) as server:
            client = server.client()
            create_group(client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
            abandon(client, 5)
            host = FunctionsHost(handler_env(server)).start()
            try:
                assert 5 == completed(host.invoke())["processed"]
            finally:
                host.stop()
                client.close()


def test_an_invocation_overlapping_a_running_cycle_is_skipped_not_doubled(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """A manual run through the admin endpoint while the scheduled one is still working."""
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    abandon(client8, 50_000)
    host = FunctionsHost(handler_env(redis_8, RECLAIM_PAGE_SIZE="100", CYCLE_TIME_BUDGET_SEC="60")).start()
    try:
        scheduled, answers = host.invoke_in_background()
        under_way(client8)
        manual = completed(host.invoke())
        scheduled.join(timeout=120)
        assert ("skipped", "a cycle is already running here") == (manual["stopped_by"], manual["skipped"])
        assert 0 == manual["claimed"]
        first = completed(answers[0])
        assert (50_000, 50_000) == (first["claimed"], first["processed"])
        assert 0 == pending(client8)
        tweets = {b"tweet:" + fields[3]: expected_hash(fields) for fields in map(tweet, range(50_000))}
        result = audit(
            client8,
            NAMES["STREAM_NAME"],
            NAMES["STREAM_CONSUMER_GROUP_NAME"],
            "{tweets_stream}:dead-letter",
            tweets,
            set(),
        )
        record("a manual run overlapping the scheduled one in one handler", 1, 50_000, result)
        assert result.clean, result
    finally:
        host.stop()


@pytest.mark.parametrize("streams", ["one name", "a pattern"])
def test_serve_answers_503_when_the_whole_cluster_is_down(names: dict[str, str], streams: str) -> None:
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=0) as cluster:
        client = cluster.client()
        create_group(client, names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
        pattern = {"STREAM_NAME": names["STREAM_NAME"][:-3] + "*"} if streams == "a pattern" else {}
        env = dict(
            os.environ,
            REDIS_HOST=cluster.address,
            REDIS_TLS="false",
            REDIS_CLUSTER="on",
            REDIS_TIMEOUT_SEC="0.5",
            MIN_IDLE_TIME_SEC="10",
            **{**names, **pattern},
        )
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


def test_serve_starts_with_a_time_zone_that_has_a_trailing_space(
    redis_8: LocalRedis, names: dict[str, str]
) -> None:
    host = FunctionsHost(env_for(redis_8, names, WEBSITE_TIME_ZONE="Europe/London ")).start()
    host.stop()
    assert [] == host.exits


def test_the_budget_warning_names_where_the_timeout_comes_from(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "00:05:00"}')
    said = budget_warning(400, function_timeout(tmp_path))
    assert "host.json's functionTimeout 00:05:00" in said and "sets no" not in said
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    assert "host.json sets no functionTimeout" in budget_warning(400, function_timeout(tmp_path))
    (tmp_path / "host.json").write_text('{"version": "2.0", "functionTimeout": "-1"}')
    assert float("inf") == function_timeout(tmp_path).seconds
