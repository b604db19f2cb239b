"""Redis Cluster: a real local cluster (three masters with a replica each, Redis 8.2), the cycle's writes
spread over every node, the monitor's own keys in the stream's slot, mode mismatches named, and failovers
in the middle of a cycle that lose nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from redis.cluster import RedisCluster
from redis.connection import SSLConnection
from redis.crc import key_slot

from handler.dev.host import APP_ROOT, FunctionsHost, completed, failed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, MONITOR, STREAM
from handler.dev.tls import Certificates
from handler.keys import StreamKeys
from handler.reclaim.cycle import ReclaimCycle
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection, connect
from handler.transport.topology import ClusterSlots
from tests import pipeline
from tests.acl import ACL_RULE
from tests.backlogs import DEAD_LETTER, FAST, NAMES, Backlog, abandon_backlog, drain, pending_count
from tests.cli import cli
from tests.pipeline import create_group, expected_hash, tweet
from tests.reliability import SECURITY_CHECKS, audit, record


def cluster_settings(cluster: LocalCluster, **overrides: str) -> MonitorSettings:
    values = {"REDIS_HOST": cluster.address, "REDIS_TLS": "false", **NAMES, **FAST, **overrides}
    return MonitorSettings(**values)  # type: ignore[arg-type]


def cluster_env(cluster: LocalCluster, host_node: LocalRedis, **settings: str) -> dict[str, str]:
    return environment_for(host_node, **NAMES, **FAST, **settings)


def tweets_per_master(cluster: LocalCluster) -> list[int]:
    counts = []
    for node in cluster.masters:
        with cluster.node_client(node) as client:
            counts.append(sum(1 for _ in client.scan_iter(match=b"tweet:*", count=1000)))
    return counts


def test_a_cycle_on_a_cluster_writes_each_tweet_on_its_own_node(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    create_group(cluster_client, STREAM, GROUP)
    backlog = abandon_backlog(cluster_client, 3000)
    client = connect(cluster_settings(redis_cluster))  # REDIS_CLUSTER=detect
    assert isinstance(client, RedisCluster)
    summary = ReclaimCycle(
        RedisConnection(cluster_settings(redis_cluster), client), cluster_settings(redis_cluster)
    ).run()
    client.close()
    assert (3000, len(backlog.bad), 0) == (
        summary.counts.processed,
        summary.counts.dead_lettered,
        summary.counts.failed,
    )
    spread = tweets_per_master(redis_cluster)
    assert 3000 == sum(spread)
    assert all(count > 500 for count in spread), spread  # about a third on each master
    result = audit(cluster_client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad)
    assert result.clean, result


def test_the_monitors_own_keys_live_in_the_streams_slot(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """The dead-letter move is one Lua call over the stream and the dead-letter stream; the lease and the
    cursor sit beside them, so a failover of the stream's shard moves them together."""
    create_group(cluster_client, STREAM, GROUP)
    abandon_backlog(cluster_client, 1000, every=10)
    settings = cluster_settings(redis_cluster, RECLAIM_PAGE_SIZE="100", CYCLE_MAX_MESSAGES="300")
    summary = ReclaimCycle(RedisConnection(settings, connect(settings)), settings).run()
    assert "cap" == summary.stopped_by  # stopped early, so a cursor was saved
    keys = StreamKeys.from_settings(settings)
    stream_master = redis_cluster.master_of(STREAM)
    with redis_cluster.node_client(stream_master) as node:
        assert node.exists(keys.cursor) and node.xlen(keys.dead_letter) > 0
    assert {key_slot(STREAM.encode())} == {
        key_slot(key.encode()) for key in (keys.dead_letter, keys.cursor, keys.lease)
    }


def test_the_handler_serves_a_cluster_through_the_host(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    one_invocation_writes_every_tweet(
        cluster_client,
        cluster_env(redis_cluster, redis_cluster.replicas[0]),
        2000,  # any node will do
    )


def one_invocation_writes_every_tweet(client: RedisCluster, env: dict[str, str], size: int) -> None:
    """A backlog of `size` tweets (and some poison), one timer invocation through the host, an audit."""
    create_group(client, STREAM, GROUP)
    backlog = abandon_backlog(client, size)
    host = FunctionsHost(env).start()
    try:
        answer = completed(host.invoke())
    finally:
        host.stop()
    assert size == answer["processed"]
    assert audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad).clean


def reclaim(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "handler", "reclaim"]
    return subprocess.run(command, env=env, cwd=APP_ROOT, capture_output=True, text=True, timeout=60)


