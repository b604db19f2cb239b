"""Security: loopback only, only the host's routes, secrets never in any output, a least-privilege
ACL user, and TLS against real TLS servers (Debian's redis-server 7.0.15): 1.2-only and 1.3-only servers
work, a certificate for another host name and an untrusted CA are refused with a clear error."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.host import APP_ROOT, FunctionsHost, completed, failed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM
from handler.dev.tls import Certificates, tls_server
from handler.errors import SettingsError
from handler.functions.app import create_app
from handler.ops import rights
from handler.settings import MonitorSettings, load_settings
from handler.transport.connect import connect
from tests import pipeline
from tests.acl import ACL_RULE
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
    SECURITY_CHECKS.append("ACL: a user limited to the monitor's commands and keys runs a full cycle")


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
    permissions = rights.documented_rules()["access policy"].split()  # what docs/security.md shows
    client8.execute_command("ACL", "SETUSER", "policy", "reset", "on", ">pw", *permissions)  # type: ignore[no-untyped-call]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "handler", "check", "--user", "policy"],
            env=environment_for(redis_8, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC="10"),
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        client8.execute_command("ACL", "DELUSER", "policy")  # type: ignore[no-untyped-call]
    line = next(x for x in done.stdout.splitlines() if "permissions" in x)
    assert line.startswith("PASS"), done.stdout


# An Azure access key, and the connection string the portal shows around it: what gets pasted by mistake.
ACCESS_KEY = "Zm9vYmFyU2VjcmV0QWNjZXNzS2V5MTIzNDU2Nzg5MA="
CONNECTION_STRING = f"myredis.redis.cache.windows.net:6380,password={ACCESS_KEY},ssl=True,abortConnect=False"
# Short enough for a TLS server name (each label at most 63 characters): it went out in the handshake.
HOST_AND_KEY = f"myredis.redis.cache.windows.net:6380,password={ACCESS_KEY}"


class Listener:
    """A TCP listener on loopback that records every byte sent to it (a Redis that is not one)."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self._server = socket.socket()
        self._server.bind((address, port))
        self._server.listen(8)
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self.received = bytearray()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                peer, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            peer.settimeout(1)
            with peer:
                try:
                    while chunk := peer.recv(65536):
                        self.received += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


