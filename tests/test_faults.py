"""Faults injected for real: SIGKILL mid-cycle, Redis killed and restarted, connections cut
mid-pipeline and stalled, several monitors at once with one frozen mid-page. Afterwards nothing is lost,
nothing is written wrong, and no dead letter is duplicated."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.host import FunctionsHost, completed, failed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, MONITOR, PIPELINE_NAMES, STREAM
from handler.errors import RedisUnavailableError
from handler.reclaim.streams import StreamsCycle
from handler.transport.connect import RedisConnection
from tests import pipeline
from tests.backlogs import DEAD_LETTER, FAST, Backlog, abandon_backlog, drain, pending_count
from tests.conftest import settings_for
from tests.pipeline import (
    abandon,
    command,
    create_group,
    expected_hash,
    pending_ids_of,
    produce,
    tweet,
)
from tests.proxy import FaultyProxy
from tests.reliability import Audit, audit, record


def check(client: redis.Redis, backlog: Backlog, fault: str, repetitions: int) -> Audit:
    result = audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad)
    record(fault, repetitions, backlog.size, result)
    assert result.clean, result
    return result


def wait_until_claiming(client: redis.Redis, consumer: str = MONITOR) -> None:
    pipeline.wait_until_claiming(client, STREAM, GROUP, consumer)


@pytest.fixture
def fresh(client8: redis.Redis) -> redis.Redis:
    create_group(client8, STREAM, GROUP)
    return client8


def test_the_handler_killed_mid_cycle_loses_nothing(redis_8: LocalRedis, fresh: redis.Redis) -> None:
    rng = random.Random(20261127)
    backlog = abandon_backlog(fresh, 60_000)
    env = environment_for(
        redis_8,
        STREAM_NAME=STREAM,
        STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR,
        RECLAIM_PAGE_SIZE="200",
        **FAST,
    )
    kills, attempts = 6, 0  # fewer than MAX_DELIVERIES, so no valid tweet legitimately turns poison
    while kills and attempts < 15:
        attempts += 1
        host = FunctionsHost(env).start()
        host.invoke_in_background()
        wait_until_claiming(fresh)
        time.sleep(rng.uniform(0.0, 0.08))
        host.stop(signal.SIGKILL)
        if pending_ids_of(fresh, STREAM, GROUP, MONITOR):
            kills -= 1  # this kill hit claimed work that was not yet acknowledged
        time.sleep(1.05)  # the killed holder's lease expires; its claimed entries become idle again
    assert 0 == kills, f"only {6 - kills} of {attempts} kills hit work in flight"
    assert pending_count(fresh) > 0  # and the kills left work for the survivors
    host = FunctionsHost(env).start()
    try:
        drain(host, fresh)
    finally:
        host.stop()
    check(fresh, backlog, "handler SIGKILLed mid-cycle, at seeded random moments", 6)


def test_redis_killed_and_restarted_mid_cycle_loses_nothing(redis_8: LocalRedis, tmp_path: Path) -> None:
    rng = random.Random(7)
    port = free_port()
    server = LocalRedis(redis_8.binary, port=port, directory=tmp_path, persistent=True).start()
    client = server.client()
    try:
        create_group(client, STREAM, GROUP)
        backlog = abandon_backlog(client, 30_000)
        env = environment_for(
            server,
            STREAM_NAME=STREAM,
            STREAM_CONSUMER_GROUP_NAME=GROUP,
            MONITORING_CONSUMER_NAME=MONITOR,
            RECLAIM_PAGE_SIZE="300",
            **FAST,
        )
        host = FunctionsHost(env).start()
        restarts = 3
        for _ in range(restarts):
            thread, answers = host.invoke_in_background()
            wait_until_claiming(client)
            time.sleep(rng.uniform(0.0, 0.1))
            server.stop(kill=True)  # SIGKILL: only what appendfsync always made durable survives
            thread.join(timeout=30)
            assert not thread.is_alive(), "the invocation must end in bounded time"
            assert 503 == answers[0].status, answers[0].body
            assert answers[0].seconds < 15
            server.start()
            client = server.client()
            time.sleep(1.05)
        drain(host, client)
        host.stop()
        assert host.alive() is False
        check(client, backlog, "Redis SIGKILLed mid-cycle (AOF, fsync always) and restarted", restarts)
    finally:
        client.close()
        server.stop()


@pytest.fixture
def proxied(redis_8: LocalRedis, fresh: redis.Redis) -> Iterator[tuple[FaultyProxy, FunctionsHost]]:
    proxy = FaultyProxy(redis_8.port)
    env = environment_for(
        redis_8,
        STREAM_NAME=STREAM,
        STREAM_CONSUMER_GROUP_NAME=GROUP,
        MONITORING_CONSUMER_NAME=MONITOR,
        REDIS_HOST=proxy.address,
        **FAST,
    )
    host = FunctionsHost(env).start()
    yield proxy, host
    host.stop()
    proxy.close()


def test_connections_cut_mid_pipeline_lose_nothing(
    proxied: tuple[FaultyProxy, FunctionsHost], fresh: redis.Redis
) -> None:
    proxy, host = proxied
    rng = random.Random(42)
    backlog = abandon_backlog(fresh, 20_000)
    cuts = 5
    for _ in range(cuts):
        proxy.cut_after(rng.randint(20_000, 400_000))  # every connection dies after that many bytes
        answer = host.invoke()
        assert 503 == answer.status, answer.body
        assert "Connection" in answer.json["error"]
        assert answer.seconds < 10
        proxy.heal()
        time.sleep(1.05)
    assert proxy.cuts >= cuts
    drain(host, fresh)
    check(fresh, backlog, "connections reset mid-pipeline by a proxy", cuts)


def test_a_blip_is_ridden_out_by_retrying_on_a_fresh_connection(
    proxied: tuple[FaultyProxy, FunctionsHost], fresh: redis.Redis
) -> None:
    proxy, host = proxied
    backlog = abandon_backlog(fresh, 5_000)
    healer = threading.Timer(0.05, proxy.heal)
    proxy.cut_after(30_000)
    healer.start()  # the cut lasts a moment; the cycle's retries (0.1 s, 0.4 s) reach a healed path
    summary = completed(host.invoke())
    healer.join()
    time.sleep(1.05)
    drain(host, fresh)
    assert summary["processed"] > 0
    check(fresh, backlog, "a short connection blip mid-cycle (retried)", 1)


def test_a_blip_that_outlasts_the_first_retry_is_ridden_out_by_the_second(
    proxied: tuple[FaultyProxy, FunctionsHost], fresh: redis.Redis
) -> None:
    """Connections reset for 0.2 s from the first cut: the retry after 0.1 s meets the cut again, the one
    after a further 0.4 s a healed path, and the invocation completes."""
    proxy, host = proxied
    abandon_backlog(fresh, 5_000)

    def heal_after_the_first_cut() -> None:
        deadline = time.monotonic() + 60
        while not proxy.cuts and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)
        proxy.heal()

    healer = threading.Thread(target=heal_after_the_first_cut, daemon=True)
    proxy.cut_after(30_000)
    healer.start()
    summary = completed(host.invoke())
    healer.join()
    assert proxy.cuts > 0
    assert summary["processed"] > 0


def test_a_stalled_connection_fails_the_invocation_in_bounded_time(
    proxied: tuple[FaultyProxy, FunctionsHost], fresh: redis.Redis
) -> None:
    proxy, host = proxied
    backlog = abandon_backlog(fresh, 50_000)
    stalls = 2
    for _ in range(stalls):
        thread, answers = host.invoke_in_background()
        wait_until_claiming(fresh)
        proxy.stall()
        thread.join(timeout=60)
        assert 503 == answers[0].status, answers[0].body
        assert "Timeout" in answers[0].json["error"]
        assert answers[0].seconds < 20  # timeouts of 1 s, three attempts per step: far from 5 minutes
        proxy.heal()
        time.sleep(1.05)
    drain(host, fresh)
    check(fresh, backlog, "connections stalled past the client's timeouts by a proxy", stalls)


class LiveProcessors:
    """Producer and processors that keep working during the test: XADD, XREADGROUP, HSET, XACK."""

    def __init__(self, server: LocalRedis, count: int = 2) -> None:
        self.server = server
        self.stop_producing = threading.Event()
        self.stop = threading.Event()
        self.tweets: dict[bytes, dict[bytes, bytes]] = {}
        self.threads = [threading.Thread(target=self._produce, daemon=True)]
        self.threads += [
            threading.Thread(target=self._process, args=(f"consumer-live-{n}",), daemon=True)
            for n in range(count)
        ]
        self.errors: list[BaseException] = []

    def __enter__(self) -> LiveProcessors:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop producing, let the processors read what is left, then stop them: entries nobody has read
        are not pending, so they are the processors' work, not the monitor's."""
        self.stop_producing.set()
        self.threads[0].join(timeout=30)
        client = self.server.client()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (group,) = [g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode()]
            last: Any = client.xinfo_stream(STREAM)["last-generated-id"]
            if group["last-delivered-id"] == last:
                break
            time.sleep(0.05)
        client.close()
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, self.errors

    def _produce(self) -> None:
        client = self.server.client()
        number = 50_000_000
        while not self.stop_producing.is_set():
            batch = [tweet(n) for n in range(number, number + 50)]
            produce(client, STREAM, batch)
            for fields in batch:
                self.tweets[b"tweet:" + fields[3]] = expected_hash(fields)
            number += 50
            time.sleep(0.01)

    def _process(self, consumer: str) -> None:
        client = self.server.client()
        try:
            while not self.stop.is_set():
                reply = command(
                    client,
                    "XREADGROUP",
                    "GROUP",
                    GROUP,
                    consumer,
                    "COUNT",
                    100,
                    "BLOCK",
                    50,
                    "STREAMS",
                    STREAM,
                    ">",
                )
                for entry_id, fields in reply[0][1] if reply else []:
                    if fields[2:3] == [b"id"]:
                        command(client, "HSET", b"tweet:" + fields[3], *fields)
                    command(client, "XACK", STREAM, GROUP, entry_id)
        except BaseException as exc:
            self.errors.append(exc)


