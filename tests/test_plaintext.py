"""Plaintext only where it can be meant: REDIS_TLS=false reaches a server on this machine; another host only
when REDIS_ALLOW_PLAINTEXT=true says so (and `check` warns); Azure's host names and TLS ports never, whatever
is set. A TLS port met without TLS (a reset right after connecting) is said as such. Real servers and real
listeners: what reaches the wire is read there."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler.dev.host import APP_ROOT
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import PIPELINE_NAMES
from handler.dev.tls import Certificates, tls_server
from handler.errors import SettingsError
from handler.settings import MonitorSettings, load_settings
from tests.cli import cli
from tests.pipeline import create_group
from tests.test_security import ACCESS_KEY, Listener

NAMES = {**PIPELINE_NAMES, "MIN_IDLE_TIME_SEC": "10"}


def own_address() -> str:
    """This machine's address on its network (not loopback): where a UDP socket would leave from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: the kernel picks the route and its source
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "this machine has no address beyond loopback"
    return address


@pytest.fixture(scope="module")
def everywhere() -> Iterator[LocalRedis]:
    """Redis 8.2 listening on every address, without a password (protected mode off)."""
    every_address = ["--bind", "0.0.0.0", "--protected-mode", "no"]  # noqa: S104  (reached at own_address())
    server = LocalRedis(BINARIES["8.2"](), extra_args=every_address)
    server.start()
    yield server
    server.cleanup()


def test_plaintext_beyond_loopback_needs_an_explicit_yes_and_check_warns(everywhere: LocalRedis) -> None:
    """REDIS_TLS=false sent the password in cleartext to any host, and `check` said PASS."""
    client = everywhere.client()
    create_group(client, PIPELINE_NAMES["STREAM_NAME"], PIPELINE_NAMES["STREAM_CONSUMER_GROUP_NAME"])
    beyond = f"{own_address()}:{everywhere.port}"
    env = environment_for(everywhere, **NAMES, REDIS_HOST=beyond, REDIS_TLS="false")
    for args in (["reclaim"], ["check"], ["status"]):
        done = cli(env, *args)
        assert 2 == done.returncode, done.stdout + done.stderr
        assert "REDIS_ALLOW_PLAINTEXT" in done.stderr and "REDIS_TLS" in done.stderr, done.stderr
    env["REDIS_ALLOW_PLAINTEXT"] = "true"
    assert 0 == cli(env, "reclaim").returncode
    checked = cli(env, "check")
    line = next(x for x in checked.stdout.splitlines() if "connectivity" in x)
    assert line.startswith("WARN") and "cleartext" in line, checked.stdout
    assert 0 == checked.returncode, checked.stdout  # a warning, not a failure: it was asked for
    on_loopback = cli(environment_for(everywhere, **NAMES), "check")
    line = next(x for x in on_loopback.stdout.splitlines() if "connectivity" in x)
    assert line.startswith("PASS"), on_loopback.stdout
    client.close()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2:6380",  # Azure Cache for Redis' TLS port, even on this machine (a tunnel to Azure)
        "127.0.0.2:10000",  # Azure Managed Redis' and Enterprise's
    ],
)
def test_plaintext_to_a_tls_port_is_refused_whatever_is_set(host: str) -> None:
    """The access key went in cleartext to Azure's TLS ports; the only message was 'Connection reset'."""
    address, port = host.rsplit(":", 1)
    listener = Listener(address, int(port))
    try:
        env = {
            **os.environ,
            **NAMES,
            "REDIS_HOST": host,
            "REDIS_TLS": "false",
            "REDIS_PASSWORD": ACCESS_KEY,
            "REDIS_ALLOW_PLAINTEXT": "true",
            "REDIS_TIMEOUT_SEC": "1",
        }
        done = cli(env, "reclaim")
    finally:
        listener.close()
    assert ACCESS_KEY.encode() not in listener.received
    assert 2 == done.returncode, done.stdout + done.stderr
    assert "REDIS_TLS=true" in done.stderr, done.stderr
    assert 0 == listener.connections


AZURE_HOSTS = [
    "mycache.redis.cache.windows.net:6380",
    "mycache.redis.cache.windows.net:6379",
    "mycache.privatelink.redis.cache.windows.net:6380",
    "MyCache.Redis.Cache.Windows.Net.:6379",
    "mycache.westeurope.redis.azure.net:10000",
    "mycache.westeurope.redisenterprise.cache.azure.net:10000",
    "mycache.redis.cache.chinacloudapi.cn:6380",
    "mycache.redis.cache.usgovcloudapi.net:6380",
    "10.1.2.3:6380",
    "[::1]:10000",
]


