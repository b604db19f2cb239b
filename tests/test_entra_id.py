"""Microsoft Entra ID sign-in (REDIS_AUTH=managed-identity), end to end through redis-entraid and MSAL.

The Functions platform gives a managed identity's tokens through a local HTTP endpoint (IDENTITY_ENDPOINT
and IDENTITY_HEADER, the App Service protocol). The test plays that endpoint: it issues short-lived JWTs
whose `oid` is the identity, and on a real Redis 8.2 it makes each token a password of the ACL user
named by that oid, as Azure's Redis services accept a valid token. The handler must sign in with a
token, renew it before it expires, re-authenticate its open connections with the new one, and keep
working after the first token is revoked.
"""

from __future__ import annotations

import json
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

from handler.dev.host import FunctionsHost, completed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import PIPELINE_NAMES
from handler.dev.tls import Certificates
from handler.settings import MonitorSettings
from handler.transport.client import Client
from handler.transport.entra_id import REDIS_RESOURCE
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
    """A fake of the platform's managed-identity endpoint, backed by a real Redis ACL."""

    servers: list[redis.Redis]  # every server that must accept the tokens (each node of a cluster)
    issued: list[tuple[float, str]] = field(default_factory=list)  # (time issued, token)
    refused: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def issue(self, query: dict[str, list[str]], headers: Any) -> tuple[int, dict[str, Any]]:
        if headers.get("X-IDENTITY-HEADER") != HEADER_SECRET:
            self.refused.append("wrong X-IDENTITY-HEADER")
            return 401, {"statusCode": 401, "message": "missing or wrong X-IDENTITY-HEADER"}
        if query.get("resource") != [REDIS_RESOURCE] or query.get("client_id") != [CLIENT_ID]:
            self.refused.append(f"unexpected query {query}")
            return 400, {"statusCode": 400, "message": "unexpected resource or identity"}
        now = time.time()
        expires = int(now) + TOKEN_LIFETIME_SEC
        token = jwt.encode({"oid": IDENTITY_OID, "aud": REDIS_RESOURCE, "iat": int(now), "exp": expires},
                           SIGNING_KEY, algorithm="HS256")  # fmt: skip
        # Azure's Redis accepts any valid token of the identity; here each one becomes a password.
        for server in self.servers:
            server.acl_setuser(IDENTITY_OID, enabled=True, passwords=[f"+{token}"], keys=["*"],
                               commands=["+@all"])  # fmt: skip
        self.issued.append((now, token))
        return 200, {"access_token": token, "expires_on": str(expires), "resource": REDIS_RESOURCE,
                     "token_type": "Bearer", "client_id": CLIENT_ID}  # fmt: skip

    def revoke(self, token: str) -> None:
        """The token is no good any more, and connections must be made afresh."""
        for server in self.servers:
            server.acl_setuser(IDENTITY_OID, passwords=[f"-{token}"])
            server.client_kill_filter(user=IDENTITY_OID)

    def start(self) -> str:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
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
        **target.env, "MIN_IDLE_TIME_SEC": "10", "REDIS_AUTH": "managed-identity",
        "AZURE_CLIENT_ID": CLIENT_ID, "IDENTITY_ENDPOINT": url, "IDENTITY_HEADER": HEADER_SECRET, **NAMES,
    }  # fmt: skip
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