def test_several_monitors_at_once_with_one_frozen_mid_page(redis_8: LocalRedis, fresh: redis.Redis) -> None:
    backlog = abandon_backlog(fresh, 30_000)
    common = {"STREAM_NAME": STREAM, "STREAM_CONSUMER_GROUP_NAME": GROUP, "RECLAIM_PAGE_SIZE": "300", **FAST}
    frozen = FunctionsHost(
        environment_for(redis_8, MONITORING_CONSUMER_NAME="monitor-frozen", **common)
    ).start()
    others = [
        FunctionsHost(environment_for(redis_8, MONITORING_CONSUMER_NAME=name, **common)).start()
        for name in ("monitoring_app", "monitoring_app", "monitor-b")
    ]
    answers: list[Any] = []
    stop = threading.Event()

    def keep_invoking(host: FunctionsHost) -> None:
        while not stop.is_set():
            answers.append(host.invoke())
            time.sleep(0.05)

    cli_exit_codes: list[int] = []

    def keep_reclaiming_from_the_cli() -> None:
        env = environment_for(redis_8, MONITORING_CONSUMER_NAME="monitor-b", **common)
        while not stop.is_set():
            done = subprocess.run([sys.executable, "-m", "handler", "reclaim"], env=env, capture_output=True)
            cli_exit_codes.append(done.returncode)

    try:
        with LiveProcessors(redis_8) as live:
            thread, frozen_answers = frozen.invoke_in_background()
            wait_until_claiming(fresh, "monitor-frozen")
            frozen.send_signal(signal.SIGSTOP)  # frozen mid-page, holding claimed entries and the lease
            workers = [threading.Thread(target=keep_invoking, args=(h,), daemon=True) for h in others]
            workers.append(threading.Thread(target=keep_reclaiming_from_the_cli, daemon=True))
            for worker in workers:
                worker.start()
            time.sleep(2.5)  # past MIN_IDLE_TIME_SEC and LEASE_TTL_SEC: the others take over its work
            frozen.send_signal(signal.SIGCONT)
            thread.join(timeout=60)
            time.sleep(2)
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
        frozen_summary = completed(frozen_answers[0])  # it wakes up, loses its claims quietly and finishes
        assert frozen_summary["stopped_by"] in {"lease-lost", "end"}
        for answer in answers:
            completed(answer)  # no invocation failed: losing a claim race is not an error
        assert any("lease held by" in (completed(a)["skipped"] or "") for a in answers)
        assert cli_exit_codes and set(cli_exit_codes) == {0}
        time.sleep(1.05)
        drain(others[0], fresh)
    finally:
        for host in (frozen, *others):
            if host.alive():
                host.stop()
    everything = Backlog({**backlog.tweets, **live.tweets}, backlog.bad)
    monitors = "4 monitors (3 HTTP, 1 CLI; 3 consumer names), one frozen past min-idle, live processors"
    check(fresh, everything, monitors, 1)


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
        settings = settings_for(redis_8, PIPELINE_NAMES)
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
        settings = settings_for(replica, PIPELINE_NAMES)
        with pytest.raises(RedisUnavailableError, match="MASTERDOWN"):
            StreamsCycle(RedisConnection(settings), settings).run()
    finally:
        replica.cleanup()
        master.cleanup()


def test_a_server_that_stops_answering_mid_cycle_answers_503_within_three_timeouts(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    timeout = 2
    create_group(client8, STREAM, GROUP)
    abandon(client8, STREAM, GROUP, [tweet(n) for n in range(60_000)])
    proxy = FaultyProxy(redis_8.port)
    env = environment_for(
        redis_8,
        **PIPELINE_NAMES,
        MIN_IDLE_TIME_SEC="10",
        REDIS_HOST=proxy.address,
        REDIS_TIMEOUT_SEC=str(timeout),
        CYCLE_TIME_BUDGET_SEC="60",
        RECLAIM_PAGE_SIZE="500",
    )
    host = FunctionsHost(env).start()
    try:
        thread, answers = host.invoke_in_background()
        wait_until_claiming(client8)
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
