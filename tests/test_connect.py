"""The Redis client built from the settings: TLS by default, 1.2 or newer, certificates verified."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import redis
from pydantic import SecretStr
from redis.connection import SSLConnection

from handler.settings import MonitorSettings
from handler.transport.connect import connect as connect_any


def connect(settings: MonitorSettings) -> redis.Redis:
    client = connect_any(settings)
    assert isinstance(client, redis.Redis)
    return client


BASE: dict[str, Any] = {
    "REDIS_HOST": "myredis.redis.cache.windows.net:6380",
    "STREAM_NAME": "tweets_stream",
    "STREAM_CONSUMER_GROUP_NAME": "redisearch_app_group",
    "MONITORING_CONSUMER_NAME": "monitoring_app",
    "MIN_IDLE_TIME_SEC": 10,
    "REDIS_CLUSTER": "off",  # no server behind these names: detect would ask one
}


def test_tls_is_on_by_default_requires_12_and_verifies_certificates_and_host_names() -> None:
    client = connect(MonitorSettings(**BASE))
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert pool.connection_class is SSLConnection
    assert ssl.TLSVersion.TLSv1_2 == kwargs["ssl_min_version"]
    assert "required" == kwargs["ssl_cert_reqs"]
    assert kwargs["ssl_check_hostname"] is True
    assert ("myredis.redis.cache.windows.net", 6380) == (kwargs["host"], kwargs["port"])
    assert 2 == kwargs["protocol"]  # RESP2: what every server and proxy speaks
    client.close()


def test_a_private_ca_file_and_credentials_are_passed_on(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # read by the TLS handshake, not here
    settings = MonitorSettings(
        **BASE,
        REDIS_TLS_CA_FILE=str(ca),
        REDIS_USERNAME="monitor",
        REDIS_PASSWORD=SecretStr("pw"),
    )
    kwargs = connect(settings).connection_pool.connection_kwargs
    assert (str(ca), "monitor", "pw") == (
        kwargs["ssl_ca_certs"],
        kwargs["username"],
        kwargs["password"],
    )


def test_tls_off_for_a_local_server_and_no_auth_without_a_password() -> None:
    local = {**BASE, "REDIS_HOST": "127.0.0.1:6379", "REDIS_TLS": False}  # plaintext only to this machine
    kwargs_pool = connect(MonitorSettings(**local)).connection_pool
    assert kwargs_pool.connection_class is not SSLConnection
    assert kwargs_pool.connection_kwargs["password"] is None
