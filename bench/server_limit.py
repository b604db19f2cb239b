"""The server's own limit: the project's exact command stream for the backlog, packed before the clock
starts and written on a raw socket while another thread drains the replies unparsed. Redis does all the
work and the client almost none, so this is what the server itself can absorb.

Nothing waits between pages: every page is written as fast as the socket takes it, and the replies are only
counted at the end (the last one, a PING's). So one round trip is paid once per run, not once per page, and
the number is the same ceiling at 0 ms and at 1 ms: what the server can do, not what a client that needs a
page's XCLAIM reply before writing its HSETs can reach.

Over TLS the same bytes go through one asyncio connection (a writer task and a reader task on one event
loop), because a Python SSL socket must not be read and written by two threads at once."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from typing import Any

import hiredis
import redis

from bench.backlog import CHUNK, MIN_IDLE_SEC
from handler.dev.samples import GROUP, MONITOR, STREAM
from handler.reclaim.rules import next_id

pack: Any = hiredis.pack_command
END_MARKER = b"+PONG\r\n"


def command_stream(client: redis.Redis, page_size: int) -> list[bytes]:
    """One packed chunk per page, as the cycle sends them: XPENDING, XCLAIM, one HSET each, one XACK."""
    chunks = [pack((b"XPENDING", STREAM, GROUP)) + pack((b"GET", "{tweets_stream}:cursor:" + GROUP))]
    start: bytes = b"-"
    while True:
        entries: Any = client.execute_command("XRANGE", STREAM, start, "+", "COUNT", page_size)  # type: ignore[no-untyped-call]
        if not entries:
            break
        ids = [entry_id for entry_id, _ in entries]
        parts = [
            pack((b"XPENDING", STREAM, GROUP, start, b"+", page_size)),
            pack((b"XCLAIM", STREAM, GROUP, MONITOR, MIN_IDLE_SEC * 1000, *ids)),
        ]
        parts += [pack((b"HSET", b"tweet:" + fields[3], *fields)) for _, fields in entries]
        parts.append(pack((b"XACK", STREAM, GROUP, *ids)))
        chunks.append(b"".join(parts))
        start = next_id(ids[-1])
    chunks.append(pack((b"DEL", "{tweets_stream}:cursor:" + GROUP)) + pack((b"PING",)))
    return chunks


def replay(port: int, chunks: list[bytes], tls: ssl.SSLContext | None = None) -> float:
    """Seconds the server takes to execute the stream, from the first byte out to the last reply in."""
    if tls is not None:
        return asyncio.run(_replay_tls(port, chunks, tls))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finished = threading.Event()

    def drain() -> None:
        tail = b""
        while not tail.endswith(END_MARKER):
            data = sock.recv(1 << 20)
            if not data:
                break
            tail = (tail + data)[-len(END_MARKER) :]
        finished.set()

    reader = threading.Thread(target=drain)
    reader.start()
    started = time.perf_counter()
    for chunk in chunks:
        sock.sendall(chunk)
    reader.join()
    seconds = time.perf_counter() - started
    sock.close()
    return seconds


async def _replay_tls(port: int, chunks: list[bytes], tls: ssl.SSLContext) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, limit=1 << 22)

    async def drain() -> None:
        tail = b""
        while not tail.endswith(END_MARKER):
            data = await reader.read(1 << 20)
            if not data:
                break
            tail = (tail + data)[-len(END_MARKER) :]

    started = time.perf_counter()  # after the handshake, as the plain socket's clock starts connected
    draining = asyncio.create_task(drain())
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    await draining
    seconds = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    return seconds


__all__ = ["CHUNK", "command_stream", "replay"]
