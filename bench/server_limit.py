"""The server's own limit: the project's exact command stream for the backlog, packed before the clock
starts and written on a raw socket while another thread drains the replies unparsed. Redis does all the
work and the client almost none, so this is what the server itself can absorb."""

from __future__ import annotations

import socket
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
        parts = [pack((b"XPENDING", STREAM, GROUP, start, b"+", page_size)),
                 pack((b"XCLAIM", STREAM, GROUP, MONITOR, MIN_IDLE_SEC * 1000, *ids))]  # fmt: skip
        parts += [pack((b"HSET", b"tweet:" + fields[3], *fields)) for _, fields in entries]
        parts.append(pack((b"XACK", STREAM, GROUP, *ids)))
        chunks.append(b"".join(parts))
        start = next_id(ids[-1])
    chunks.append(pack((b"DEL", "{tweets_stream}:cursor:" + GROUP)) + pack((b"PING",)))
    return chunks


def replay(port: int, chunks: list[bytes]) -> float:
    """Seconds the server takes to execute the stream, from the first byte out to the last reply in."""
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


__all__ = ["CHUNK", "command_stream", "replay"]
