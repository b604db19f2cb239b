"""Building the Redis client from the settings: one node or a cluster, made on first use.

REDIS_CLUSTER=detect asks the node named by REDIS_HOST (`INFO cluster`) and builds a cluster client when it
says cluster_enabled:1; `on` and `off` skip the question. The client is made lazily so that a handler whose
Redis is down still starts and answers the host's readiness probe; each invocation then fails with 503.

With TLS, every connection (the detect probe, a single node, each cluster node) verifies the server's
certificate against one name: REDIS_TLS_SERVER_NAME, or else REDIS_HOST's host when it is a name. A cluster's
nodes are dialled at the addresses it announces, often IPs that their certificates do not carry.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import redis
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import SSLConnection
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from handler.errors import MonitorError, RedisUnavailableError, SettingsError
from handler.settings import MonitorSettings, is_loopback
from handler.transport.client import Client
from handler.transport.entra_id import SignInState, TokenUnavailableError
from handler.transport.failures import LOST_CONNECTION
from handler.transport.topology import Topology, topology_of

log = logging.getLogger(__name__)

RAW_REPLY_COMMANDS = ("XCLAIM", "XPENDING", "XRANGE", "XREVRANGE")


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def leave_stream_replies_raw(client: redis.Redis | RedisCluster) -> None:
    """The cycle parses these replies itself (reclaim/rules.py): it needs XCLAIM's entries as flat field
    lists, so repeated field names and nil entries (deleted before Redis 7.0) survive, and XPENDING in both
    forms; the dead-letter tools read entries as flat field lists too."""
    for name in RAW_REPLY_COMMANDS:
        client.set_response_callback(name, _raw_reply)


class RawStreamCluster(RedisCluster):
    """A cluster client that leaves stream replies raw on every node.

    RedisCluster.set_response_callback only sets the cluster's own callbacks, which run after each node's
    client has parsed the reply; the node clients, made as the slot map changes, are set here when used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        leave_stream_replies_raw(self)

    def get_redis_connection(self, node: ClusterNode) -> redis.Redis:
        client = super().get_redis_connection(node)
        if not getattr(client, "_stream_replies_raw", False):
            leave_stream_replies_raw(client)
            client._stream_replies_raw = True  # type: ignore[attr-defined]
        return client

    def close(self) -> None:
        super().close()
        # Made from a URL (_cluster, for a fixed server name), the node clients do not own their pools, so
        # closing them leaves the connections open: they are closed here.
        self.disconnect_connection_pools()  # type: ignore[no-untyped-call]


class NamedSSLConnection(SSLConnection):
    """An SSLConnection that dials its host (a node's announced address) but asks for and verifies the
    certificate of `server_name`: redis-py's own uses the dialled address for both (server_hostname=host).
    Verification stays as configured: CERT_REQUIRED and check_hostname, against this name."""

    server_name: ClassVar[str]

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> ssl.SSLSocket:
        # The TCP connection is made by now; the name stands in for the address during the handshake only,
        # so errors still name the address dialled.
        dialled = self.host
        self.host = self.server_name
        try:
            wrapped: ssl.SSLSocket = super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
            return wrapped
        finally:
            self.host = dialled


@functools.cache
def named_ssl_connection(server_name: str) -> type[SSLConnection]:
    """A connection class verifying against `server_name`: a class, not a keyword, because a cluster
    passes only the keywords it knows on to its nodes' pools."""
    return type(f"NamedSSLConnection[{server_name}]", (NamedSSLConnection,), {"server_name": server_name})


def tls_server_name(settings: MonitorSettings) -> str | None:
    """The name each node's certificate must carry: REDIS_TLS_SERVER_NAME, else REDIS_HOST's host when it
    is a name. None when REDIS_HOST is an IP address and no name is set: each node is then verified against
    the address it is dialled at, which its certificate must carry."""
    if settings.REDIS_TLS_SERVER_NAME:
        return settings.REDIS_TLS_SERVER_NAME
    host, _ = settings.redis_address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


def client_options(settings: MonitorSettings, credentials: Any = None) -> dict[str, Any]:
    """What every connection needs, to a single node or to each node of a cluster."""
    options: dict[str, Any] = {
        "username": settings.REDIS_USERNAME or None,
        "password": settings.REDIS_PASSWORD.get_secret_value() or None,
        "ssl": settings.REDIS_TLS,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": settings.REDIS_TLS_CA_FILE or None,
        "socket_timeout": settings.REDIS_TIMEOUT_SEC,
        "socket_connect_timeout": settings.REDIS_TIMEOUT_SEC,
        # No retries inside redis-py: the monitor's own policy (retry.py) is the only one, so a silent server
        # costs at most three timeouts.
        "retry": Retry(NoBackoff(), 0),
        "client_name": "tweets-monitor",
        # No CLIENT SETINFO: the least-privilege rules do not grant it, and each refusal would be an entry in
        # ACL LOG on every connection (an alert on denials would never be quiet).
        "driver_info": None,
        "decode_responses": False,
        # Key names that are not UTF-8 (read with surrogateescape) are sent back as their own bytes.
        "encoding_errors": "surrogateescape",
        # RESP2, spoken by every server and proxy the monitor may meet (redis-py 8 would ask for RESP3);
        # the hot path parses replies itself and expects RESP2's shapes.
        "protocol": 2,
    }
    if settings.REDIS_AUTH != "password":
        del options["username"], options["password"]
        options["credential_provider"] = credentials or entra_id_credentials(settings)
    return options


