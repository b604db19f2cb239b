"""What the rest of the package holds of a Redis connection: a client for one node or a cluster, the one
typed way to send it a command, and the text of a reply that may come as bytes or str."""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
from redis.cluster import RedisCluster

Client: TypeAlias = "redis.Redis | RedisCluster"


def command(client: Client, *args: Any) -> Any:
    """One command through the client, its reply as connect() leaves it (raw for stream commands).

    redis-py's execute_command is untyped; this is the one place that says so. Arguments after the command's
    name that are str go as their own bytes (a key name read from Redis may not be UTF-8: keys.key_name).
    """
    name, *rest = args
    raw = (arg.encode("utf-8", "surrogateescape") if isinstance(arg, str) else arg for arg in rest)
    return client.execute_command(name, *raw)  # type: ignore[no-untyped-call]


def text(value: bytes | str | object) -> str:
    """A name or word from a reply: bytes are decoded (undecodable bytes replaced), anything else str()."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def server_holding(client: Client, key: str) -> redis.Redis:
    """A plain client for the node holding `key` (the client itself on a single node), for per-server
    questions such as INFO, ACL WHOAMI or ACL DRYRUN."""
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-untyped-call]
    return client
