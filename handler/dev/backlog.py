"""The pipeline around the monitor, played for real, for the tests and the benchmarks: the producer's XADD,
a processor that reads entries and crashes before acknowledging them, and the clock (idle times and
delivery counts set with XCLAIM's IDLE and RETRYCOUNT options instead of waiting). Stream replies stay as
the server sent them (flat field lists), as the monitor reads them."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from handler.transport.client import Client
from handler.transport.connect import leave_stream_replies_raw

CRASHED = "consumer-crashed"  # the processor that read the backlog and died
IDLE_ENOUGH_MS = 60_000  # the tests run the monitor with MIN_IDLE_TIME_SEC of 10 or less


def raw(response: Any, **options: Any) -> Any:
    """A response callback that leaves the reply as the server sent it."""
    return response


def leave_replies_raw(client: redis.Redis) -> redis.Redis:
    """The monitor's raw stream replies (handler/transport/connect.py), and XREADGROUP's too."""
    leave_stream_replies_raw(client)
    client.set_response_callback("XREADGROUP", raw)
    return client


def raw_client(port: int, **options: Any) -> redis.Redis:
    """A new client of a loopback server whose stream replies stay raw; `options` e.g. TLS (ssl=True, …)."""
    return leave_replies_raw(redis.Redis(host="127.0.0.1", port=port, protocol=2, **options))


def with_raw_replies(client: Client) -> Client:
    """The same connection pool, with stream replies left raw. A cluster client of LocalCluster.client
    leaves them raw already."""
    if isinstance(client, RedisCluster):
        return client
    return leave_replies_raw(redis.Redis(connection_pool=client.connection_pool))


def command(client: Client, *args: Any) -> Any:
    """A command whose reply stays as the server sent it."""
    return with_raw_replies(client).execute_command(*args)  # type: ignore[no-untyped-call]


def create_group(client: Client, stream: str, group: str) -> None:
    command(client, "XGROUP", "CREATE", stream, group, "$", "MKSTREAM")


def produce(client: Client, stream: str, entries: list[list[bytes]]) -> list[bytes]:
    """XADD each entry (a flat field list), pipelined; their IDs."""
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.execute_command("XADD", stream, "*", *fields)
    return [bytes(entry_id) for entry_id in pipe.execute()]


def crash_after_reading(client: Client, stream: str, group: str, consumer: str, count: int) -> int:
    """A processor reads up to `count` new entries and dies before acknowledging any; how many it read."""
    reply = command(client, "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, ">")
    return len(reply[0][1]) if reply else 0


def age(client: Client, stream: str, group: str, owner: str, ids: list[bytes], idle_ms: int) -> None:
    """Make entries look idle for idle_ms without changing owner or delivery count (XCLAIM IDLE JUSTID)."""
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        command(client, "XCLAIM", stream, group, owner, 0, *chunk, "IDLE", idle_ms, "JUSTID")


def set_deliveries(client: Client, stream: str, group: str, owner: str, ids: list[bytes], count: int) -> None:
    """Set the entries' delivery counts (XCLAIM RETRYCOUNT JUSTID); it also makes them fresh again."""
    command(client, "XCLAIM", stream, group, owner, 0, *ids, "RETRYCOUNT", count, "JUSTID")


def abandon(
    client: Client,
    stream: str,
    group: str,
    entries: list[list[bytes]],
    consumer: str = CRASHED,
    idle_ms: int = IDLE_ENOUGH_MS,
) -> list[bytes]:
    """Produce entries, let a processor read them all and crash, and make them look idle for idle_ms
    (0 leaves them fresh, as a live processor's); their IDs."""
    ids = produce(client, stream, entries)
    crash_after_reading(client, stream, group, consumer, len(ids))
    if idle_ms:
        age(client, stream, group, consumer, ids, idle_ms)
    return ids


def expected_hash(fields: list[bytes]) -> dict[bytes, bytes]:
    """What HSET leaves for a flat field list: the later of repeated names wins."""
    return dict(zip(fields[::2], fields[1::2], strict=True))
