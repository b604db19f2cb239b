"""Microsoft Entra ID sign-in (REDIS_AUTH=managed-identity), end to end through redis-entraid and MSAL.

The Functions platform gives a managed identity's tokens through a local HTTP endpoint (IDENTITY_ENDPOINT
and IDENTITY_HEADER, the App Service protocol). The test plays that endpoint: it issues short-lived JWTs
whose `oid` is the identity, and on a real Redis 8.2 it makes each token a password of the ACL user
named by that oid, as Azure's Redis services accept a valid token. The handler must sign in with a
token, renew it before it expires, re-authenticate its open connections with the new one, and keep
working after the first token is revoked.

The endpoint also misbehaves on demand (`mode`: answer 500, drop the connection, never answer): the
handler must then never run a command as any other user than the identity, answer 503 within its bound,
and keep renewing once the endpoint is back.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import redis
from pydantic import SecretStr
from redis.auth.token import SimpleToken

from handler.dev.host import Answer, FunctionsHost, completed, failed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.samples import PIPELINE_NAMES
from handler.dev.telemetry_fakes import Mode, OtlpCollector, Tripwire, attributes, telemetry_environment
from handler.dev.tls import Certificates
from handler.errors import RedisUnavailableError
from handler.reclaim.streams import StreamsCycle
from handler.settings import MonitorSettings
from handler.transport.client import Client
from handler.transport.connect import RedisConnection
from handler.transport.entra_id import (
    FAILURE_REUSE_SEC,
    REDIS_RESOURCE,
    EntraIdCredentials,
    TokenUnavailableError,
    retry_delay,
)
from tests.cli import cli
from tests.conftest import settings_for
from tests.pipeline import abandon, create_group, tweet
from tests.reliability import SECURITY_CHECKS

TOKEN_LIFETIME_SEC = 4  # renewed at 70 %: after 2.8 s
IDENTITY_OID = "5f1c2a3e-0000-4000-8000-00000000c0de"
CLIENT_ID = "7d0b5d0e-1111-4111-8111-0000000000aa"
HEADER_SECRET = uuid.uuid4().hex
SIGNING_KEY = uuid.uuid4().hex  # 32 bytes: only Redis checks these tokens here, by exact match
NAMES = PIPELINE_NAMES


@dataclass
class IdentityEndpoint:
    """A fake of the platform's managed-identity endpoint, backed by a real Redis ACL. `mode` makes it
    answer 500 (Mode.FAIL), close the connection unanswered (Mode.DROP) or never answer (Mode.HANG)."""

    servers: list[redis.Redis]  # every server that must accept the tokens (each node of a cluster)
    issued: list[tuple[float, str]] = field(default_factory=list)  # (time issued, token)
    refused: list[str] = field(default_factory=list)
    asked: list[tuple[float, Mode]] = field(default_factory=list)  # every request: when, and how answered
    server: ThreadingHTTPServer | None = None
    grants: bool = True  # each token issued becomes a password of the enabled ACL user
    _mode: Mode = Mode.ANSWER
    _released: threading.Event = field(default_factory=threading.Event)

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        self._released.set()  # requests left hanging end, unanswered
        self._released = threading.Event()

    def issue(self, query: dict[str, list[str]], headers: Any) -> tuple[int, dict[str, Any]]:
        if headers.get("X-IDENTITY-HEADER") != HEADER_SECRET:
            self.refused.append("wrong X-IDENTITY-HEADER")
            return 401, {"statusCode": 401, "message": "missing or wrong X-IDENTITY-HEADER"}
        if query.get("resource") != [REDIS_RESOURCE] or query.get("client_id") != [CLIENT_ID]:
            self.refused.append(f"unexpected query {query}")
            return 400, {"statusCode": 400, "message": "unexpected resource or identity"}
        now = time.time()
        expires = int(now) + TOKEN_LIFETIME_SEC
        token = jwt.encode(
            {"oid": IDENTITY_OID, "aud": REDIS_RESOURCE, "iat": int(now), "exp": expires},
            SIGNING_KEY,
            algorithm="HS256",
        )
        # Azure's Redis accepts any valid token of the identity; here each one becomes a password.
        for server in self.servers if self.grants else ():
            server.acl_setuser(
                IDENTITY_OID, enabled=True, passwords=[f"+{token}"], keys=["*"], commands=["+@all"]
            )
        self.issued.append((now, token))
        return 200, {
            "access_token": token,
            "expires_on": str(expires),
            "resource": REDIS_RESOURCE,
            "token_type": "Bearer",
            "client_id": CLIENT_ID,
        }

    def revoke(self, token: str) -> None:
        """The token is no good any more, and connections must be made afresh; the identity keeps its
        access (redis-py's acl_setuser disables the user unless told `enabled`)."""
        for server in self.servers:
            server.acl_setuser(IDENTITY_OID, enabled=True, passwords=[f"-{token}"])
            server.client_kill_filter(user=IDENTITY_OID)

    def start(self) -> str:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                released, mode = endpoint._released, endpoint.mode
                endpoint.asked.append((time.time(), mode))
                if mode is Mode.HANG:
                    released.wait()
                    self.close_connection = True
                    return
                if mode is Mode.DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode is Mode.FAIL:
                    status, body = 500, {"statusCode": 500, "message": "An unexpected error occurred"}
                else:
                    url = urlparse(self.path)
                    status, body = endpoint.issue(parse_qs(url.query), self.headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"

    def stop(self) -> None:
        self._released.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Target:
    """Where the monitor signs in: its settings, the servers to administer, a client for the data."""

    env: dict[str, str]
    servers: list[redis.Redis]
    data: Client


@pytest.fixture(params=["one node", "TLS cluster"])
def target(request: pytest.FixtureRequest, certificates: Certificates) -> Iterator[Target]:
    if request.param == "one node":
        server: LocalRedis = request.getfixturevalue("redis_8")
        client = server.client()
        client.flushall()
        yield Target(environment_for(server), [client], client)
        client.close()
        return
    cluster: LocalCluster = request.getfixturevalue("tls_cluster")
    data = cluster.client()
    data.flushall()
    tls = {"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(certificates.ca)}
    servers = [cluster.node_client(node) for node in cluster.nodes]
    yield Target(environment_for(cluster.masters[0], **tls), servers, data)
    data.close()


@pytest.fixture
def identity(target: Target) -> Iterator[IdentityEndpoint]:
    endpoint = IdentityEndpoint(target.servers)
    yield endpoint
    endpoint.stop()
    for server in target.servers:
        server.acl_deluser(IDENTITY_OID)
        server.close()


def auth_calls(servers: list[redis.Redis]) -> int:
    total = 0
    for server in servers:
        stats: Any = server.info("commandstats")
        total += int(stats.get("cmdstat_auth", {}).get("calls", 0))
    return total


def monitor_users(servers: list[redis.Redis]) -> set[str]:
    return {
        c["user"] for server in servers for c in server.client_list() if c.get("name") == "tweets-monitor"
    }


def test_the_handler_signs_in_with_entra_id_tokens_and_renews_them(
    target: Target, identity: IdentityEndpoint
) -> None:
    url = identity.start()
    stream, group = NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"]
    create_group(target.data, stream, group)
    abandon(target.data, stream, group, [tweet(n) for n in range(50)])
    env = {
        **target.env,
        "MIN_IDLE_TIME_SEC": "10",
        "REDIS_AUTH": "managed-identity",
        "AZURE_CLIENT_ID": CLIENT_ID,
        "IDENTITY_ENDPOINT": url,
        "IDENTITY_HEADER": HEADER_SECRET,
        **NAMES,
    }
    host = FunctionsHost(env).start()
    try:
        assert 50 == completed(host.invoke())["processed"], host.stderr
        assert {IDENTITY_OID} == monitor_users(target.servers)  # signed in as the identity, everywhere
        first_issued, first_token = identity.issued[0]
        auth_before = auth_calls(target.servers)
        time.sleep(TOKEN_LIFETIME_SEC * 0.7 + 1.0)  # past the renewal point, before a second renewal
        renewed = [issued for issued, token in identity.issued if token != first_token]
        assert renewed and renewed[0] < first_issued + TOKEN_LIFETIME_SEC  # renewed before it expired
        assert auth_calls(target.servers) > auth_before  # open connections re-authenticated with the new one
        identity.revoke(first_token)
        abandon(target.data, stream, group, [tweet(n) for n in range(50, 80)])
        answer = host.invoke()
        assert 200 == answer.status, answer.body
        assert 30 == completed(answer)["processed"]
    finally:
        host.stop()
    assert [] == identity.refused
    assert HEADER_SECRET not in host.stdout + host.stderr
    assert all(token not in host.stdout + host.stderr for _, token in identity.issued)
    where = "a TLS cluster (every node)" if len(target.servers) > 1 else "one node"
    SECURITY_CHECKS.append(
        f"Entra ID on {where}: signed in with managed-identity tokens ({TOKEN_LIFETIME_SEC} s lifetime) from "
        "the platform's identity endpoint, renewed before expiry with connections re-authenticated; no token "
        "in any output"
    )


def test_entra_id_settings_are_checked() -> None:
    base: dict[str, Any] = {"REDIS_HOST": "x.redis.azure.net:10000", "MIN_IDLE_TIME_SEC": 10, **NAMES}
    with pytest.raises(ValueError, match="leave REDIS_USERNAME and REDIS_PASSWORD empty"):
        MonitorSettings(**base, REDIS_AUTH="managed-identity", REDIS_PASSWORD=SecretStr("key"))
    with pytest.raises(ValueError, match="needs AZURE_TENANT_ID, AZURE_CLIENT_SECRET"):
        MonitorSettings(**base, REDIS_AUTH="service-principal", AZURE_CLIENT_ID=CLIENT_ID)


def test_refused_entra_id_sign_ins_leave_no_renewal_thread_behind(
    redis_8: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = IdentityEndpoint([])  # issues tokens that no Redis user accepts: every sign-in is refused
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.start())
    monkeypatch.setenv("IDENTITY_HEADER", HEADER_SECRET)
    settings = settings_for(redis_8, PIPELINE_NAMES, REDIS_AUTH="managed-identity", AZURE_CLIENT_ID=CLIENT_ID)
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


# --- when the identity endpoint misbehaves ------------------------------------------------------------

ADMIN = "test-admin"  # the name of every connection the tests themselves make, told apart from the monitor's
TOKEN_BOUND_SEC = 5.0 + 1.5  # the token request's limit (transport/entra_id.py), and the invocation's rest


@dataclass
class OneNode:
    """Redis 8.2 administered through connections named ADMIN, the identity endpoint in front of it, and
    the connections that were there before the handler started."""

    admin: redis.Redis
    identity: IdentityEndpoint
    env: dict[str, str]
    before: set[int]

    def strays(self) -> list[str]:
        """Connections made since the handler started that are signed in as anyone but the identity."""
        return [
            f"{c['addr']} user={c['user']} name={c['name']!r} cmd={c['cmd']}"
            for c in self.admin.client_list()
            if int(c["id"]) not in self.before and c["name"] != ADMIN and c["user"] != IDENTITY_OID
        ]

    def kill_the_monitors_connections(self) -> None:
        self.admin.client_kill_filter(user=IDENTITY_OID)

    def metric(self, host: FunctionsHost, sample: str) -> float | None:
        for line in host.request("GET", "/metrics").body.decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        return None


@pytest.fixture
def one_node(redis_8: LocalRedis) -> Iterator[OneNode]:
    admin = redis_8.client(client_name=ADMIN)
    admin.flushall()
    identity = IdentityEndpoint([admin])
    url = identity.start()
    stream, group = NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"]
    create_group(admin, stream, group)
    env = environment_for(
        redis_8,
        MIN_IDLE_TIME_SEC="10",
        REDIS_AUTH="managed-identity",
        AZURE_CLIENT_ID=CLIENT_ID,
        IDENTITY_ENDPOINT=url,
        IDENTITY_HEADER=HEADER_SECRET,
        **NAMES,
    )
    yield OneNode(admin, identity, env, {int(c["id"]) for c in admin.client_list()})
    identity.stop()
    admin.acl_deluser(IDENTITY_OID)
    admin.close()


def abandon_some(node: OneNode, count: int = 20) -> None:
    start = int(time.time() * 1000) % 10_000_000
    abandon(
        node.admin,
        NAMES["STREAM_NAME"],
        NAMES["STREAM_CONSUMER_GROUP_NAME"],
        [tweet(n) for n in range(start, start + count)],
    )


def until_completed(host: FunctionsHost, within: float) -> list[Answer]:
    """Invokes every half second until an invocation completes; every answer, the last one completed."""
    answers = []
    deadline = time.monotonic() + within
    while True:
        answers.append(host.invoke(timeout=30))
        if answers[-1].status == 200 or time.monotonic() > deadline:
            return answers
        time.sleep(0.5)


def test_a_failed_token_request_never_leaves_a_connection_signed_in_as_default(one_node: OneNode) -> None:
    """The identity endpoint answers 500 once the token in use has expired and the monitor's connections
    were killed: no connection of the monitor is left signed in as Redis's `default` user (or as anyone
    but the identity), then or after the endpoint recovers, and once the identity's ACL user is disabled
    the monitor stops working instead of carrying on as `default`."""
    host = FunctionsHost(one_node.env).start()
    try:
        abandon_some(one_node)
        assert 20 == completed(host.invoke())["processed"]
        one_node.identity.mode = Mode.FAIL
        time.sleep(TOKEN_LIFETIME_SEC)  # the token in use expires, and no renewal can replace it
        one_node.kill_the_monitors_connections()
        during = [host.invoke(timeout=30) for _ in range(3)]
        assert [] == one_node.strays(), "connections signed in as another user than the identity"
        assert [503, 503, 503] == [a.status for a in during], [a.body for a in during]

        one_node.identity.mode = Mode.ANSWER
        abandon_some(one_node)
        after = until_completed(host, within=15)
        assert 200 == after[-1].status, [a.body for a in after]
        assert {503} >= {a.status for a in after[:-1]}
        assert [] == one_node.strays()

        one_node.identity.grants = False  # the identity loses its access to Redis
        one_node.admin.acl_setuser(IDENTITY_OID, enabled=False)
        one_node.kill_the_monitors_connections()
        abandon_some(one_node)
        refused = host.invoke(timeout=30)
        assert [] == one_node.strays()
        assert 503 == refused.status, refused.body
        assert "disabled" in failed(refused) or "WRONGPASS" in failed(refused), failed(refused)
    finally:
        one_node.identity.mode = Mode.ANSWER
        host.stop()


def test_a_token_the_identity_endpoint_refuses_answers_503_counted_as_redis_unavailable(
    one_node: OneNode,
) -> None:
    """docs/operate.md: Entra ID refusals answer 503 and count as redis-unavailable; no traceback."""
    one_node.identity.mode = Mode.FAIL
    host = FunctionsHost(one_node.env).start()
    try:
        answer = host.invoke(timeout=30)
        assert 503 == answer.status, answer.body
        assert "Entra ID" in failed(answer) and "500" in failed(answer), failed(answer)
        assert 1 == one_node.metric(host, 'tweets_monitor_cycles_total{outcome="redis-unavailable"}')
        assert one_node.metric(host, 'tweets_monitor_cycles_total{outcome="error"}') is None
    finally:
        host.stop()
    assert "Traceback" not in host.stderr, host.stderr[-3000:]


@pytest.mark.parametrize("mode", [Mode.HANG, Mode.DROP])
def test_an_identity_endpoint_that_never_answers_fails_each_invocation_within_its_bound(
    one_node: OneNode, mode: Mode
) -> None:
    """An endpoint that never answers (or drops every request) costs each invocation at most the token
    request's limit: it answers 503 within it, the next one too (never 'a cycle is already running
    here'), and the monitor works again once the endpoint answers."""
    one_node.identity.mode = mode
    host = FunctionsHost(one_node.env).start()
    try:
        answers = [host.invoke(timeout=30) for _ in range(2)]
        assert [503, 503] == [a.status for a in answers], [a.body for a in answers]
        assert max(a.seconds for a in answers) < TOKEN_BOUND_SEC, [a.seconds for a in answers]
        assert all("Entra ID" in failed(a) for a in answers), [failed(a) for a in answers]
        one_node.identity.mode = Mode.ANSWER
        abandon_some(one_node)
        after = until_completed(host, within=15)
        assert 20 == completed(after[-1])["processed"]
        assert [] == one_node.strays()
    finally:
        one_node.identity.mode = Mode.ANSWER
        host.stop()


def test_renewal_survives_an_outage_of_the_identity_endpoint(one_node: OneNode) -> None:
    """After a 6-second outage (longer than the token's lifetime) the renewal goes on by itself, every 70 %
    of the lifetime; the outage is one warning in the monitor's words and a metric, with no traceback."""
    host = FunctionsHost(one_node.env).start()
    try:
        abandon_some(one_node)
        assert 20 == completed(host.invoke())["processed"]
        wait = time.monotonic() + TOKEN_LIFETIME_SEC * 2
        while len(one_node.identity.issued) < 2 and time.monotonic() < wait:
            time.sleep(0.1)
        assert len(one_node.identity.issued) >= 2, "renewed once before the outage"
        one_node.identity.mode = Mode.FAIL
        time.sleep(6)
        one_node.identity.mode = Mode.ANSWER
        recovered = time.time()
        time.sleep(3.5 * TOKEN_LIFETIME_SEC)
        renewed = [issued for issued, _ in one_node.identity.issued if issued > recovered]
        assert len(renewed) >= 3, f"{len(renewed)} renewals in 3.5 token lifetimes after the outage"
        failures = one_node.metric(host, "tweets_monitor_token_renewal_failures_total")
        assert failures is not None and failures > 0, failures
        expires_in = one_node.metric(host, "tweets_monitor_token_expires_in_seconds")
        assert expires_in is not None and 0 < expires_in <= TOKEN_LIFETIME_SEC, expires_in
        abandon_some(one_node)
        assert 20 == completed(host.invoke())["processed"]
        assert [] == one_node.strays()
    finally:
        one_node.identity.mode = Mode.ANSWER
        host.stop()
    renewal_lines = [line for line in host.stderr.splitlines() if "could not renew" in line]
    assert 1 == len(renewal_lines), host.stderr[-3000:]
    assert 1 == sum("renewed after" in line for line in host.stdout.splitlines()), host.stdout[-3000:]
    assert "Traceback" not in host.stderr, host.stderr[-3000:]


REDIS_PY_TOKEN_LINES = ("Token manager", "token renewal", "renewal scheduled")


def test_redis_py_token_lines_stay_out_of_the_invocations_logs_and_the_exported_records(
    one_node: OneNode, tmp_path: Any
) -> None:
    """Signing in and renewing log nothing of redis-py's own (its token manager's INFO lines): not in an
    invocation's Logs, not on stdout, and not among the records `run` exports."""
    host = FunctionsHost(one_node.env).start()
    try:
        first = host.invoke()
        time.sleep(TOKEN_LIFETIME_SEC * 0.7 + 1.0)  # past a renewal
        second = host.invoke()
    finally:
        host.stop()
    logs = [line for answer in (first, second) for line in answer.json["Logs"]]
    assert [] == [line for line in logs if any(words in line for words in REDIS_PY_TOKEN_LINES)]
    output = (host.stdout + host.stderr).splitlines()
    assert [] == [line for line in output if " redis." in line or "Token manager" in line]

    abandon_some(one_node)
    with Tripwire() as wire, OtlpCollector() as collector:
        env = telemetry_environment(
            one_node.env,
            tmp_path / "run",
            wire,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
        )
        done = cli(env, "run", "--once", timeout=60)
        assert 0 == done.returncode, done.stderr[-2000:]
        records = collector.log_records()
    assert any("reclaim cycle" in r.body.string_value for r in records)
    assert [] == [
        r.body.string_value
        for r in records
        if attributes(r.attributes).get("logger", "").startswith("redis.")
        or any(words in r.body.string_value for words in REDIS_PY_TOKEN_LINES)
    ]
    assert [] == wire.attempts


# --- the credential provider alone (no Redis, no HTTP) ------------------------------------------------


@pytest.mark.parametrize(
    ("failures_in_a_row", "lifetime", "delay"),
    [
        (1, 3600.0, 1.0),  # first retry after a second
        (2, 3600.0, 2.0),  # doubling
        (7, 3600.0, 60.0),  # never more than a minute apart
        (3, 40.0, 2.0),  # nor more than a twentieth of the lifetime
        (1, 1.0, 0.1),  # however short the lifetime, at least 0.1 s apart
    ],
)
def test_a_failed_renewal_is_retried_with_backoff(
    failures_in_a_row: int, lifetime: float, delay: float
) -> None:
    assert delay == retry_delay(failures_in_a_row, lifetime)


def short_token(seconds: float) -> SimpleToken:
    now = time.time()
    return SimpleToken(uuid.uuid4().hex, (now + seconds) * 1000, now * 1000, {"oid": IDENTITY_OID})


def test_a_token_request_that_never_ends_fails_within_the_limit_and_once_per_invocation() -> None:
    """A request that hangs: the connection waits for it at most the limit; its retries (and any connection
    within FAILURE_REUSE_SEC) fail at once; nothing blocks once the endpoint answers."""
    answer = threading.Event()

    def request_token() -> SimpleToken:
        answer.wait()
        return short_token(60)

    credentials = EntraIdCredentials(request_token, timeout_sec=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TokenUnavailableError, match=r"did not answer within 0\.3 s"):
            credentials.get_credentials()
        assert 0.3 <= time.monotonic() - started < 0.6
        started = time.monotonic()
        for _ in range(2):  # the retry policy's two retries
            with pytest.raises(TokenUnavailableError):
                credentials.get_credentials()
        assert time.monotonic() - started < 0.1
        answer.set()
        time.sleep(FAILURE_REUSE_SEC)
        assert IDENTITY_OID == credentials.get_credentials()[0]
    finally:
        credentials.stop()


def test_renewal_goes_on_after_failures_and_each_new_token_is_signalled() -> None:
    """Tokens of 1 s renewed at 70 %: three requests fail, then renewal carries on by itself; the
    failures are counted and each new token reaches the owner's callback."""
    outcomes = iter([True, False, False, False] + [True] * 100)
    signalled: list[str] = []

    def request_token() -> SimpleToken:
        if not next(outcomes):
            raise RuntimeError("500, An unexpected error occurred")
        return short_token(1.0)

    credentials = EntraIdCredentials(request_token)
    credentials.on_renewal(lambda token: signalled.append(token.get_value()))
    try:
        user, first = credentials.get_credentials()
        assert IDENTITY_OID == user
        deadline = time.monotonic() + 5
        while len(signalled) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(set(signalled)) >= 4, signalled
        assert 3 == credentials.state().renewal_failures
        assert first != credentials.get_credentials()[1]
    finally:
        credentials.stop()