def test_a_cluster_mode_that_does_not_match_the_server_is_named(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, redis_8: LocalRedis
) -> None:
    create_group(cluster_client, STREAM, GROUP)
    backlog = abandon_backlog(cluster_client, 100)
    single = reclaim(environment_for(redis_8, **NAMES, **FAST, REDIS_CLUSTER="on"))
    assert 1 == single.returncode
    assert "REDIS_CLUSTER=on, but" in single.stderr and "is not a cluster node" in single.stderr
    other = next(node for node in redis_cluster.masters if node is not redis_cluster.master_of(STREAM))
    off = reclaim(cluster_env(redis_cluster, other, REDIS_CLUSTER="off"))
    assert 1 == off.returncode
    assert "REDIS_CLUSTER=off, but Redis answered MOVED" in off.stderr, off.stderr
    assert backlog.size == pending_count(cluster_client)  # refused before anything was claimed


@pytest.mark.parametrize("victim", ["a node holding tweets", "the stream's node"])
def test_a_failover_in_the_middle_of_a_cycle_loses_nothing(victim: str) -> None:
    """A master is SIGKILLed while a cycle writes; its replica takes over after the node timeout. The
    invocation fails cleanly (503) or completes, and later invocations finish the backlog: every tweet is
    written exactly as produced and every poison entry is dead-lettered once."""
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=1) as cluster:
        client = cluster.client()
        create_group(client, STREAM, GROUP)
        backlog = abandon_backlog(client, 20_000)
        stream_master = cluster.master_of(STREAM)
        others = [node for node in cluster.masters if node is not stream_master]
        dead = stream_master if victim == "the stream's node" else others[0]
        host = FunctionsHost(cluster_env(cluster, others[-1], RECLAIM_PAGE_SIZE="500")).start()
        try:
            thread, answers = host.invoke_in_background()
            pipeline.wait_until_claiming(client, STREAM, GROUP, MONITOR)
            time.sleep(0.05)
            dead.stop(kill=True)
            thread.join(timeout=60)
            assert not thread.is_alive(), "the invocation must end in bounded time"
            assert answers[0].status in (200, 503), answers[0].body
            cluster.wait_for_failover(dead)
            drain(host, client)
        finally:
            host.stop()
        result = audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad)
        record(f"Redis Cluster failover mid-cycle: {victim} SIGKILLed", 1, backlog.size, result)
        assert result.clean, result
        client.close()


def test_a_cluster_that_cannot_be_reached_fails_each_invocation_with_503() -> None:
    """The handler starts and answers readiness without Redis; each invocation then says why it failed."""
    env = dict(environment_for(LocalRedis(BINARIES["8.2"]()), **NAMES, **FAST), REDIS_CLUSTER="on")
    host = FunctionsHost(env).start()  # nothing listens on that port
    try:
        answers = [host.invoke(), host.invoke()]
    finally:
        host.stop()
    assert [503, 503] == [answer.status for answer in answers]
    assert "is unavailable" in failed(answers[1])


def test_a_tls_cluster_is_served_over_verified_tls_to_every_node(
    tls_cluster: LocalCluster, certificates: Certificates
) -> None:
    client = tls_cluster.client()
    client.flushall()
    tls = {"REDIS_TLS": "true", "REDIS_TLS_CA_FILE": str(certificates.ca)}
    one_invocation_writes_every_tweet(client, cluster_env(tls_cluster, tls_cluster.masters[1], **tls), 3000)
    # The monitor's own client, as the handler builds it: a cluster client whose every node pool verifies.
    settings = cluster_settings(tls_cluster, **tls)
    monitor = connect(settings)
    assert isinstance(monitor, RedisCluster)
    ReclaimCycle(RedisConnection(settings, monitor), settings).run()
    primaries = monitor.get_primaries()  # type: ignore[no-untyped-call]
    pools = [monitor.get_redis_connection(node).connection_pool for node in primaries]
    assert 3 == len(pools)
    for pool in pools:
        assert pool.connection_class is SSLConnection
        assert "required" == pool.connection_kwargs["ssl_cert_reqs"]
        assert pool.connection_kwargs["ssl_check_hostname"] is True
    monitor.close()
    SECURITY_CHECKS.append(
        "TLS cluster: 3 masters + 3 replicas speaking only TLS (clients, bus, replication); every node's "
        "connection verified the certificate and host name"
    )


def test_a_tls_cluster_with_an_untrusted_certificate_fails_with_503(
    tls_cluster: LocalCluster, certificates: Certificates
) -> None:
    env = cluster_env(
        tls_cluster,
        tls_cluster.masters[0],
        REDIS_TLS="true",
        REDIS_TLS_CA_FILE=str(certificates.untrusted_ca),
    )
    host = FunctionsHost(env).start()
    try:
        answer = host.invoke()
    finally:
        host.stop()
    assert 503 == answer.status
    assert "certificate verify failed" in failed(answer)