def handler_process(env: dict[str, str], *args: str, timeout: float = 30) -> tuple[int | None, str]:
    """Runs `python -m handler *args`; (exit code or None if still running at `timeout`, its output)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "handler", *args],
        env=env,
        cwd=APP_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return None, output
    return process.returncode, output


def test_a_connection_string_in_redis_tls_server_name_is_refused_never_echoed_never_sent(
    redis_8: LocalRedis,
) -> None:
    """It appeared in every error, 503 body and stderr, and went out in cleartext as the TLS server name."""
    listener = Listener()
    try:
        env = environment_for(
            redis_8,
            **NAMES,
            MIN_IDLE_TIME_SEC="10",
            REDIS_HOST=f"127.0.0.1:{listener.port}",
            REDIS_TLS="true",
            REDIS_TIMEOUT_SEC="1",
        )
        for value in (HOST_AND_KEY, CONNECTION_STRING):
            env["REDIS_TLS_SERVER_NAME"] = value
            for args in (["reclaim"], ["check"], ["status"], ["dead-letter", "list"], ["serve"]):
                code, output = handler_process(env, *args, timeout=20)
                assert ACCESS_KEY.encode() not in listener.received, args
                assert 2 == code, (args, output)
                assert "REDIS_TLS_SERVER_NAME" in output, output
                assert ACCESS_KEY not in output, output
                assert "password" not in output, output
    finally:
        listener.close()
    assert ACCESS_KEY.encode() not in listener.received
    assert 0 == listener.connections  # refused before anything is dialled
    SECURITY_CHECKS.append(
        "settings: a connection string in REDIS_TLS_SERVER_NAME refused unechoed, never sent"
    )


@pytest.mark.parametrize(
    "name",
    ["REDIS_TLS_SERVER_NAME", "REDIS_TLS_CA_FILE", "WEBSITE_TIME_ZONE", "REDIS_HOST", "METRICS_ADDRESS"],
)
def test_a_rejected_value_is_never_printed_only_its_shape(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting that refuses a pasted connection string names itself and the value's shape, never the
    value (REDIS_HOST shows the host part only)."""
    for field in MonitorSettings.model_fields:
        monkeypatch.delenv(field, raising=False)
    for key, value in {**NAMES, "REDIS_HOST": "myredis:10000", "MIN_IDLE_TIME_SEC": "10"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(name, CONNECTION_STRING)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert name in message
    assert ACCESS_KEY not in message, message
    if name not in ("REDIS_HOST", "METRICS_ADDRESS"):  # these say what is wrong with the value's form
        assert "characters" in message, message  # its shape


def test_every_setting_that_refuses_a_secret_keeps_it_to_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret pasted into any setting: whichever refuse it, none prints it."""
    refused = set()
    for name in MonitorSettings.model_fields:
        for field in MonitorSettings.model_fields:
            monkeypatch.delenv(field, raising=False)
        for key, value in {**NAMES, "REDIS_HOST": "myredis:10000", "MIN_IDLE_TIME_SEC": "10"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv(name, CONNECTION_STRING)
        try:
            load_settings()
        except SettingsError as exc:
            refused.add(name)
            assert ACCESS_KEY not in str(exc), (name, str(exc))
    assert {"REDIS_TLS_SERVER_NAME", "REDIS_TLS_CA_FILE", "WEBSITE_TIME_ZONE", "MIN_IDLE_TIME_SEC"} <= refused


def test_a_schedule_naming_a_secret_setting_is_not_echoed(redis_8: LocalRedis) -> None:
    """`run --schedule %REDIS_PASSWORD%`: the host's %NAME% is replaced, and the result was echoed."""
    env = environment_for(redis_8, **NAMES, MIN_IDLE_TIME_SEC="10", REDIS_PASSWORD=ACCESS_KEY)
    for schedule in ("%REDIS_PASSWORD%", "*/20 %REDIS_PASSWORD% * * * *"):
        code, output = handler_process(env, "run", "--schedule", schedule)
        assert 2 == code, output
        assert ACCESS_KEY not in output, output
        assert "%REDIS_PASSWORD%" in output, output  # the schedule as written is named


def test_redis_tls_ca_file_adds_to_the_systems_cas_as_the_docs_say(
    tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> None:
    """The system's CAs stay trusted beside REDIS_TLS_CA_FILE (the system's store played by SSL_CERT_FILE,
    which OpenSSL reads for it); docs/operate.md said the file was trusted 'instead of the system's'."""
    server = tls_server(
        tls_binary, certificates.server_cert, certificates.server_key, certificates.ca, "TLSv1.2 TLSv1.3"
    )
    try:
        client = server.client(ssl=True, ssl_ca_certs=str(certificates.ca))
        create_group(client, STREAM, GROUP)
        client.close()
        base = {**NAMES, "MIN_IDLE_TIME_SEC": "10", "REDIS_TLS": "true", "REDIS_TIMEOUT_SEC": "2"}
        system_only = environment_for(server, **base, SSL_CERT_FILE=str(certificates.untrusted_ca))
        assert 1 == reclaim(system_only).returncode  # the system's store decides without the file
        both = environment_for(
            server,
            **base,
            SSL_CERT_FILE=str(certificates.ca),
            REDIS_TLS_CA_FILE=str(certificates.untrusted_ca),
        )
        done = reclaim(both)
        assert 0 == done.returncode, done.stderr  # signed by a system CA, not the file's: still trusted
    finally:
        server.cleanup()
    rows = [line for line in (APP_ROOT / "docs" / "operate.md").read_text().splitlines()]
    row = next(line for line in rows if line.startswith("| `REDIS_TLS_CA_FILE`"))
    assert "instead of" not in row and "in addition to the system's" in row, row
    SECURITY_CHECKS.append("TLS: REDIS_TLS_CA_FILE adds to the system's CAs, as documented")