def entra_id_credentials(settings: MonitorSettings) -> Any:
    """A credential provider for REDIS_AUTH=managed-identity or service-principal. It starts a token-renewal
    thread on first use: make one per long-lived connection, and stop it when done (stop_credentials).
    MSAL is imported only when it first asks for a token."""
    from handler.transport.entra_id import credential_provider  # noqa: PLC0415

    return credential_provider(settings)


def _single_node(settings: MonitorSettings, credentials: Any = None) -> redis.Redis:
    host, port = settings.redis_address
    options = client_options(settings, credentials)
    name = tls_server_name(settings)
    if not settings.REDIS_TLS or name in (None, host):
        return redis.Redis(host=host, port=port, **options)  # redis-py verifies against `host` itself
    # redis.Redis picks SSLConnection itself when ssl=True: a pool of its own carries the class.
    del options["ssl"]
    pool = redis.ConnectionPool(host=host, port=port, connection_class=named_ssl_connection(name), **options)
    return redis.Redis.from_pool(pool)


def _cluster(settings: MonitorSettings, credentials: Any = None) -> RedisCluster:
    """A cluster client: REDIS_HOST names any one node; the others come from its slot map."""
    host, port = settings.redis_address
    options = client_options(settings, credentials)
    name = tls_server_name(settings)
    if not settings.REDIS_TLS or name is None:
        return RawStreamCluster(host=host, port=port, **options)
    # Every node, REDIS_HOST's too (redis-py dials `localhost` as 127.0.0.1), is verified against `name`.
    # A RedisCluster hands a connection_class on to its nodes' pools only when made from a URL; the URL
    # says where to start, TLS and the class come from the options.
    del options["ssl"]
    where = f"[{host}]" if ":" in host else host
    return RawStreamCluster(
        url=f"redis://{quote(where, safe='[]:')}:{port}",
        connection_class=named_ssl_connection(name),
        **options,
    )


def is_cluster_node(settings: MonitorSettings, credentials: Any = None) -> bool:
    """`INFO cluster` on the node REDIS_HOST names: cluster_enabled is 1 on a Redis Cluster node."""
    probe = _single_node(settings, credentials)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.exceptions.NoPermissionError as exc:
        raise MonitorError(
            f"REDIS_CLUSTER=detect asks the server `INFO cluster`, which this user may not run ({exc}): "
            "allow +info, or set REDIS_CLUSTER to on or off"
        ) from exc
    finally:
        probe.close()


def unavailable(settings: MonitorSettings, exc: Exception) -> RedisUnavailableError:
    token = token_failure_in(exc)
    if token is not None:  # however deep a cluster client buried it
        return RedisUnavailableError(
            f"could not sign in to Redis at {settings.redis_shown} ({token}); the next invocation tries again"
        )
    hint = tls_hint(settings, exc)
    return RedisUnavailableError(
        f"Redis at {settings.redis_shown} is unavailable ({type(exc).__name__}: {exc}){hint}"
    )


def tls_hint(settings: MonitorSettings, exc: BaseException) -> str:
    """Without TLS, a server that resets (or closes) the connection is most often a TLS port answering a
    client that does not speak TLS; with TLS, a connection that times out before it is made may be a
    plaintext server that never answers the handshake: said, since a reset or a timeout is all either
    gives."""
    if settings.REDIS_TLS:
        if not _timed_out_connecting(exc):
            return ""
        return (
            "; a server without TLS never answers a TLS handshake and times out like this: if it speaks "
            "plaintext (a local Redis on 6379, say), set REDIS_TLS=false"
        )
    if not _reset_by_server(exc):
        return ""
    return (
        "; the server reset the connection, as a TLS port does to a client without TLS (Azure's 6380 and "
        "10000): if it expects TLS, set REDIS_TLS=true"
    )


def _timed_out_connecting(exc: BaseException) -> bool:
    """redis-py's words for a connection (TCP and TLS handshake) not made within socket_connect_timeout."""
    return any(
        isinstance(seen, redis.exceptions.TimeoutError) and str(seen) == "Timeout connecting to server"
        for seen in _causes(exc)
    )


def _reset_by_server(exc: BaseException) -> bool:
    return any(
        isinstance(seen, ConnectionResetError | BrokenPipeError)
        or (
            isinstance(seen, redis.exceptions.ConnectionError) and str(seen) == SERVER_CLOSED_CONNECTION_ERROR
        )
        for seen in _causes(exc)
    )