def test_writes_no_replica_has_copied_are_not_acknowledged() -> None:
    """The replica of a node holding tweets is frozen (SIGSTOP), so its master accepts writes that no
    replica has. The monitor must leave those entries pending (WAIT finds no replica), not acknowledge
    them: when that master then dies and the stale replica takes over, they are written again.

    The tweets are large (8 KB): what the kernel buffers between master and replica still reaches the
    replica after SIGCONT, so more than that must be written for the replica to miss some of it."""
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=1) as cluster:
        client = cluster.client()
        create_group(client, STREAM, GROUP)
        entries = [tweet(n, text=f"{n} " + "x" * 8192) for n in range(6000)]
        pipeline.abandon(client, STREAM, GROUP, entries)
        backlog = Backlog({b"tweet:" + fields[3]: expected_hash(fields) for fields in entries}, set())
        stream_master = cluster.master_of(STREAM)
        victim = next(node for node in cluster.masters if node is not stream_master)
        frozen = cluster.replica_of(victim)
        host = FunctionsHost(cluster_env(cluster, stream_master, CYCLE_TIME_BUDGET_SEC="30")).start()
        try:
            assert frozen.process is not None
            frozen.process.send_signal(signal.SIGSTOP)
            first = completed(host.invoke())  # the slot map still lists the frozen replica
            victim.stop(kill=True)
            frozen.process.send_signal(signal.SIGCONT)
            cluster.wait_for_failover(victim)
            drain(host, client)
        finally:
            if frozen.process is not None:
                frozen.process.send_signal(signal.SIGCONT)
            host.stop()
        assert first["failed"] > 1000, first  # about a third of the tweets live on the victim's slots
        result = audit(client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad)
        record("Redis Cluster: writes no replica copied, then their master killed", 1, backlog.size, result)
        assert result.clean, result
        client.close()


def test_the_operator_commands_work_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    create_group(cluster_client, STREAM, GROUP)
    abandon_backlog(cluster_client, 200, every=100)  # with two poison and two id-less entries
    env = cluster_env(redis_cluster, redis_cluster.replicas[1])  # REDIS_HOST may be any node, even a replica

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "handler", *args]
        return subprocess.run(command, env=env, cwd=APP_ROOT, capture_output=True, text=True, timeout=60)

    check = cli("check")
    assert 0 == check.returncode, check.stdout
    assert "OSS cluster (3 masters)" in check.stdout
    dry = json.loads(cli("reclaim", "--dry-run").stdout)
    assert (200, {"max-deliveries": 2, "missing-id": 2}) == (dry["would_write"], dry["would_dead_letter"])
    assert 200 == json.loads(cli("reclaim").stdout)["processed"]
    status = json.loads(cli("status", "--json").stdout)
    assert (0, 4) == (status["pending"], status["dead_letter_length"])
    letters = json.loads(cli("dead-letter", "list", "--json").stdout)
    assert 4 == len(letters)
    purged = cli("dead-letter", "purge", letters[0]["id"], letters[1]["id"], "--yes")
    assert 0 == purged.returncode and "purged 2 of 2" in purged.stdout, purged.stderr[-2000:]
    replayed = cli("dead-letter", "replay", "--all")
    assert 0 == replayed.returncode, replayed.stderr
    assert "replayed 2 of 2" in replayed.stdout
    assert 0 == json.loads(cli("status", "--json").stdout)["dead_letter_length"]


def test_the_documented_acl_rule_is_enough_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    create_group(cluster_client, STREAM, GROUP)
    backlog = abandon_backlog(cluster_client, 500)
    for node in redis_cluster.nodes:  # ACL users are per node
        with redis_cluster.node_client(node) as admin:
            admin.execute_command(
                "ACL", "SETUSER", "monitor", "reset", *ACL_RULE.format(password="pw").split()
            )
    env = cluster_env(redis_cluster, redis_cluster.masters[0], REDIS_USERNAME="monitor", REDIS_PASSWORD="pw")
    try:
        done = reclaim(env)
        check = cli(env, "check", timeout=60)
    finally:
        for node in redis_cluster.nodes:
            with redis_cluster.node_client(node) as admin:
                admin.acl_deluser("monitor")
    assert 0 == done.returncode, done.stderr
    assert 500 == json.loads(done.stdout)["processed"]
    assert audit(cluster_client, STREAM, GROUP, DEAD_LETTER, backlog.tweets, backlog.bad).clean
    assert 0 == check.returncode, check.stdout
    assert "PASS  authentication: as user 'monitor'" in check.stdout
    assert "PASS  permissions: 'monitor' may run all" in check.stdout  # verified itself (acl_check_cmd)
    SECURITY_CHECKS.append("ACL on a cluster: the documented rule, set on every node, runs a full cycle")


