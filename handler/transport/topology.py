"""Which node each key lives on: the stream's node, and the node of every `tweet:<id>` hash.

On one node everything goes to one connection pool. On a cluster a stream lives in one slot, while the
tweet hashes spread over all 16384; the cycle groups its writes per node from a snapshot of the slot map,
kept with the connection (connect.RedisConnection), read again after a connection error, and marked stale
where a reply says a slot moved (MOVED, ASK…) to be read again before the next use that needs it: a page
whose writes met MOVED reads it at once and sends them again (reclaim/page.py). Each cycle also asks the
stream's node for the masters' replica counts, which change without an error (a replica joining).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
from redis.cluster import RedisCluster
from redis.connection import ConnectionPool
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from handler.settings import host_port
from handler.transport.client import Client, command, server_holding


@dataclass(eq=False)  # compared by identity: one Node per server in a snapshot
class Node:
    name: str
    pool: ConnectionPool
    replicas: int  # replicas the slot map lists for this node's slots (0 on a single node)


class Topology(Protocol):
    def node_of(self, key: bytes | str) -> Node: ...

    def by_node(self, keys: Sequence[bytes]) -> dict[Node, list[int]]:
        """The positions of `keys` grouped by the node each lives on, in their order within each node."""
        ...

    def refresh(self) -> None:
        """Read the slot map again (after a connection error: a failover may have moved slots)."""

    def mark_stale(self) -> None:
        """A node answered MOVED, ASK, CLUSTERDOWN or TRYAGAIN: the map is read again by refresh_if_stale."""

    def refresh_if_stale(self) -> None:
        """Read the slot map again if it was marked stale since it was last read."""

    def refresh_if_replicas_changed(self, key: str) -> None:
        """Ask the node of `key` which replicas each master has now; read the map again where that differs."""


def server_address(client: redis.Redis) -> str:
    """`host:port` of the server a plain client talks to, for messages."""
    kwargs = client.connection_pool.connection_kwargs
    return host_port(str(kwargs.get("host")), int(kwargs.get("port") or 0))


class SingleNode:
    def __init__(self, client: redis.Redis) -> None:
        self._node = Node(server_address(client), client.connection_pool, 0)

    def node_of(self, key: bytes | str) -> Node:
        return self._node

    def by_node(self, keys: Sequence[bytes]) -> dict[Node, list[int]]:
        return {self._node: list(range(len(keys)))} if keys else {}

    def refresh(self) -> None:
        pass  # one node: nothing moves

    def mark_stale(self) -> None:
        pass

    def refresh_if_stale(self) -> None:
        pass

    def refresh_if_replicas_changed(self, key: str) -> None:
        pass


class ClusterSlots:
    """A snapshot of the cluster's slot map, resolved slot by slot as keys need it."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._by_slot: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._by_name: dict[str, Node] = {}
        self._lock = threading.Lock()
        self._stale = False

    def node_of(self, key: bytes | str) -> Node:
        slot = key_slot(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key)
        node = self._by_slot[slot]
        if node is None:
            node = self._by_slot[slot] = self._resolve(slot)
        return node

    def by_node(self, keys: Sequence[bytes]) -> dict[Node, list[int]]:
        positions: dict[Node, list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(self.node_of(key), []).append(index)
        return positions

    def refresh(self) -> None:
        """The page workers share this snapshot: one of them reads the cluster's slot map again and the
        nodes are resolved afresh. A node that is down but not yet replaced fails the retry: the cycle then
        ends with an error, and the next one reads the map again."""
        with self._lock:
            self._read_again()

    def mark_stale(self) -> None:
        self._stale = True

    def refresh_if_stale(self) -> None:
        """Several page workers meet the same MOVED at once: the first reads the map again, the others
        wait for it and then find the map fresh."""
        with self._lock:
            if self._stale:
                self._read_again()

    def _read_again(self) -> None:
        """The map read afresh and every node resolved again (the caller holds the lock)."""
        self._stale = False
        self._cluster.nodes_manager.initialize()
        self._by_name = {}
        self._by_slot = [None] * REDIS_CLUSTER_HASH_SLOTS

    def refresh_if_replicas_changed(self, key: str) -> None:
        """A replica that joins a master after the map was read (the old master back as the promoted one's
        replica after a failover) raises no error that would mark the map stale, and a master's writes wait
        for a replica only where the map lists one (reclaim/page.py). So one CLUSTER SLOTS to the node of
        `key`, which the cycle has just reached (never a random node: one that is down would cost a
        timeout), and the map is read again where a master's replica count differs from the snapshot's.
        The snapshot's, not redis-py's own copy of the map: redis-py reads that again by itself after a
        connection error of any command it routes, and would then agree with the node while the snapshot
        still counts no replica."""
        rows = command(server_holding(self._cluster, key), "CLUSTER", "SLOTS")
        for first, _last, primary, *replicas in rows:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            known = self._by_name.get(f"{host}:{primary[1]}") or self._by_slot[int(first)]
            if known is not None and known.replicas != len(replicas):
                self.refresh()
                return

    def _resolve(self, slot: int) -> Node:
        cluster = self._cluster
        holders = cluster.nodes_manager.slots_cache.get(slot) or []
        if not holders:
            raise redis.exceptions.ClusterDownError(f"slot {slot} is not served by any node of the cluster")
        primary = holders[0]
        with self._lock:
            node = self._by_name.get(primary.name)
            if node is None:
                pool = cluster.get_redis_connection(primary).connection_pool
                node = self._by_name[primary.name] = Node(primary.name, pool, len(holders) - 1)
            return node


def by_server(client: Client, keys: Sequence[str]) -> list[tuple[redis.Redis, list[str]]]:
    """`keys` grouped by the server holding each, with a plain client for that server: one pipeline per
    node instead of a round trip per key (the scrape's gauges, the heartbeats of many streams)."""
    if not isinstance(client, RedisCluster):
        return [(client, list(keys))] if keys else []
    grouped: dict[str, tuple[redis.Redis, list[str]]] = {}
    for key in keys:
        node = client.get_node_from_key(key.encode("utf-8", "surrogateescape"))  # type: ignore[no-untyped-call]
        if node.name not in grouped:
            grouped[node.name] = (client.get_redis_connection(node), [])
        grouped[node.name][1].append(key)
    return list(grouped.values())


def topology_of(client: Client) -> Topology:
    if isinstance(client, RedisCluster):
        return ClusterSlots(client)
    return SingleNode(client)