def token_failure_in(exc: BaseException) -> TokenUnavailableError | None:
    """The Entra ID token failure behind `exc`, if one is: itself, or what it was raised from."""
    return next((seen for seen in _causes(exc) if isinstance(seen, TokenUnavailableError)), None)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the errors it was raised from, ten deep at most (a cluster client wraps them deeply)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def connect(settings: MonitorSettings, credentials: Any = None) -> Client:
    """The client REDIS_CLUSTER asks for, now; `detect` costs one INFO on the first node. Raises
    RedisUnavailableError when Redis cannot be reached."""
    mode = settings.REDIS_CLUSTER
    try:
        cluster = mode == "on" or (mode == "detect" and is_cluster_node(settings, credentials))
        client: Client = _cluster(settings, credentials) if cluster else _single_node(settings, credentials)
    except redis.exceptions.AuthenticationError:
        raise  # reachable, but the credentials are wrong: said as such by the caller
    except RedisClusterException as exc:
        if "not enabled" in str(exc):
            raise MonitorError(
                f"REDIS_CLUSTER=on, but {settings.redis_shown} is not a cluster node ({exc}): set "
                "REDIS_CLUSTER=off or detect"
            ) from exc
        raise unavailable(settings, exc) from exc
    except LOST_CONNECTION as exc:
        raise unavailable(settings, exc) from exc
    if isinstance(client, redis.Redis):
        leave_stream_replies_raw(client)
    else:
        _refuse_plaintext_beyond_loopback(settings, client)
    return client


def _refuse_plaintext_beyond_loopback(settings: MonitorSettings, client: RedisCluster) -> None:
    """REDIS_HOST on this machine passed the settings' plaintext rule; the nodes its cluster announces may
    not be on it. Read from the slot map, before any command goes to them."""
    if settings.REDIS_TLS or settings.REDIS_ALLOW_PLAINTEXT:
        return
    hosts = {str(node.host) for node in client.get_nodes()}  # type: ignore[no-untyped-call]
    beyond = sorted(host for host in hosts if not is_loopback(host))
    if beyond:
        client.close()
        raise SettingsError(
            f"REDIS_TLS=false, and the cluster at {settings.redis_shown} announces nodes beyond this machine "
            f"({', '.join(beyond)}): the password and every tweet would reach them in cleartext. Set "
            "REDIS_TLS=true, or, on a network you trust, REDIS_ALLOW_PLAINTEXT=true"
        )


class RedisConnection:
    """The long-lived handler's client, made on the first invocation that needs it and kept, with its
    topology (which node holds which key), shared by every cycle.

    After a cycle meets a cluster that changed under it (a failover, a resharding), `refresh()` makes the
    topology read the slot map again.
    """

    def __init__(self, settings: MonitorSettings, client: Client | None = None) -> None:
        self._settings = settings
        self._client = client
        self._topology: Topology | None = None
        self._credentials: Any = None  # the Entra ID credential provider, made once (entra_id_credentials)
        self._lock = threading.Lock()

    def client(self) -> Client:
        with self._lock:
            if self._client is None:
                if self._settings.REDIS_AUTH != "password" and self._credentials is None:
                    # One provider (and one renewal thread) for this connection's whole life, however
                    # many times Redis refuses it; each new token signs every open connection in again.
                    self._credentials = entra_id_credentials(self._settings)
                    self._credentials.on_renewal(self._sign_in_again)
                self._client = connect(self._settings, self._credentials)
            return self._client

    def _sign_in_again(self, token: Any) -> None:
        """AUTH with the new token on every idle connection of every pool (each node's, in a cluster), and on
        each busy one when it is handed back (redis-py's re-authentication). redis-py's own registration
        keeps only the last pools it made, which in a cluster leaves the other nodes' connections behind."""
        client = self._client
        if client is None:
            return
        pools = (
            [node.redis_connection.connection_pool for node in client.get_nodes() if node.redis_connection]  # type: ignore[no-untyped-call]
            if isinstance(client, RedisCluster)
            else [client.connection_pool]
        )
        for pool in pools:
            try:
                pool.re_auth_callback(token)
            except Exception as exc:  # a dead connection is made afresh, and signed in then
                log.debug("Entra ID: a connection did not take the new token: %s", exc)

    def sign_in_state(self) -> SignInState | None:
        """With Entra ID, what the metrics say about its token; None with a password."""
        credentials = self._credentials
        return None if credentials is None else credentials.state()

    def topology(self) -> Topology:
        client = self.client()
        with self._lock:
            if self._topology is None:
                self._topology = topology_of(client)
            return self._topology

    def refresh(self) -> None:
        with self._lock:
            topology = self._topology
        if topology is not None:
            topology.refresh()

    def refresh_if_stale(self) -> None:
        with self._lock:
            topology = self._topology
        if topology is not None:
            topology.refresh_if_stale()

    def reset(self) -> None:
        """Drop the client (its pooled connections may lead to a demoted node); the next use connects
        afresh, with the same Entra ID credentials."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._topology = None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._topology = None
            if self._credentials is not None:
                stop_credentials(self._credentials)
                self._credentials = None


def stop_credentials(credentials: Any) -> None:
    """Stop an Entra ID provider's token-renewal thread."""
    stop = getattr(credentials, "stop", None)
    if stop is not None:
        stop()
