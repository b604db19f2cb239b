"""TLS where the address dialled is not the name the certificate carries: a cluster announces its nodes'
IPs while their certificates name only a host name (as Azure's clustered caches do). Every node's
certificate is verified against REDIS_TLS_SERVER_NAME, or else REDIS_HOST's host name, never against the
announced address and never with verification turned off. The certificates here carry no IP address."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from handler.dev.host import APP_ROOT
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, STREAM
from handler.dev.tls import Certificates, issue_certificate, local_tls_cluster, tls_server
from handler.reclaim.cycle import ReclaimCycle
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection, connect
from tests.backlogs import DEAD_LETTER, FAST, NAMES, abandon_backlog
from tests.pipeline import create_group
from tests.reliability import SECURITY_CHECKS, audit


def harness_options(ca: Path) -> dict[str, Any]:
    """The test's own set-up clients dial 127.0.0.1, which these certificates do not name: they check the
    chain against the CA but not the name. The monitor's clients, the subject, are built by connect()."""
    return {"ssl": True, "ssl_ca_certs": str(ca), "ssl_check_hostname": False}


@pytest.fixture(scope="module")
def localhost_cluster(
    tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> Iterator[LocalCluster]:
    """Three TLS-only masters whose certificate says `DNS:localhost` and nothing else; the cluster
    announces them as 127.0.0.1."""
    cert, key = issue_certificate(certificates.ca.parent, "localhost-only", "DNS:localhost")
    cluster = local_tls_cluster(
        tls_binary,
        cert,
        key,
        certificates.ca,
        replicas_per_master=0,
        client_options=harness_options(certificates.ca),
    )
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def some_name_server(
    tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> Iterator[LocalRedis]:
    """One TLS node whose certificate says `DNS:some-name` and nothing else."""
    cert, key = issue_certificate(certificates.ca.parent, "some-name-only", "DNS:some-name")
    server = tls_server(tls_binary, cert, key, certificates.ca, "TLSv1.2 TLSv1.3")
    yield server
    server.cleanup()


def tls_settings(host: str, ca: Path, **overrides: str) -> MonitorSettings:
    values = {"REDIS_HOST": host, "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(ca), **NAMES, **FAST}
    return MonitorSettings(**{**values, **overrides})  # type: ignore[arg-type]


def live_socket(client: redis.Redis) -> Any:
    """The TLS socket of one of the client's pooled connections, opened for the asking."""
    connection: Any = client.connection_pool.get_connection()
    connection.connect()
    sock = connection._sock
    client.connection_pool.release(connection)
    return sock


def assert_verified_as(sock: Any, name: str) -> None:
    """The handshake asked for `name` (SNI and the name checked), with verification on: the socket is
    connected to 127.0.0.1, which the certificate does not carry."""
    assert "127.0.0.1" == sock.getpeername()[0]
    assert name == sock.server_hostname
    assert ssl.CERT_REQUIRED == sock.context.verify_mode
    assert sock.context.check_hostname


@pytest.mark.parametrize("mode", ["detect", "on"])
def test_a_cluster_announcing_ips_is_verified_against_redis_hosts_name(
    mode: str, localhost_cluster: LocalCluster, certificates: Certificates
) -> None:
    client = localhost_cluster.client()
    client.flushall()
    create_group(client, STREAM, GROUP)
    backlog = abandon_backlog(client, 1000)  # produced, read by a processor that crashed, aged
    port = localhost_cluster.masters[0].port
    settings = tls_settings(f"localhost:{port}", certificates.ca, REDIS_CLUSTER=mode)
    monitor = connect(settings)
    assert isinstance(monitor, RedisCluster)
    summary = ReclaimCycle(RedisConnection(settings, monitor), settings).run()
    assert (1000, len(backlog.bad), 0) == (
        summary.counts.processed,
        summary.counts.dead_lettered,
        summary.counts.failed,
    )
    primaries = monitor.get_primaries()  # type: ignore[no-untyped-call]
    assert 3 == len(primaries)
    for node in primaries:
        assert "127.0.0.1" == node.host  # dialled at the announced address...
        assert_verified_as(live_socket(monitor.get_redis_connection(node)), "localhost")  # ...named so
    pools = [monitor.get_redis_connection(node).connection_pool for node in primaries]
    monitor.close()
    for pool in pools:  # closing the client closes every node's connections
        assert all(connection._sock is None for connection in pool._available_connections)
    result = audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad)
    client.close()
    assert result.clean, result
    SECURITY_CHECKS.append(
        f"TLS cluster announcing 127.0.0.1, certificates naming only localhost (REDIS_CLUSTER={mode}): "
        "every node verified against REDIS_HOST's name, a full cycle"
    )


def test_redis_tls_server_name_is_the_name_verified_where_redis_host_is_an_ip(
    some_name_server: LocalRedis, certificates: Certificates
) -> None:
    client = some_name_server.client(**harness_options(certificates.ca))
    client.flushall()
    create_group(client, STREAM, GROUP)
    backlog = abandon_backlog(client, 200)
    settings = tls_settings(some_name_server.address, certificates.ca, REDIS_TLS_SERVER_NAME="some-name")
    monitor = connect(settings)  # REDIS_CLUSTER=detect: the probe is verified the same way
    assert isinstance(monitor, redis.Redis)
    summary = ReclaimCycle(RedisConnection(settings, monitor), settings).run()
    assert (200, len(backlog.bad)) == (summary.counts.processed, summary.counts.dead_lettered)
    assert_verified_as(live_socket(monitor), "some-name")
    monitor.close()
    assert audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad).clean
    client.close()
    SECURITY_CHECKS.append("TLS: REDIS_TLS_SERVER_NAME is the name verified when REDIS_HOST is an IP")


def test_redis_tls_server_name_names_every_node_of_a_cluster(
    localhost_cluster: LocalCluster, certificates: Certificates
) -> None:
    """The handler itself (the CLI's reclaim), REDIS_HOST an IP, the nodes' name in REDIS_TLS_SERVER_NAME."""
    client = localhost_cluster.client()
    client.flushall()
    create_group(client, STREAM, GROUP)
    backlog = abandon_backlog(client, 500)
    done = reclaim(
        localhost_cluster.address,
        certificates.ca,
        REDIS_TLS_SERVER_NAME="localhost",
        REDIS_CLUSTER="on",
    )
    assert 0 == done.returncode, done.stderr
    assert audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad).clean
    client.close()


