"""The hot path's wire: its own RESP packing is exactly what hiredis produces, a reply late past the socket
timeout is a timeout, and a redis-py change it depends on is reported as what it is."""

from __future__ import annotations

import pytest
import redis
from redis.connection import Connection, ConnectionPool

from handler.dev.local_redis import LocalRedis
from handler.transport.wire import Channel, Wire, pack, pack_hsets


@pytest.mark.parametrize(
    "fields",
    [
        [b"id", b"1", b"text", b"hello"],
        [b"id", b"", b"text", b"\x00\xff\r\n"],
        [b"id", b"x" * 5000, b"big", b"y" * 70_000],  # lengths past the prefix table
        [b"f%d" % n for n in range(600)],  # more fields than the header table
    ],
)
def test_pack_hsets_is_the_same_resp_as_hiredis(fields: list[bytes]) -> None:
    writes = [
        (b"tweet:1", fields),
        (b"tweet:\xe2\x9c\x93", fields[:2]),
        (b"tweet:" + b"k" * 5000, fields[:2]),
    ]
    expected = b"".join(pack((b"HSET", key, *values)) for key, values in writes)
    assert expected == pack_hsets(writes)


class _RenamedSocketConnection(Connection):
    """A connection as a redis-py release that renamed its private socket attribute would hand out."""

    def connect(self) -> None:
        super().connect()  # type: ignore[no-untyped-call]
        self.renamed_sock = self._sock
        del self._sock

    def can_read(self, timeout: float = 0) -> bool:
        return False  # nothing unread: the pool's check before handing it out

    def disconnect(self, *args: object) -> None:
        self._sock = self.__dict__.pop("renamed_sock", None)
        super().disconnect(*args)  # type: ignore[no-untyped-call]


def test_a_redis_py_without_the_private_socket_is_a_programming_error_not_a_retry(
    redis_8: LocalRedis,
) -> None:
    pool = ConnectionPool(port=redis_8.port, connection_class=_RenamedSocketConnection)
    attempts = []

    def step(channel: Channel) -> None:
        attempts.append(1)
        channel.wire(pool)

    try:
        with pytest.raises(RuntimeError, match="no _sock attribute"):
            Channel().run(step)
        assert 1 == len(attempts)  # not retried as if the connection had dropped
    finally:
        pool.disconnect()


def test_a_reply_that_does_not_come_in_time_is_a_timeout_not_a_lost_connection(redis_8: LocalRedis) -> None:
    """A server that answers the handshake but not a command within the socket timeout is told apart from
    one that dropped the connection: the page's step is then given up on, never narrowed down to an entry
    (page.py), nor the slot map read again from a silent node."""
    pool = ConnectionPool(port=redis_8.port, socket_timeout=0.2)
    wire = Wire(pool)
    try:
        with pytest.raises(redis.exceptions.TimeoutError) as raised:
            wire.call([pack((b"BLPOP", b"nothing-ever-arrives", 2))], 1)  # blocks this connection only
        assert not isinstance(raised.value, redis.exceptions.ConnectionError)
    finally:
        wire.close()  # not healthy: disconnected, never handed out again with BLPOP's reply to come
        pool.disconnect()
