"""The cluster world: ClusterRun, the run on three masters with a replica each (Redis 8.2), and the
checker's cluster client."""

from __future__ import annotations

import random
import signal
import time
from functools import partial
from typing import Any

import redis
from redis.cluster import ClusterNode
from redis.crc import key_slot

from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, LocalRedisError, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.transport.client import Client
from handler.transport.connect import RawStreamCluster
from tests.chaos.kinds import (
    CLUSTER_FILLER_KEYS,
    LOADING_SEC,
    MONITOR_CLIENT_NAME,
)
from tests.chaos.processes import Reload
from tests.chaos.run import Run
from tests.pipeline import raw


class _ClusterClient(RawStreamCluster):
    """The checker's cluster client: XREADGROUP's replies raw too (flat field lists), as tests.pipeline
    leaves them on one node."""

    def get_redis_connection(self, node: ClusterNode) -> redis.Redis:
        client = super().get_redis_connection(node)
        client.set_response_callback("XREADGROUP", raw)
        return client


class ClusterRun(Run):
    """Three masters with a replica each (Redis 8.2), every node with AOF (a node restarted from its files
    keeps what it acknowledged). The handler and the CLI are pointed at a master that held no stream at
    start; only a failover of a node that holds only tweets kills it (and it comes back as a replica)."""

    def _start_redis(self) -> Client:
        self.cluster = LocalCluster(
            BINARIES[self.version](),
            replicas_per_master=1,
            extra_args=[
                "--repl-diskless-sync-delay",
                "0",  # a restarted node resyncs at once
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--enable-debug-command",
                "local",  # DEBUG RELOAD, for LOADING
                # Answer clients every 1 KiB of RDB loaded (not 2 MB): LOADING needs only a small filler.
                "--loading-process-events-interval-bytes",
                "1024",
            ],
        ).start()
        try:
            holding = {self.cluster.master_of(stream).port for stream in self.streams}
            self.stable = next(node for node in self.cluster.masters if node.port not in holding)
            return self._cluster_client()
        except BaseException:
            self.cluster.cleanup()
            raise

    def _cluster_client(self) -> RawStreamCluster:
        return _ClusterClient(host="127.0.0.1", port=self.stable.port, protocol=2)

    def _stop_redis(self) -> None:
        self.cluster.cleanup()

    def _node_clients(self) -> list[redis.Redis]:
        return [self.cluster.node_client(node) for node in self.cluster.live_nodes()]

    def _server_of(self, stream: str) -> LocalRedis:
        return self.cluster.master_of(stream)

    def _env(self, **overrides: str) -> dict[str, str]:
        return environment_for(self.stable, **self._settings(**overrides))

    def _failover(self, rng: random.Random) -> None:
        """A stream's master SIGKILLed during an invocation; its replica takes over; the old master comes
        back from its files as the new master's replica."""
        self._kill_during_an_invocation(rng, self.cluster.master_of(rng.choice(self.streams)), restart=False)

    def _tweet_node_failover(self, rng: random.Random) -> bool:
        """The same for a master that holds only tweets: in the two-stream world that is the node the
        handler and the CLI are pointed at. Half the time its replica lags: stopped (SIGSTOP) from just
        before the invocation until the kill, its link cut by the master (CLIENT KILL TYPE replica: else
        what the master wrote to the link would still reach it on loopback), so that writes the master
        acknowledged meanwhile are lost in the failover and only the handler's WAIT keeps their entries
        pending. Counted when the invocation was still running when the master died."""
        victim = rng.choice(self._tweet_only_masters())
        lagging = rng.choice(self._shards()[victim]) if rng.random() < 0.5 else None
        return self._kill_during_an_invocation(rng, victim, restart=False, lagging=lagging)

    def _redis_restarted(self, rng: random.Random) -> bool:
        """A master SIGKILLed during an invocation and started again from its AOF: at once (before its
        replica takes over, most times), or once its replica has. Counted when the invocation was still
        running when the master died."""
        victim = rng.choice(self._masters_now())
        return self._kill_during_an_invocation(rng, victim, restart=rng.random() < 0.7)

    def _kill_during_an_invocation(
        self, rng: random.Random, victim: LocalRedis, *, restart: bool, lagging: LocalRedis | None = None
    ) -> bool:
        self._abandon(rng, rng.randrange(100, 300))  # work for the invocation, so that it dies in its middle
        self._wait_replicated(victim)  # the checker's own writes are on the replica: the model keeps them
        stopped = lagging.process if lagging is not None else None
        if stopped is not None:
            stopped.send_signal(signal.SIGSTOP)
            with self.cluster.node_client(victim) as client:
                client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        try:
            invocation = self._begin_http()
            time.sleep(rng.uniform(0.1, 0.5) if stopped is not None else rng.uniform(0, 0.1))
            met = invocation.running()
            victim.stop(kill=True)
            if stopped is not None:
                stopped.send_signal(signal.SIGCONT)
            if restart:
                victim.start()
            self._spent(invocation.finish())
        finally:
            if stopped is not None:
                stopped.send_signal(signal.SIGCONT)
            if victim.process is None:  # killed and not started again: its replica takes over first
                self.cluster.wait_for_failover(victim)
                victim.start()
            self._recovered()
        return met

    def _recovered(self) -> None:
        """After a fault on one node: the cluster whole again, a fresh checker client, the ACL user on every
        node (a restarted node lost it), and the fault counted as having spent a delivery of every entry
        pending (as on one node)."""
        self._wait_until_ready()
        self.admin.close()
        self.admin = self._cluster_client()
        self._refusing_user()
        self._abnormal()

    def _cut(self, rng: random.Random) -> bool:
        """The connections of the monitor to one master killed (CLIENT KILL) once to three times during an
        invocation over a backlog, each time a little after the monitor has one there: the cluster itself
        stays whole. Counted when one was killed while the invocation ran."""
        node = rng.choice(self._masters_now())
        self._abandon(rng, rng.randrange(50, 200))
        invocation = self._begin_http() if rng.random() < 0.5 else self._begin_cli(self._cli_settings(rng))
        met = False
        try:
            for _ in range(rng.randint(1, 3)):
                while invocation.running() and not self._monitor_connections(node):
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.2))
                if not invocation.running():
                    break
                met = self._kill_monitor_connections(node) > 0 or met
        finally:
            self._spent(invocation.finish())
            self._abnormal()
        return met

    def _monitor_connections(self, node: LocalRedis) -> list[str]:
        """The ids of the monitor's connections to `node`."""
        with self.cluster.node_client(node) as client:
            return [c["id"] for c in client.client_list() if c.get("name") == MONITOR_CLIENT_NAME]

    def _kill_monitor_connections(self, node: LocalRedis) -> int:
        with self.cluster.node_client(node) as client:
            return sum(
                int(client.execute_command("CLIENT", "KILL", "ID", connection))
                for connection in self._monitor_connections(node)
            )

    def _stall(self, rng: random.Random) -> bool:
        """One node stops (SIGSTOP) for 1.5-3 s during an invocation, past the client timeouts, then goes on
        (SIGCONT): a master (its replica may take over meanwhile: the node timeout is 1 s) or, now and then,
        a replica (WAIT for it times out). Counted when the invocation was still running when it stopped."""
        shards = self._shards()
        master = rng.choice(list(shards))
        node = rng.choice(shards[master]) if rng.random() < 0.25 and shards[master] else master
        self._abandon(rng, rng.randrange(50, 200))
        self._wait_replicated(master)
        process = node.process
        assert process is not None
        invocation = self._begin_http()
        met = False
        try:
            time.sleep(rng.uniform(0, 0.3))
            met = invocation.running()
            process.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(1.5, 3))
        finally:
            process.send_signal(signal.SIGCONT)
            try:
                self._spent(invocation.finish())
            finally:
                self._recovered()
        return met

    def _read_only_replica(self, rng: random.Random) -> bool:
        """A CLI invocation (pointed at a replica half the time) during which a master is demoted: its
        replica takes over with CLUSTER FAILOVER, so the monitor's commands to the old master meet MOVED
        (or READONLY). Counted when the demotion was complete while the invocation still ran."""
        shards = self._shards()
        master = (
            self.cluster.master_of(rng.choice(self.streams))
            if rng.random() < 0.7
            else rng.choice(list(shards))
        )
        replica = shards[master][0]
        settings = self._cli_settings(rng)
        if rng.random() < 0.5:
            settings["REDIS_HOST"] = rng.choice([r for rs in shards.values() for r in rs]).address
        self._abandon(rng, rng.randrange(50, 200))
        invocation = self._begin_cli(settings)
        met = False
        try:
            time.sleep(rng.uniform(0, 0.3))
            if invocation.running():
                with self.cluster.node_client(replica) as client:
                    client.execute_command("CLUSTER", "FAILOVER")
                    deadline = time.monotonic() + 5
                    while client.info("replication")["role"] != "master" and time.monotonic() < deadline:
                        time.sleep(0.01)
                    met = client.info("replication")["role"] == "master" and invocation.running()
        finally:
            try:
                self._spent(invocation.finish())
            finally:
                self._recovered()
        return met

    def _loading(self, rng: random.Random) -> bool:
        """One master answers LOADING for real during an invocation (DEBUG RELOAD with key-load-delay, as on
        one node), started before the invocation (once clients see LOADING) or during it; the other masters
        keep answering. Counted only if the probe saw LOADING."""
        master = rng.choice(self._masters_now())
        tag = self._tag_of(master)
        self._fill(master, tag)
        with self.cluster.node_client(master) as client:
            keys = max(1, int(client.dbsize()))
            client.config_set("key-load-delay", max(1, int(LOADING_SEC * 1_000_000) // keys))
        reload = Reload(master.port, probe_key=tag.encode() + b"chaos:probe")
        try:
            if rng.random() < 0.5:
                reload.start()
                reload.wait_until_loading()
                self._spent(self._http())
            else:
                self._abandon(rng, rng.randrange(20, 60))
                self._spent(self._http(fault=partial(reload.start_after, rng.uniform(0, 0.1))))
        finally:
            reload.join()
            with self.cluster.node_client(master) as client:
                client.config_set("key-load-delay", 0)
            self._recovered()  # loading blocks the cluster bus too: its replica may have taken over
        return reload.saw_loading

    def _fill(self, master: LocalRedis, tag: str) -> None:
        """Keys in `master`'s slots, so that key-load-delay makes its loading last (once per slot: failovers
        keep them); few and small, since the cluster's nodes answer clients every 1 KiB of RDB loaded."""
        with self.cluster.node_client(master) as client:
            if client.exists(f"{tag}chaos:filler:0"):
                return
            pipe = client.pipeline(transaction=False)
            for n in range(CLUSTER_FILLER_KEYS):
                pipe.set(f"{tag}chaos:filler:{n}", b"x" * 100)
            pipe.execute()

    def _tag_of(self, master: LocalRedis) -> str:
        """A hash tag whose slot `master` serves."""
        ranges = self._slot_ranges()[master.port]
        for n in range(100_000):
            tag = f"{{chaos-{n}}}"
            if any(first <= key_slot(tag.encode()) <= last for first, last in ranges):
                return tag
        raise LocalRedisError(f"no hash tag found for {master.address}")

    def _slot_rows(self) -> list[Any]:
        with self.cluster.node_client(self.cluster.live_nodes()[0]) as client:
            return list(client.execute_command("CLUSTER", "SLOTS"))

    def _slot_ranges(self) -> dict[int, list[tuple[int, int]]]:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for first, last, holder, *_ in self._slot_rows():
            ranges.setdefault(int(holder[1]), []).append((int(first), int(last)))
        return ranges

    def _shards(self) -> dict[LocalRedis, list[LocalRedis]]:
        """Each master now, with its replicas now (failovers swap them)."""
        by_port = {node.port: node for node in self.cluster.nodes}
        return {
            by_port[int(holder[1])]: [by_port[int(replica[1])] for replica in replicas]
            for _, _, holder, *replicas in self._slot_rows()
        }

    def _masters_now(self) -> list[LocalRedis]:
        return list(self._shards())

    def _tweet_only_masters(self) -> list[LocalRedis]:
        holding = {self.cluster.master_of(stream).port for stream in self.streams}
        return [node for node in self._masters_now() if node.port not in holding]

    def _wait_replicated(self, master: LocalRedis) -> None:
        with self.cluster.node_client(master) as client:
            target = int(client.info("replication")["master_repl_offset"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                info = client.info("replication")
                offsets = [
                    int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                ]
                if offsets and min(offsets) >= target:
                    return
                time.sleep(0.02)
        raise LocalRedisError(f"the replica of {master.address} did not catch up in 10 s")

    def _wait_until_ready(self) -> None:
        """Every node ok, every replica linked, every node's slot map listing three replicas."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if all(self._node_ready(node) for node in self.cluster.live_nodes()):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise LocalRedisError("the cluster was not ready again 30 s after the failover")

    def _node_ready(self, node: LocalRedis) -> bool:
        with self.cluster.node_client(node) as client:
            if client.cluster("INFO")["cluster_state"] != "ok":
                return False
            replication = client.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
            slots = client.execute_command("CLUSTER", "SLOTS")
            return sum(len(entry) - 3 for entry in slots) == len(self.cluster.replicas)