def reclaim(host: str, ca: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **NAMES,
        **FAST,
        "REDIS_HOST": host,
        "REDIS_TLS": "true",
        "REDIS_TLS_CA_FILE": str(ca),
        "REDIS_TIMEOUT_SEC": "2",
        **settings,
    }
    command = [sys.executable, "-m", "handler", "reclaim"]
    return subprocess.run(command, env=env, cwd=APP_ROOT, capture_output=True, text=True, timeout=60)


HOST_NAME_MISMATCH = "Hostname mismatch, certificate is not valid for '{}'"
IP_MISMATCH = "IP address mismatch, certificate is not valid for '{}'"


@pytest.mark.parametrize(
    ("target", "settings", "expected"),
    [
        # No name configured and REDIS_HOST an IP: verified against that IP, which the certificate lacks.
        ("some-name server", {}, IP_MISMATCH.format("127.0.0.1")),
        (
            "some-name server",
            {"REDIS_TLS_SERVER_NAME": "other.example"},
            HOST_NAME_MISMATCH.format("other.example"),
        ),
        ("localhost cluster", {"REDIS_CLUSTER": "on"}, IP_MISMATCH.format("127.0.0.1")),
        (
            "localhost cluster",
            {"REDIS_CLUSTER": "on", "REDIS_HOST": "localhost", "REDIS_TLS_SERVER_NAME": "some-name"},
            HOST_NAME_MISMATCH.format("some-name"),
        ),
    ],
)
def test_a_certificate_for_another_name_is_still_refused(
    target: str,
    settings: dict[str, str],
    expected: str,
    request: pytest.FixtureRequest,
    certificates: Certificates,
) -> None:
    if target == "some-name server":
        address = request.getfixturevalue("some_name_server").address
    else:
        address = request.getfixturevalue("localhost_cluster").address
    if settings.get("REDIS_HOST") == "localhost":
        settings = {**settings, "REDIS_HOST": "localhost:" + address.rsplit(":", 1)[1]}
    done = reclaim(address, certificates.ca, **settings)
    assert 1 == done.returncode, done.stdout
    assert "certificate verify failed" in done.stderr, done.stderr
    assert re.search(re.escape(expected), done.stderr), done.stderr
    assert "is unavailable" in done.stderr
    assert "Traceback" not in done.stderr
    SECURITY_CHECKS.append(f"TLS: a {target} refused with a clear error: {expected}")