@pytest.mark.parametrize("host", AZURE_HOSTS)
@pytest.mark.parametrize("allowed", ["", "true"])
def test_plaintext_to_azure_is_refused_at_start(
    host: str, allowed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in MonitorSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**NAMES, "REDIS_HOST": host, "REDIS_TLS": "false"}.items():
        monkeypatch.setenv(name, value)
    if allowed:
        monkeypatch.setenv("REDIS_ALLOW_PLAINTEXT", allowed)
    with pytest.raises(SettingsError, match="REDIS_TLS=true"):
        load_settings()


@pytest.mark.parametrize("host", ["127.0.0.1:6379", "localhost:6379", "[::1]:6379", "127.10.0.1"])
def test_plaintext_to_this_machine_needs_nothing_more(host: str) -> None:
    settings = MonitorSettings(REDIS_HOST=host, REDIS_TLS=False, **NAMES)  # type: ignore[arg-type]
    assert not settings.REDIS_TLS


def test_a_reset_right_after_connecting_suggests_tls(
    tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> None:
    """A TLS-only server dialled without TLS resets the connection: 'Connection reset by peer' was all."""
    server = tls_server(tls_binary, certificates.server_cert, certificates.server_key, certificates.ca)
    try:
        for cluster in ("detect", "off"):
            env = environment_for(server, **NAMES, REDIS_CLUSTER=cluster, REDIS_TIMEOUT_SEC="2")
            for args in (["reclaim"], ["check"], ["status"]):
                done = cli(env, *args)
                assert 1 == done.returncode, done.stdout + done.stderr
                assert "REDIS_TLS=true" in done.stdout + done.stderr, (
                    cluster,
                    args,
                    done.stdout + done.stderr,
                )
    finally:
        server.cleanup()


def test_a_tls_handshake_that_times_out_suggests_plaintext(redis_8: LocalRedis) -> None:
    """The other way round: a plaintext server (a local Redis on 6379) dialled with TLS, the default, never
    answers the handshake; 'Timeout connecting to server' was all, and REDIS_TLS went unsuspected."""
    env = environment_for(redis_8, **NAMES, REDIS_TLS="true", REDIS_TIMEOUT_SEC="1")
    for args in (["reclaim"], ["check"], ["status"]):
        done = cli(env, *args)
        assert 1 == done.returncode, done.stdout + done.stderr
        assert "REDIS_TLS=false" in done.stdout + done.stderr, (args, done.stdout + done.stderr)


def test_local_settings_json_plaintext_reaches_only_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """local.settings.json ships REDIS_TLS=false for a local server: pointed at an Azure cache as it is
    (REDIS_HOST edited, REDIS_TLS left), it is refused before the key goes anywhere."""
    values = json.loads((APP_ROOT / "local.settings.json").read_text())["Values"]
    for name in MonitorSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert not load_settings().REDIS_TLS  # as shipped: this machine, no TLS
    monkeypatch.setenv("REDIS_HOST", "mycache.redis.cache.windows.net:6380")
    with pytest.raises(SettingsError, match="REDIS_TLS=true"):
        load_settings()


@pytest.fixture(scope="module")
def cluster_announcing_beyond() -> Iterator[LocalCluster]:
    """Redis 8.2 as a cluster whose nodes announce this machine's network address, dialled through
    127.0.0.1: REDIS_HOST names loopback, the nodes it leads to are beyond it."""
    args = ["--bind", "0.0.0.0", "--protected-mode", "no", "--cluster-announce-ip", own_address()]  # noqa: S104
    with LocalCluster(BINARIES["8.2"](), extra_args=args) as cluster:
        yield cluster


def test_a_cluster_announcing_nodes_beyond_loopback_needs_the_explicit_yes(
    cluster_announcing_beyond: LocalCluster,
) -> None:
    """REDIS_HOST on loopback passed the plaintext rule, and the cycle then spoke plaintext to every node the
    cluster announced, wherever they were."""
    client = cluster_announcing_beyond.client()
    client.flushall()
    create_group(client, PIPELINE_NAMES["STREAM_NAME"], PIPELINE_NAMES["STREAM_CONSUMER_GROUP_NAME"])
    client.close()
    env = {
        **os.environ,
        **NAMES,
        "REDIS_HOST": cluster_announcing_beyond.address,
        "REDIS_TLS": "false",
        "REDIS_CLUSTER": "on",
    }
    for args in (["reclaim"], ["status"]):
        done = cli(env, *args)
        assert 2 == done.returncode, done.stdout + done.stderr
        assert "REDIS_ALLOW_PLAINTEXT" in done.stderr and own_address() in done.stderr, done.stderr
    env["REDIS_ALLOW_PLAINTEXT"] = "true"
    assert 0 == cli(env, "reclaim").returncode
    checked = cli(env, "check")
    line = next(x for x in checked.stdout.splitlines() if "connectivity" in x)
    assert line.startswith("WARN") and own_address() in line, checked.stdout
