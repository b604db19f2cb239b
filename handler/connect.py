"""Building the Redis client from the settings; opened and closed at the edges (lifespan, CLI)."""

from __future__ import annotations

import ssl
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from handler.settings import MonitorSettings

# Connection errors and timeouts are retried this many times with backoff: every command the cycle sends is
# safe to repeat (see cycle.py), and the bound keeps a dead server from holding an invocation for long.
RETRIES = 2


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def connect(settings: MonitorSettings) -> redis.Redis:
    host, port = settings.redis_address
    client = redis.Redis(
        host=host,
        port=port,
        username=settings.REDIS_USERNAME or None,
        password=settings.REDIS_PASSWORD.get_secret_value() or None,
        ssl=settings.REDIS_TLS,
        ssl_min_version=ssl.TLSVersion.TLSv1_2,
        ssl_cert_reqs="required",
        ssl_check_hostname=True,
        ssl_ca_certs=settings.REDIS_TLS_CA_FILE or None,
        socket_timeout=settings.REDIS_TIMEOUT_SEC,
        socket_connect_timeout=settings.REDIS_TIMEOUT_SEC,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES),
        client_name="tweets-monitor",
        decode_responses=False,
        # RESP2, spoken by every server and proxy the monitor may meet (redis-py 8 would ask for RESP3);
        # the hot path parses replies itself and expects RESP2's shapes.
        protocol=2,
    )
    # The cycle parses these replies itself (plan.py): it needs XCLAIM's entries as flat field lists, so
    # repeated field names and nil entries (deleted before Redis 7.0) survive, and XPENDING in both forms;
    # the dead-letter tools read entries as flat field lists too.
    for name in ("XCLAIM", "XPENDING", "XRANGE", "XREVRANGE"):
        client.set_response_callback(name, _raw_reply)
    return client


def command(client: redis.Redis, *args: Any) -> Any:
    """One command through the client, its reply as connect() leaves it (raw for stream commands).

    redis-py's execute_command is untyped; this is the one place that says so.
    """
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
