"""A lean, pipelined command channel for the cycle's hot path.

redis-py spends about twice the server's time per message on packing each command and handling each reply
in Python. The hot path instead packs commands with hiredis (C), writes a whole page of them at once and
parses the replies with a hiredis reader. The connection itself (TCP or TLS, AUTH, client name, timeouts)
still comes from redis-py's pool, so there is one place where connections are configured.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, cast

import hiredis
import redis
from redis.connection import Connection, ConnectionPool

from handler.transport.failures import LOST_CONNECTION, REDIS_FAILURES
from handler.transport.retry import with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")
RECV_BYTES = 1 << 20
# hiredis's stub types the argument as a 1-tuple; it takes a tuple of any length of str, bytes and numbers.
_pack_command = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
NAME_ERRORS = "surrogateescape"  # key names that are not UTF-8 travel as str and back to their own bytes


def pack(args: tuple[Any, ...]) -> bytes:
    """One command as RESP. A str that is not valid UTF-8 (a stream name read with NAME_ERRORS) goes back
    to the bytes it was read from; the usual case costs nothing extra."""
    try:
        return _pack_command(args)
    except UnicodeEncodeError:
        return _pack_command(
            tuple(arg.encode("utf-8", NAME_ERRORS) if isinstance(arg, str) else arg for arg in args)
        )


_CRLF = b"\r\n"
_PREFIXED_SIZES = 4096  # "$<length>\r\n" made ahead for the usual field sizes
_HEADED_COUNTS = 256  # "*<count>\r\n$4\r\nHSET\r\n" made ahead for the usual number of fields
_BULK_PREFIX = [b"$%d\r\n" % n for n in range(_PREFIXED_SIZES)]
_HSET_HEADER = [b"*%d\r\n$4\r\nHSET\r\n" % (n + 2) for n in range(_HEADED_COUNTS)]


def pack_hsets(writes: Iterable[tuple[bytes, Sequence[bytes]]]) -> bytes:
    """`HSET key field value …` for many keys, as one buffer of RESP.

    The hot path's biggest client cost: hiredis's pack_command copies every argument into its own
    allocation twice, where this only looks up length prefixes and joins once per page (what that saves:
    docs/performance.md).
    """
    parts: list[bytes] = []
    append = parts.append
    for key, fields in writes:
        count = len(fields)
        append(_HSET_HEADER[count] if count < _HEADED_COUNTS else b"*%d\r\n$4\r\nHSET\r\n" % (count + 2))
        size = len(key)
        append(_BULK_PREFIX[size] if size < _PREFIXED_SIZES else b"$%d\r\n" % size)
        append(key)
        append(_CRLF)
        for item in fields:
            size = len(item)
            append(_BULK_PREFIX[size] if size < _PREFIXED_SIZES else b"$%d\r\n" % size)
            append(item)
            append(_CRLF)
    return b"".join(parts)


class ReplyTooLarge(redis.exceptions.RedisError):
    """A reply cost more than its bound (Wire.read_bounded); its connection is closed. `replies` are those
    read whole before it, `one` says whether one reply alone was over its bound (else it was the total)."""

    def __init__(self, replies: list[Any], one: bool, size: int) -> None:
        super().__init__(f"a reply of Redis was over its bound ({size:,} bytes of RESP read so far)")
        self.replies = replies
        self.one = one
        self.size = size


class Wire:
    """One connection taken from a pool; replies come back as hiredis parses them (bytes, lists, ints),
    with error replies as ResponseError instances in place, so one failed command does not hide the rest."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._pool = pool
        self._connection: Connection = pool.get_connection()
        # The pool hands out a connected, authenticated connection; its socket is private to redis-py, but
        # reading and writing it directly is what makes the hot path lean. Every reply asked for is read
        # before the connection goes back to the pool, so redis-py finds it in the state it left it.
        if not hasattr(self._connection, "_sock"):
            # A redis-py release that renamed its private socket: a programming error to fix here, not a
            # connection error to retry (which would answer every invocation with a 503 for ever).
            pool.release(self._connection)
            raise RuntimeError(
                f"redis-py {redis.__version__}'s Connection has no _sock attribute: "
                "handler/transport/wire.py needs updating for this redis-py release"
            )
        sock: socket.socket | None = getattr(self._connection, "_sock")  # noqa: B009  (private, untyped)
        if sock is None:  # disconnected since the pool handed it out: a connection error like any other
            raise redis.exceptions.ConnectionError("the pooled connection has no socket")
        self._sock: socket.socket = sock
        self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        self._buffer = bytearray(RECV_BYTES)  # received into in place: no new bytes object per read
        self._view = memoryview(self._buffer)
        self._healthy = True
        # Replies asked for and not read yet. The invariant: a connection goes back to the pool only with
        # none outstanding. Otherwise the next user of the connection (another page, another node's step
        # after a failure elsewhere) would read this exchange's replies as its own.
        self._unread = 0

    def call(self, commands: Iterable[bytes], count: int) -> list[Any]:
        """Write packed commands in one go and read their `count` replies."""
        self.send(b"".join(commands), count)
        return self.read(count)

    def send(self, data: bytes, replies: int) -> None:
        """Write packed commands that will answer with `replies` replies (read them with read())."""
        self._unread += replies
        try:
            self._sock.sendall(data)
        except BaseException as exc:
            raise self._broken(exc) from exc

    def read(self, count: int) -> list[Any]:
        replies: list[Any] = []
        self._unread -= count
        gets, feed, recv_into, buffer = self._reader.gets, self._reader.feed, self._sock.recv_into, self._view
        try:
            while len(replies) < count:
                reply = gets()
                if reply is False:
                    received = recv_into(buffer)
                    if not received:
                        raise redis.exceptions.ConnectionError("Connection closed by server")
                    feed(buffer, 0, received)  # type: ignore[arg-type]  # any buffer works; the stub says bytes
                else:
                    replies.append(reply)
        except BaseException as exc:
            raise self._broken(exc) from exc
        return replies

    def read_bounded(self, count: int, per_reply: int, total: int = 0) -> list[Any]:
        """read(), giving up with ReplyTooLarge once one reply has cost more than `per_reply` bytes of RESP,
        or all of them more than `total` (0: no total bound). The bytes counted are those received while a
        reply was incomplete, so a bound may be passed by at most one receive (a quarter of the bound).
        Giving up closes the connection: the rest of the reply is never read, and the partly parsed one goes
        with the reader. A MemoryError while parsing counts as over the bound too."""
        replies: list[Any] = []
        self._unread -= count
        gets, feed, recv_into, buffer = self._reader.gets, self._reader.feed, self._sock.recv_into, self._view
        received_total = reply_start = 0
        # Received in pieces small enough to notice a bound passed before much more has arrived.
        size = min(RECV_BYTES, max(4096, min(per_reply, total or per_reply) // 4))
        over_one = over_total = False
        try:
            while len(replies) < count:
                reply = gets()
                if reply is False:
                    # Judged only once what was received is parsed: a receive may hold many small replies.
                    over_one = received_total - reply_start > per_reply
                    over_total = bool(total) and received_total > total
                    if over_one or over_total:
                        break
                    received = recv_into(buffer, size)
                    if not received:
                        raise redis.exceptions.ConnectionError("Connection closed by server")
                    received_total += received
                    feed(buffer, 0, received)  # type: ignore[arg-type]  # any buffer works; the stub says bytes
                else:
                    replies.append(reply)
                    reply_start = received_total
        except MemoryError:
            over_one = True
        except BaseException as exc:
            raise self._broken(exc) from exc
        if over_one or over_total:
            # Raised here, outside any handler, so that no reference cycle (exception, traceback, this frame)
            # keeps the half-parsed reply alive: the sweep runs with the cyclic collector paused.
            self._healthy = False
            self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
            del gets, feed
            raise ReplyTooLarge(replies, over_one, received_total - reply_start)
        return replies

    def socket(self) -> socket.socket:
        """The connection's socket, for reading a reply as it streams in (RawReply); only with nothing
        outstanding, and the wire is closed afterwards unless every byte asked for was read."""
        return self._sock

    def mark_broken(self) -> None:
        """Whatever happened, do not hand this connection back to the pool for reuse."""
        self._healthy = False

    def _broken(self, exc: BaseException) -> BaseException:
        """Any failure mid-exchange leaves unread replies behind: the connection must not be reused."""
        self._healthy = False
        if isinstance(exc, TimeoutError | socket.timeout):
            return redis.exceptions.TimeoutError(f"Timeout reading from Redis: {exc}")
        if isinstance(exc, OSError):
            return redis.exceptions.ConnectionError(f"Error talking to Redis: {exc}")
        return exc

    def close(self) -> None:
        if not self._healthy or self._unread:
            self._connection.disconnect()  # type: ignore[no-untyped-call]
        self._pool.release(self._connection)


_LONGEST_HEADER = 64  # "$<length>" or "*<count>": a longer line is not RESP the monitor asked for
_BULK = ord("$")


class RawReply:
    """One RESP2 reply read off a socket as it arrives, never held whole: headers are parsed, bulk strings
    are skipped, kept in part, or handed on piece by piece (the dead-letter move relays an entry's values
    this way, the dead-letter tools read only the fields they show)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def _receive(self) -> bytes:
        # The socket's own errors as redis-py's, like Wire's: a timeout or a reset is retried, not a crash.
        try:
            chunk = self._sock.recv(RECV_BYTES)
        except TimeoutError as exc:
            raise redis.exceptions.TimeoutError(f"Timeout reading from Redis: {exc}") from exc
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"Error talking to Redis: {exc}") from exc
        if not chunk:
            raise redis.exceptions.ConnectionError("Connection closed by server")
        return chunk

    def line(self) -> bytes:
        while (end := self._data.find(b"\r\n", self._pos)) < 0:
            if len(self._data) - self._pos > _LONGEST_HEADER:
                raise redis.exceptions.InvalidResponse("a RESP header line longer than any the monitor reads")
            self._data = self._data[self._pos :] + self._receive()
            self._pos = 0
        line = self._data[self._pos : end]
        self._pos = end + 2
        return line

    def header(self, kind: bytes) -> int:
        """The count or length of the next `*` or `$` header (-1 for nil); an error reply is raised."""
        line = self.line()
        if line[:1] == b"-":
            raise redis.exceptions.ResponseError(line[1:].decode("utf-8", "replace"))
        if line[:1] != kind:
            raise redis.exceptions.InvalidResponse(f"expected {kind!r}, got {line[:20]!r}")
        return int(line[1:])

    def pieces(self, size: int) -> Iterator[bytes]:
        """The next `size` bytes, in pieces as they arrive."""
        remaining = size
        while remaining:
            if self._pos >= len(self._data):
                self._data, self._pos = self._receive(), 0
            piece = self._data[self._pos : self._pos + remaining]
            self._pos += len(piece)
            remaining -= len(piece)
            yield piece

    def relay(self, count: int, emit: Callable[[bytes], None]) -> None:
        """Hand the next `count` bulk strings on as the RESP they arrived as, in pieces (emit), each piece
        at most a receive's worth: what is whole in the buffer goes in one slice, a long value as it
        arrives."""
        remaining = count
        while remaining:
            data, pos = self._data, self._pos
            start, end = pos, len(data)
            while remaining:
                header_end = data.find(b"\r\n", pos, pos + _LONGEST_HEADER)
                if header_end < 0 or data[pos] != _BULK:  # an incomplete header, or not a bulk string
                    break
                after = header_end + 4 + int(data[pos + 1 : header_end])
                if after > end:
                    break
                pos, remaining = after, remaining - 1
            if pos > start:
                emit(data[start:pos])
            self._pos = pos
            if not remaining:
                return
            if data.find(b"\r\n", pos, pos + _LONGEST_HEADER) >= 0:  # a whole header, a value still arriving
                length = self.header(b"$")
                emit(b"$%d\r\n" % length)
                for piece in self.pieces(length + 2):
                    emit(piece)
                remaining -= 1
            else:
                self._data, self._pos = data[pos:] + self._receive(), 0

    def bulk(self, keep: int) -> bytes | None:
        """The first `keep` bytes of the next bulk string (None for nil); the rest is read and dropped."""
        size = self.header(b"$")
        if size < 0:
            return None
        kept = bytearray()
        for piece in self.pieces(size + 2):
            if len(kept) < keep:
                kept += piece[: keep - len(kept)]
        return bytes(kept[:size])


class Channel:
    """Wires that reconnect, one per node a step talks to. `run(step)` calls step(channel); after a
    connection error or a timeout it retries the whole step on fresh connections with backoff, which is
    safe because every command of the cycle can be repeated (see page.py)."""

    def __init__(self, on_reconnect: Callable[[], None] | None = None) -> None:
        self._wires: dict[int, Wire] = {}
        self._on_reconnect = on_reconnect  # e.g. read a cluster's slot map again before a retry

    def wire(self, pool: ConnectionPool) -> Wire:
        """This channel's connection from `pool`, taken on first use."""
        wire = self._wires.get(id(pool))
        if wire is None:
            wire = self._wires[id(pool)] = Wire(pool)
        return wire

    def drop(self, pool: ConnectionPool) -> None:
        """Close this channel's connection from `pool` (a reply left half read); its next use opens one."""
        wire = self._wires.pop(id(pool), None)
        if wire is not None:
            wire.mark_broken()
            wire.close()

    def run(self, step: Callable[[Channel], T]) -> T:
        """step(self), retried on fresh connections by the one retry policy (retry.py)."""
        try:
            return with_retries(lambda: step(self), self._reconnecting)
        except LOST_CONNECTION:
            self.close()
            raise

    def _reconnecting(self, error: BaseException) -> None:
        self.close()
        # A node that refused or dropped the connection may have failed over: read the slot map again. A
        # timeout says nothing new, and reading the map from a silent node would cost another timeout.
        if self._on_reconnect is None or isinstance(error, redis.exceptions.TimeoutError):
            return
        try:
            self._on_reconnect()
        except REDIS_FAILURES as exc:  # the retry will say what is wrong
            log.warning("could not prepare the retry: %s", exc)

    def close(self) -> None:
        wires, self._wires = list(self._wires.values()), {}
        for wire in wires:
            wire.close()
