"""The original Go monitor's algorithm (the program tweets-monitor replaces), re-implemented faithfully as
the benchmark's baseline.

One XPENDING summary, one XPENDING extended for the whole list, one XCLAIM of all IDs, then one concurrent
task per claimed message doing HSET then XACK, over a pool of 20 connections (go-redis's 10 per CPU on a
2-core machine). Run as its own process so its peak memory is its own; prints one JSON line.

    python -m bench.seed_algorithm PORT [CA_FILE]     # with a CA file: TLS, verified against 127.0.0.1
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis.asyncio

from bench.backlog import MIN_IDLE_SEC
from handler.dev.samples import GROUP, MONITOR, STREAM


async def reclaim(port: int, ca_file: str | None = None) -> dict[str, Any]:
    tls: dict[str, Any] = {"connection_class": redis.asyncio.SSLConnection, "ssl_ca_certs": ca_file}
    pool = redis.asyncio.BlockingConnectionPool(
        **(tls if ca_file else {}),
        host="127.0.0.1",
        port=port,
        max_connections=20,
        timeout=None,
        protocol=2,
        socket_connect_timeout=60,
        socket_timeout=120,  # 100,000 waiting tasks slow the event loop down
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    started = time.perf_counter()
    summary: Any = await client.xpending(STREAM, GROUP)
    rows: Any = await client.xpending_range(STREAM, GROUP, "-", "+", summary["pending"])
    claimed: Any = await client.xclaim(
        STREAM, GROUP, MONITOR, MIN_IDLE_SEC * 1000, [r["message_id"] for r in rows]
    )

    async def process(entry_id: bytes, fields: dict[bytes, bytes]) -> bool:
        await client.hset(b"tweet:" + fields[b"id"], mapping=fields)  # type: ignore[arg-type]
        await client.xack(STREAM, GROUP, entry_id)
        return True

    done = await asyncio.gather(*(process(entry_id, fields) for entry_id, fields in claimed))
    seconds = time.perf_counter() - started
    await client.aclose()
    return {"seconds": seconds, "processed": sum(done)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(reclaim(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))))
