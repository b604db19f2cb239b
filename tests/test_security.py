"""Security: loopback only, only the host's routes, secrets never in any output, a least-privilege
ACL user, and TLS against real TLS servers (Debian's redis-server 7.0.15): 1.2-only and 1.3-only servers
work, a certificate for another host name and an untrusted CA are refused with a clear error."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.host import APP_ROOT, FunctionsHost, completed, failed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM
from handler.dev.tls import Certificates, tls_server
from handler.functions.app import create_app
from handler.settings import MonitorSettings
from handler.transport.connect import connect
from tests import pipeline
from tests.acl import ACL_RULE, access_policy_permissions
from tests.pipeline import age, crash_after_reading, create_group, produce, tweet, tweet_keys
from tests.reliability import SECURITY_CHECKS

NAMES = PIPELINE_NAMES


def reclaim(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "handler", "reclaim"]
    return subprocess.run(command, env=env, cwd=APP_ROOT, capture_output=True, text=True, timeout=60)


def abandon(client: redis.Redis, count: int) -> list[bytes]:
    create_group(client, STREAM, GROUP)
    return pipeline.abandon(client, STREAM, GROUP, [tweet(n) for n in range(count)])


def test_the_handler_listens_on_loopback_only(redis_8: LocalRedis) -> None:
    host = FunctionsHost(environment_for(redis_8, MIN_IDLE_TIME_SEC="10", **NAMES)).start()
    try:
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) == host.port:  # 0A: LISTEN
                    listening.append(address)
        assert ["0100007F"] == listening  # 127.0.0.1, and nothing on any other address or on IPv6
    finally:
        host.stop()
    SECURITY_CHECKS.append("the handler listens on 127.0.0.1 only (read from /proc/net/tcp)")


def test_only_the_hosts_routes_and_metrics_are_served_and_no_api_docs() -> None:
    settings = MonitorSettings(REDIS_HOST="localhost", MIN_IDLE_TIME_SEC=10, **NAMES)  # type: ignore[arg-type]
    app = create_app(settings)
    assert {"/", "/monitor", "/metrics"} == {getattr(route, "path", None) for route in app.routes}
    assert (None, None, None) == (app.docs_url, app.redoc_url, app.openapi_url)
    SECURITY_CHECKS.append("routes: GET /, POST /monitor and GET /metrics only; no OpenAPI, docs or redoc")


def test_secrets_never_appear_in_logs_answers_or_the_cli_output(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    secret, wrong = "S3cr3t-Passw0rd-7f1c", "Wr0ng-Passw0rd-9b2d"
    client8.execute_command("ACL", "SETUSER", "monitor", "reset", *ACL_RULE.format(password=secret).split())  # type: ignore[no-untyped-call]
    abandon(client8, 5)
    outputs: list[str] = []
    base = {**NAMES, "MIN_IDLE_TIME_SEC": "10", "LOG_LEVEL": "DEBUG", "REDIS_USERNAME": "monitor"}
    try:
        for password in (secret, wrong):
            host = FunctionsHost(environment_for(redis_8, REDIS_PASSWORD=password, **base)).start()
            answers = [host.invoke(), host.invoke(raw=b"{"), host.request("GET", "/")]
            host.stop()
            outputs += [host.stdout, host.stderr, *(a.body.decode(errors="replace") for a in answers)]
            if password == secret:
                assert 5 == completed(answers[0])["processed"]
            else:
                assert "AuthenticationError" in failed(answers[0])
            for target in (redis_8.address, f"127.0.0.1:{free_port()}"):
                env = environment_for(redis_8, REDIS_PASSWORD=password, REDIS_HOST=target, **base)
                done = reclaim(env)
                outputs += [done.stdout, done.stderr]
        bad = environment_for(redis_8, REDIS_PASSWORD=secret, **{**base, "MIN_IDLE_TIME_SEC": secret})
        done = subprocess.run(
            [sys.executable, "-m", "handler", "serve"], env=bad, capture_output=True, text=True, timeout=60
        )
        assert 2 == done.returncode
        outputs += [done.stdout, done.stderr]
    finally:
        client8.execute_command("ACL", "DELUSER", "monitor")  # type: ignore[no-untyped-call]
    everything = "\n".join(outputs)
    assert "reclaim cycle" in everything  # the outputs are really there
    assert secret not in everything
    assert wrong not in everything
    SECURITY_CHECKS.append(
        f"secrets: {len(outputs)} outputs (logs at DEBUG, answers, CLI) grepped, no password"
    )


def test_a_least_privilege_acl_user_is_enough(redis_8: LocalRedis, client8: redis.Redis) -> None:
    client8.execute_command("ACL", "SETUSER", "monitor", "reset", *ACL_RULE.format(password="pw").split())  # type: ignore[no-untyped-call]
    try:
        ids = abandon(client8, 20)
        client8.xdel(STREAM, ids[0])
        produce(client8, STREAM, [[b"text", b"no id"]])
        crash_after_reading(client8, STREAM, GROUP, "consumer-crashed", 1)
        age(client8, STREAM, GROUP, "consumer-crashed", list(ids[1:]), 60_000)
        env = environment_for(
            redis_8, MIN_IDLE_TIME_SEC="0", REDIS_USERNAME="monitor", REDIS_PASSWORD="pw", **NAMES
        )
        host = FunctionsHost(env).start()
        try:
            summary = completed(host.invoke())
        finally:
            host.stop()
        assert (19, 1, 1) == (summary["processed"], summary["deleted"], summary["dead_lettered"])
        assert 19 == len(tweet_keys(client8))
    finally:
        client8.execute_command("ACL", "DELUSER", "monitor")  # type: ignore[no-untyped-call]
    documented = (APP_ROOT / "docs" / "security.md").read_text()
    assert ACL_RULE.format(password="<password>") in documented  # the documented rule is the tested one
    assert access_policy_permissions() in documented  # and so is the access policy's permission string
    SECURITY_CHECKS.append("ACL: a user limited to the documented commands and keys runs a full cycle")


@pytest.fixture(scope="module", params=["TLSv1.2", "TLSv1.3"])
def tls_redis(
    request: pytest.FixtureRequest, tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> Iterator[LocalRedis]:
    server = tls_server(
        tls_binary, certificates.server_cert, certificates.server_key, certificates.ca, request.param
    )
    yield server
    server.cleanup()


def tls_settings(server: LocalRedis, ca: Path, **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        **NAMES,
        "REDIS_HOST": server.address,
        "REDIS_TLS": True,
        "REDIS_TLS_CA_FILE": str(ca),
        "MIN_IDLE_TIME_SEC": 10,
        **overrides,
    }
    return MonitorSettings(**values)


def test_tls_servers_offering_only_12_or_only_13_both_work(
    tls_redis: LocalRedis, certificates: Certificates
) -> None:
    settings = tls_settings(tls_redis, certificates.ca)
    client = connect(settings)
    assert isinstance(client, redis.Redis)  # detected: a single node
    client.flushall()
    abandon(client, 10)
    env = environment_for(
        tls_redis, REDIS_TLS="true", REDIS_TLS_CA_FILE=str(certificates.ca), MIN_IDLE_TIME_SEC="10", **NAMES
    )
    host = FunctionsHost(env).start()
    try:
        assert 10 == completed(host.invoke())["processed"]
    finally:
        host.stop()
    connection: Any = client.connection_pool.get_connection()
    context: ssl.SSLContext = connection._sock.context
    assert ssl.TLSVersion.TLSv1_2 == context.minimum_version  # checked on the context itself
    assert ssl.CERT_REQUIRED == context.verify_mode
    assert context.check_hostname
    version = connection._sock.version()
    client.connection_pool.release(connection)
    client.close()
    protocols = tls_redis.extra_args[tls_redis.extra_args.index("--tls-protocols") + 1]
    assert protocols == version  # the handshake used the only protocol the server offers
    SECURITY_CHECKS.append(
        f"TLS: a {protocols}-only server works; the client context requires TLS 1.2+, "
        "verifies certificates and host names"
    )


@pytest.mark.parametrize("fault", ["other-host-name", "untrusted-ca"])
def test_a_wrong_certificate_is_refused_with_a_clear_error(
    fault: str, tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> None:
    if fault == "other-host-name":
        server = tls_server(
            tls_binary,
            certificates.other_host_cert,
            certificates.other_host_key,
            certificates.ca,
            "TLSv1.2 TLSv1.3",
        )
        trusted, expected = certificates.ca, r"(?i)hostname|IP address mismatch|doesn't match"
    else:
        server = tls_server(
            tls_binary, certificates.server_cert, certificates.server_key, certificates.ca, "TLSv1.2 TLSv1.3"
        )
        trusted, expected = certificates.untrusted_ca, r"(?i)certificate verify failed"
    try:
        env = environment_for(
            server,
            REDIS_TLS="true",
            REDIS_TLS_CA_FILE=str(trusted),
            MIN_IDLE_TIME_SEC="10",
            REDIS_TIMEOUT_SEC="2",
            **NAMES,
        )
        done = reclaim(env)
        assert 1 == done.returncode
        assert re.search(expected, done.stderr), done.stderr
        assert "is unavailable" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        server.cleanup()
    SECURITY_CHECKS.append(f"TLS: {fault} refused with a clear error, exit 1")


def test_the_access_policy_string_grants_what_the_monitor_needs(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """Azure's data access policy takes commands and keys only: given to a user the way the service does
    (on, a password, nothing else), `check --user` (ACL DRYRUN, as an administrator) passes it."""
    create_group(client8, STREAM, GROUP)
    permissions = access_policy_permissions().split()
    client8.execute_command("ACL", "SETUSER", "policy", "reset", "on", ">pw", *permissions)  # type: ignore[no-untyped-call]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "handler", "check", "--user", "policy"],
            env=environment_for(redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10"), cwd=APP_ROOT,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        client8.execute_command("ACL", "DELUSER", "policy")  # type: ignore[no-untyped-call]
    line = next(x for x in done.stdout.splitlines() if "permissions" in x)
    assert line.startswith("PASS"), done.stdout
