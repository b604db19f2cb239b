"""A baseline: the project's pages written the plain way, through redis-py's own pipeline command layer.

Page by page, on one connection, as anyone would write it with redis-py: XPENDING <start> + <page> (the
rows), XCLAIM of the page's IDs (the entries), then one pipeline of one HSET per entry and one XACK. Every
command goes through redis-py's command packing and reply parsing (hiredis when installed), and each page
waits for its replies before the next starts: no worker threads, no page in flight while the next is
claimed. What the project's own wire layer and its overlapping pages add is the distance to this row.

    python -m bench.redispy_pipeline PORT [CA_FILE]   # prints one JSON line: seconds, processed

Run as its own process so its peak memory is its own.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.backlog import MIN_IDLE_SEC
from handler.dev.backlog import raw_client
from handler.dev.samples import GROUP, MONITOR, STREAM
from handler.reclaim.rules import next_id

PAGE_SIZE = 2000


def reclaim(port: int, ca_file: str | None = None) -> dict[str, Any]:
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": ca_file} if ca_file else {}
    client = raw_client(port, **tls)
    started = time.perf_counter()
    processed = 0
    start: bytes = b"-"
    while True:
        rows: Any = client.execute_command("XPENDING", STREAM, GROUP, start, "+", PAGE_SIZE)  # type: ignore[no-untyped-call]
        if not rows:
            break
        ids = [row[0] for row in rows]
        entries: Any = client.execute_command(  # type: ignore[no-untyped-call]
            "XCLAIM", STREAM, GROUP, MONITOR, MIN_IDLE_SEC * 1000, *ids
        )
        pipe = client.pipeline(transaction=False)
        written = []
        for entry_id, fields in entries:
            if fields:
                tweet = fields[fields[::2].index(b"id") * 2 + 1]
                pipe.execute_command("HSET", b"tweet:" + tweet, *fields)  # type: ignore[no-untyped-call]
                written.append(entry_id)
        if written:
            pipe.execute_command("XACK", STREAM, GROUP, *written)  # type: ignore[no-untyped-call]
        pipe.execute()
        processed += len(written)
        start = next_id(ids[-1])
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "processed": processed}


if __name__ == "__main__":
    print(json.dumps(reclaim(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)))
