"""Right answers at the edges: each case a review found answering wrongly (a 500 for a passing state, a key
echoed, a stop reason that lies, a leaked thread…), reproduced against real servers. None loses an entry;
each misleads an operator or the Functions host."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest

from handler.dev.host import APP_ROOT, FunctionsHost, failed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, MONITOR, PIPELINE_NAMES, STREAM
from handler.errors import RedisUnavailableError, SettingsError
from handler.logs import MAX_CAPTURED_LINES, capture_logs, configure_logging
from handler.metrics import Metrics
from handler.reclaim.streams import StreamsCycle
from handler.settings import MonitorSettings, load_settings
from handler.transport.connect import RedisConnection, connect
from tests.pipeline import (
    abandon,
    command,
    create_group,
    pending_rows,
    tweet,
    tweet_keys,
    wait_until_claiming,
)
from tests.proxy import FaultyProxy
from tests.test_entra_id import CLIENT_ID, HEADER_SECRET, IdentityEndpoint
from tests.test_streams import SHARDS, shard_backlog
from tests.test_streams import settings_for as streams_settings


def settings_for(server: LocalRedis, **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        "REDIS_HOST": server.address, "REDIS_TLS": False, "MIN_IDLE_TIME_SEC": 10, **PIPELINE_NAMES,
        **overrides,
    }  # fmt: skip
    return MonitorSettings(**values)


def cli(server: LocalRedis, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = environment_for(server, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10", **settings)
    return subprocess.run(
        [sys.executable, "-m", "handler", *args], env=env, cwd=APP_ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


# 1. Several streams and CYCLE_MAX_MESSAGES.
def test_the_cap_shared_by_several_streams_stops_with_cap(redis_8: LocalRedis, client8: redis.Redis) -> None:
    shard_backlog(client8, [300, 300])
    settings = streams_settings(
        redis_8.address, ",".join(SHARDS[:2]), CYCLE_MAX_MESSAGES=100, RECLAIM_PAGE_SIZE=50
    )
    cycle = StreamsCycle(RedisConnection(settings, connect(settings)), settings)
    for _ in range(3):  # whichever stream goes first uses the whole cap
        summary = cycle.run()
        assert (100, "cap") == (summary.counts.processed, summary.stopped_by)


# 3. A connection string pasted into REDIS_HOST.
def test_a_connection_string_in_redis_host_is_named_and_its_key_never_echoed(redis_8: LocalRedis) -> None:
    key = "Zm9vYmFyc2VjcmV0a2V5MTIzNDU2Nzg5MA=="
    pasted = f"mycache.redis.cache.windows.net:6380,password={key},ssl=True,abortConnect=False"
    done = cli(redis_8, "reclaim", REDIS_HOST=pasted)
    assert 2 == done.returncode
    assert key not in done.stdout + done.stderr
    assert "password=" not in done.stderr
    assert "connection string" in done.stderr
    for setting in ("REDIS_HOST=mycache.redis.cache.windows.net:6380", "REDIS_PASSWORD", "REDIS_TLS"):
        assert setting in done.stderr


# 5. Transient server states answer 503, like a lost connection.
@pytest.fixture
def replica_of_8(redis_8: LocalRedis) -> Iterator[LocalRedis]:
    replica = LocalRedis(BINARIES["8.2"](), extra_args=["--replicaof", "127.0.0.1", str(redis_8.port)])
    replica.start()
    yield replica
    replica.cleanup()


def _wait_for_sync(replica: LocalRedis, stream: str) -> None:
    with replica.client() as client:
        deadline = time.monotonic() + 20
        while client.info("replication").get("master_link_status") != "up" or not client.exists(stream):
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)


def test_a_read_only_replica_answers_503(
    redis_8: LocalRedis, client8: redis.Redis, replica_of_8: LocalRedis
) -> None:
    """Pointed at a replica (as after a failover, before the name moves): XCLAIM meets READONLY."""
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [tweet(n) for n in range(5)])
    _wait_for_sync(replica_of_8, STREAM)
    host = FunctionsHost(environment_for(replica_of_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10")).start()
    try:
        answer = host.invoke()
    finally:
        host.stop()
    assert 503 == answer.status, answer.body
    assert "READONLY" in failed(answer)


def test_a_busy_server_answers_503(redis_8: LocalRedis, client8: redis.Redis) -> None:
    """A script that runs past busy-reply-threshold: every other command answers BUSY until it ends."""
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [tweet(n) for n in range(5)])
    client8.config_set("lua-time-limit", 100)
    blocker = threading.Thread(
        target=lambda: redis.Redis(port=redis_8.port).eval(
            "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
            "if n[1] - t[1] > 2 then break end end return 0",
            0,
        )
    )
    blocker.start()
    time.sleep(0.3)
    try:
        settings = settings_for(redis_8)
        with pytest.raises(RedisUnavailableError, match="BUSY"):
            StreamsCycle(RedisConnection(settings), settings).run()
    finally:
        blocker.join()


def test_masterdown_on_a_replica_answers_503() -> None:
    """A replica told not to serve stale data, whose master is gone, answers MASTERDOWN."""
    master = LocalRedis(BINARIES["8.2"]())
    master.start()
    replica = LocalRedis(BINARIES["8.2"](), extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    replica.start()
    try:
        with master.client() as source:
            create_group(source, STREAM, GROUP)
            abandon(source, STREAM, GROUP, [tweet(n) for n in range(5)])
        _wait_for_sync(replica, STREAM)
        with replica.client() as stale:
            stale.config_set("replica-serve-stale-data", "no")
        master.cleanup()
        settings = settings_for(replica)
        with pytest.raises(RedisUnavailableError, match="MASTERDOWN"):
            StreamsCycle(RedisConnection(settings), settings).run()
    finally:
        replica.cleanup()
        master.cleanup()


# 6. SIGTERM with several streams.
def test_a_stop_request_claims_nothing_more_in_the_streams_left(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    shard_backlog(client8, [100, 100, 100])
    settings = streams_settings(redis_8.address, ",".join(SHARDS[:3]), RECLAIM_PAGE_SIZE=10)
    claimed: list[bool] = []

    def stop_after_the_first_claim() -> bool:
        """SIGTERM arrives once the monitor has claimed its first page (latched, as a signal is)."""
        if not claimed:
            owners = [row[1] for shard in SHARDS[:3] for row in pending_rows(client8, shard, GROUP)]
            if MONITOR.encode() in owners:
                claimed.append(True)
        return bool(claimed)

    summary = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run(
        stop_after_the_first_claim
    )
    assert summary.streams is not None
    first, *left = sorted((s.counts.claimed for s in summary.streams.values()), reverse=True)
    assert first > 0  # the pages in hand in the first stream are finished
    assert [0, 0] == left  # nothing in the two streams left
    assert "signal" == summary.stopped_by


# 7. Page workers' log lines reach the host's Logs with the invocation id.
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


# 8. The stop reason when the budget refused pages, and the first pages within the budget.
def test_pages_refused_by_the_budget_say_budget_and_none_is_claimed_before_a_page_time_is_known(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """Four pages, each taking longer than the whole budget: the first is claimed (every invocation does
    one), the others wait for its time, are refused, and the cycle says `budget`, not `end`."""
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [tweet(n, text="x" * 8000) for n in range(4000)])
    settings = settings_for(redis_8, CYCLE_TIME_BUDGET_SEC=0.01, RECLAIM_PAGE_SIZE=1000)
    summary = StreamsCycle(RedisConnection(settings), settings).run()
    assert ("budget", 1000) == (summary.stopped_by, summary.counts.claimed)
    again = StreamsCycle(RedisConnection(settings), settings).run()
    assert 1000 == again.counts.claimed  # the refused pages come next, not skipped


# 9. /metrics with Redis down, and a stream name that is not UTF-8.
def test_metrics_answer_with_redis_down(redis_8: LocalRedis) -> None:
    env = environment_for(
        redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10", REDIS_HOST=f"127.0.0.1:{free_port()}",
        REDIS_TIMEOUT_SEC="1",
    )  # fmt: skip
    host = FunctionsHost(env).start()
    try:
        answer = host.request("GET", "/metrics")
    finally:
        host.stop()
    text = answer.body.decode()
    assert 200 == answer.status, text
    assert "tweets_monitor_redis_up 0.0" in text
    assert "tweets_monitor_pending_entries{" not in text


def test_a_stream_name_that_is_not_utf8_is_swept(redis_8: LocalRedis, client8: redis.Redis) -> None:
    name = b"tweets_stream:\xff\xfe"
    command(client8, "XGROUP", "CREATE", name, GROUP, "$", "MKSTREAM")
    abandon(client8, name, GROUP, [tweet(n) for n in range(100, 103)])  # type: ignore[arg-type]
    shard_backlog(client8, [2])
    settings = streams_settings(redis_8.address, "tweets_stream:*")
    summary = StreamsCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert 5 == summary.counts.processed
    assert 5 == len(tweet_keys(client8))
    assert summary.streams is not None
    assert "tweets_stream:\\xff\\xfe" in summary.streams  # shown escaped


# 10. check on Redis 6.0 and 6.2.
@pytest.mark.parametrize("version", ["6.0", "6.2"])
def test_check_passes_a_user_with_every_right_on_redis_6(version: str) -> None:
    server = LocalRedis(BINARIES[version]())
    server.start()
    try:
        with server.client() as client:
            create_group(client, STREAM, GROUP)
            command(client, "ACL", "SETUSER", "almost", "on", ">pw", "~*", "+@all", "-hset")
        everything = cli(server, "check")
        assert 0 == everything.returncode, everything.stdout
        assert "PASS  permissions" in everything.stdout
        almost = cli(server, "check", REDIS_USERNAME="almost", REDIS_PASSWORD="pw")
        assert 1 == almost.returncode, almost.stdout
        assert "FAIL  permissions" in almost.stdout
    finally:
        server.cleanup()


# 2. A stalled Redis answers 503 within 3 x REDIS_TIMEOUT_SEC + 1 s, the lease release included.
def test_a_server_that_stops_answering_mid_cycle_answers_503_within_three_timeouts(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    timeout = 2
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [tweet(n) for n in range(60_000)])
    proxy = FaultyProxy(redis_8.port)
    env = environment_for(
        redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10", REDIS_HOST=proxy.address,
        REDIS_TIMEOUT_SEC=str(timeout), CYCLE_TIME_BUDGET_SEC="60", RECLAIM_PAGE_SIZE="500",
    )  # fmt: skip
    host = FunctionsHost(env).start()
    try:
        thread, answers = host.invoke_in_background()
        wait_until_claiming(client8, STREAM, GROUP, MONITOR)
        proxy.stall()
        stalled_at = time.monotonic()
        thread.join(timeout=120)
        answered_after = time.monotonic() - stalled_at
    finally:
        proxy.heal()
        host.stop()
        proxy.close()
    assert 503 == answers[0].status, answers[0].body
    assert answered_after <= 3 * timeout + 1, answered_after


# 4. Entra ID: a refused sign-in leaves no token-renewal thread behind.
def test_refused_entra_id_sign_ins_leave_no_renewal_thread_behind(
    redis_8: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = IdentityEndpoint([])  # issues tokens that no Redis user accepts: every sign-in is refused
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.start())
    monkeypatch.setenv("IDENTITY_HEADER", HEADER_SECRET)
    settings = settings_for(redis_8, REDIS_AUTH="managed-identity", AZURE_CLIENT_ID=CLIENT_ID)
    connection = RedisConnection(settings)
    cycle = StreamsCycle(connection, settings)
    try:
        refused = (redis.exceptions.AuthenticationError, RedisUnavailableError)
        with pytest.raises(refused):
            cycle.run()  # the first sign-in starts what it needs
        before = threading.active_count()
        for _ in range(5):
            with pytest.raises(refused, match="invalid username-password pair"):
                cycle.run()
        assert before == threading.active_count()
    finally:
        connection.close()
        endpoint.stop()


@pytest.mark.parametrize(
    "pasted",
    [
        "mycache.redis.cache.windows.net:6380,password={key},ssl=True,abortConnect=False",
        "rediss://:{key}@mycache.redis.cache.windows.net:6380/0?ssl_cert_reqs=required",
        "monitor:{key}@mycache.redis.cache.windows.net:6380",
    ],
)
def test_no_form_of_a_pasted_key_is_echoed(pasted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the operator reads at start (load_settings' message), for a connection string and two URLs."""
    key = "Zm9vYmFyc2VjcmV0a2V5MTIzNDU2Nzg5MA=="
    for name, value in {
        **PIPELINE_NAMES,
        "MIN_IDLE_TIME_SEC": "10",
        "REDIS_HOST": pasted.format(key=key),
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "REDIS_PASSWORD" in str(refused.value)
    assert key[:12] not in str(refused.value)


def test_metrics_skip_a_stream_of_another_pipeline_and_say_redis_is_up(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    shard_backlog(client8, [3])
    client8.xadd("tweets_stream:other", {"a": "b"})  # matched by the pattern, without our group
    settings = streams_settings(redis_8.address, "tweets_stream:*")
    metrics = Metrics()
    connection = RedisConnection(settings)
    try:
        metrics.watch_group(connection, settings)
        text = generate_latest(metrics.registry).decode()
    finally:
        connection.close()
    assert "tweets_monitor_redis_up 1.0" in text
    assert 'tweets_monitor_pending_entries{stream="tweets_stream:0"} 3.0' in text


def test_the_hosts_logs_of_one_invocation_are_capped() -> None:
    with capture_logs("cap-test") as lines:
        configure_logging(logging.INFO, info_to_stdout=False)
        for n in range(MAX_CAPTURED_LINES + 500):
            logging.getLogger("tests.cap").info("line %d", n)
    assert MAX_CAPTURED_LINES + 1 == len(lines)
    assert "more log lines" in lines[-1]