def test_a_replica_that_came_back_after_a_failover_is_waited_for() -> None:
    """A master holding tweets dies and its replica takes over; the long-lived handler reads the slot map
    while the new master has no replica yet; the old master then comes back as its replica, which no error
    tells the handler. Writes to the new master must still wait for that replica: frozen (SIGSTOP) with its
    link cut, it has none of them, so no entry whose tweet lives there may be acknowledged (a failover now
    would lose the tweet and keep the acknowledgement)."""
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=1) as cluster:
        stream_master = cluster.master_of(STREAM)
        # Not the first master: the test's client enters the cluster there.
        victim = next(node for node in cluster.masters[1:] if node is not stream_master)
        promoted = cluster.replica_of(victim)
        victim.stop(kill=True)
        cluster.wait_for_failover(victim)
        client = cluster.client()
        create_group(client, STREAM, GROUP)
        host = FunctionsHost(cluster_env(cluster, stream_master)).start()
        try:
            abandon_backlog(client, 300)
            drain(host, client)  # the handler's slot map: the promoted master without a replica
            victim.start()  # back as the promoted master's replica
            wait_until_listed_as_replica(cluster, promoted, victim)
            assert victim.process is not None
            victim.process.send_signal(signal.SIGSTOP)
            with cluster.node_client(promoted) as node:
                node.execute_command("CLIENT", "KILL", "TYPE", "replica")  # else the link's buffers reach it
            backlog = abandon_backlog(client, 300, offset=300)
            completed(host.invoke())
        finally:
            if victim.process is not None:
                victim.process.send_signal(signal.SIGCONT)
            host.stop()
        ranges = slot_ranges_of(cluster, promoted)
        pending = {bytes(row[0]) for row in pipeline.pending_rows(client, STREAM, GROUP)}
        acknowledged_there = [
            bytes(fields[3])
            for entry_id, fields in pipeline.command(client, "XRANGE", STREAM, "-", "+")
            if bytes(entry_id) not in pending
            and len(fields) > 3
            and b"tweet:" + bytes(fields[3]) in backlog.tweets
            and any(first <= key_slot(b"tweet:" + bytes(fields[3])) <= last for first, last in ranges)
        ]
        assert [] == acknowledged_there
        client.close()


def test_a_replica_that_joined_is_seen_also_after_redis_py_read_the_map_by_itself() -> None:
    """The slot map's snapshot that page writes use (a master's replica count decides whether they WAIT) is
    compared with what the stream's node says, not with redis-py's own copy of the map: redis-py reads that
    again by itself after any connection error or timeout of a command it routes (the pending count, the
    lease), and would then agree with the node while the snapshot still counts no replica."""
    with LocalCluster(BINARIES["8.2"](), replicas_per_master=1) as cluster:
        victim = cluster.masters[1]  # not the first master: the test's client enters the cluster there
        promoted = cluster.replica_of(victim)
        victim.stop(kill=True)
        cluster.wait_for_failover(victim)
        client = cluster.client()
        first, last = slot_ranges_of(cluster, promoted)[0]
        key = next(k for k in (f"tweet:{n}" for n in range(100_000)) if first < key_slot(k.encode()) <= last)
        topology = ClusterSlots(client)
        assert 0 == topology.node_of(key).replicas
        victim.start()  # back as the promoted master's replica
        wait_until_listed_as_replica(cluster, promoted, victim)
        client.nodes_manager.initialize()  # what redis-py does by itself after a connection error
        topology.refresh_if_replicas_changed(key)
        assert 1 == topology.node_of(key).replicas
        client.close()


def wait_until_listed_as_replica(cluster: LocalCluster, master: LocalRedis, replica: LocalRedis) -> None:
    """Until `replica` is linked to `master` and every node's slot map lists it (the handler may ask any)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with cluster.node_client(replica) as client:
            linked = client.info("replication").get("master_link_status") == "up"
        if linked and all(replica_listed(cluster, node, master, replica) for node in cluster.live_nodes()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{replica.address} is not listed as {master.address}'s replica after 30 s")


def replica_listed(cluster: LocalCluster, node: LocalRedis, master: LocalRedis, replica: LocalRedis) -> bool:
    with cluster.node_client(node) as client:
        rows = client.execute_command("CLUSTER", "SLOTS")
    return replica.port in {int(r[1]) for row in rows if int(row[2][1]) == master.port for r in row[3:]}


def slot_ranges_of(cluster: LocalCluster, master: LocalRedis) -> list[tuple[int, int]]:
    with cluster.node_client(master) as client:
        rows = client.execute_command("CLUSTER", "SLOTS")
    return [(int(row[0]), int(row[1])) for row in rows if int(row[2][1]) == master.port]
