"""A throwaway Redis Cluster on loopback, for the tests and the benchmark: masters, optional replicas.

Each node is a LocalRedis started with cluster mode on; the slots are split evenly between the masters
with CLUSTER ADDSLOTSRANGE, the nodes meet each other with CLUSTER MEET, and each replica follows its
master with CLUSTER REPLICATE. start() returns once every node reports cluster_state:ok, agrees on the
slot map and every replica's link to its master is up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from handler.dev.local_redis import LocalRedis, LocalRedisError, free_ports
from handler.transport.client import text
from handler.transport.connect import RawStreamCluster

READY_TIMEOUT_SEC = 30.0


class LocalCluster:
    def __init__(
        self,
        binary: Path,
        *,
        masters: int = 3,
        replicas_per_master: int = 0,
        node_timeout_ms: int = 1000,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.client_options = client_options or {}  # e.g. TLS options, for the set-up and probe clients
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            # A test kills masters on purpose: the replicas must take over without a human.
            "--cluster-replica-validity-factor",
            "0",
            *extra_args,
        ]
        count = masters * (1 + replicas_per_master)
        # The cluster bus defaults to the port + 10000, which may be taken or past 65535: pick one apiece.
        ports = free_ports(2 * count)
        self.bus_ports = ports[count:]
        self.nodes = [
            LocalRedis(
                binary,
                port=port,
                # "{port}" in extra_args stands for each node's own port (e.g. --tls-port {port}).
                extra_args=[*(arg.replace("{port}", str(port)) for arg in args), "--cluster-port", str(bus)],
                env=env,
                probe_options=self.client_options,
            )
            for port, bus in zip(ports[:count], self.bus_ports, strict=True)
        ]
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]

    @property
    def address(self) -> str:
        """One node's address: what REDIS_HOST names for the monitor."""
        return self.masters[0].address

    def node_client(self, node: LocalRedis) -> redis.Redis:
        return node.client(**self.client_options)

    def client(self) -> RawStreamCluster:
        """A cluster client that leaves stream replies raw, as the monitor's does."""
        return RawStreamCluster(
            host="127.0.0.1", port=self.masters[0].port, protocol=2, **self.client_options
        )

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self._assign_slots()
            self._meet()
            self._wait_until(self._all_know_every_node, "the nodes to meet")
            self._attach_replicas()
            self._wait_until(self._ready, "cluster_state:ok with every replica in sync")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _assign_slots(self) -> None:
        share = REDIS_CLUSTER_HASH_SLOTS // len(self.masters)
        for index, node in enumerate(self.masters):
            first = index * share
            last = REDIS_CLUSTER_HASH_SLOTS - 1 if index == len(self.masters) - 1 else first + share - 1
            with self.node_client(node) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)

    def _meet(self) -> None:
        with self.node_client(self.nodes[0]) as first:
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)

    def _attach_replicas(self) -> None:
        for index, replica in enumerate(self.replicas):
            master = self.masters[index % len(self.masters)]
            with self.node_client(replica) as client:
                client.execute_command("CLUSTER", "REPLICATE", self.node_id(master))

    def replica_of(self, master: LocalRedis) -> LocalRedis:
        """The replica attached to `master` at start (replicas[i] follows masters[i % masters])."""
        index = self.masters.index(master)
        return next(r for n, r in enumerate(self.replicas) if n % len(self.masters) == index)

    def node_id(self, node: LocalRedis) -> str:
        with self.node_client(node) as client:
            answer = client.execute_command("CLUSTER", "MYID")
            return text(answer)

    def _all_know_every_node(self) -> bool:
        for node in self.nodes:
            with self.node_client(node) as client:
                if int(client.cluster("INFO")["cluster_known_nodes"]) != len(self.nodes):
                    return False
        return True

    def _ready(self) -> bool:
        for node in self.live_nodes():
            with self.node_client(node) as client:
                if client.cluster("INFO")["cluster_state"] != "ok":
                    return False
                if node in self.replicas and client.info("replication").get("master_link_status") != "up":
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
                if sum(len(entry) - 3 for entry in slots) != len(self.replicas):
                    return False  # not every replica is in this node's view of the slot map yet
        return True

    def live_nodes(self) -> list[LocalRedis]:
        return [node for node in self.nodes if node.process is not None]

    def _wait_until(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SEC
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise LocalRedisError(f"the local cluster did not reach {what} in {READY_TIMEOUT_SEC:.0f} s")

    def master_of(self, key: str) -> LocalRedis:
        """The live node that serves `key`'s slot now (after a failover, the promoted replica)."""
        slot = key_slot(key.encode())
        for node in self.live_nodes():
            with self.node_client(node) as client:
                for first, last, holder, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        port = int(holder[1])
                        return next(n for n in self.nodes if n.port == port)
        raise LocalRedisError(f"no live node serves slot {slot}")

    def wait_for_failover(self, dead: LocalRedis) -> None:
        """Until a replica of the killed master serves its slots and the cluster is ok again."""
        self._wait_until(lambda: self._state_ok_without(dead), "cluster_state:ok after the failover")

    def _state_ok_without(self, dead: LocalRedis) -> bool:
        for node in self.live_nodes():
            with self.node_client(node) as client:
                if client.cluster("INFO")["cluster_state"] != "ok":
                    return False
                for _, _, holder, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(holder[1]) == dead.port:
                        return False
        return True

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
