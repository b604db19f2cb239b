"""The live pipeline beside a drain, for the RECLAIM_MAX_RATE part of the benchmark: a producer adding
tweets at a fixed rate and a processor reading them as the pipeline's processors do. Each runs as its own
process (so neither waits for the other's Python), until SIGTERM.

    python -m bench.live_pipeline produce PORT RATE      # XADD RATE tweets a second, each stamped
    python -m bench.live_pipeline process PORT           # XREADGROUP > , HSET tweet:<id>, XACK

The producer stamps every tweet with `produced_at` (time.time() when its batch was sent: batches go every
5 ms) and prints how many it added, in how many seconds. The processor reads with XREADGROUP `>` (COUNT
100, BLOCK 100), writes each entry into tweet:<id> with HSET and acknowledges the batch with XACK, in one
round trip per batch, and prints one JSON line: for every acknowledged entry, [when it was acknowledged,
produce-to-acknowledge ms]. On SIGTERM it keeps reading until a read comes back empty, so nothing
produced is left unacknowledged.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import redis

from bench.backlog import tweet
from handler.dev.backlog import raw_client
from handler.dev.samples import GROUP, STREAM

LIVE_PROCESSOR = "processor-live"
LIVE_TWEETS_FROM = 10**9  # tweet numbers of the live traffic: never one of the backlog's
BATCH_EVERY_SEC = 0.005


def stop_event() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def produce(client: redis.Redis, rate: float, stop: threading.Event) -> dict[str, float]:
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate) - sent
        if due > 0:
            pipe = client.pipeline(transaction=False)
            stamp = repr(time.time()).encode()
            for number in range(sent, sent + due):
                fields = [*tweet(LIVE_TWEETS_FROM + number), b"produced_at", stamp]
                pipe.execute_command("XADD", STREAM, "*", *fields)  # type: ignore[no-untyped-call]
            pipe.execute()
            sent += due
        time.sleep(BATCH_EVERY_SEC)
    return {"produced": sent, "seconds": time.monotonic() - started}


def process(client: redis.Redis, stop: threading.Event) -> list[tuple[float, float]]:
    acknowledged: list[tuple[float, float]] = []
    while True:
        reply: Any = client.execute_command(  # type: ignore[no-untyped-call]
            "XREADGROUP", "GROUP", GROUP, LIVE_PROCESSOR, "COUNT", 100, "BLOCK", 100, "STREAMS", STREAM, ">"
        )
        if not reply:
            if stop.is_set():
                return acknowledged
            continue
        entries = reply[0][1]
        pipe = client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.execute_command("HSET", b"tweet:" + fields[3], *fields)  # type: ignore[no-untyped-call]
        pipe.execute_command("XACK", STREAM, GROUP, *[entry_id for entry_id, _ in entries])  # type: ignore[no-untyped-call]
        pipe.execute()
        now = time.time()
        for _, fields in entries:
            produced = float(fields[fields[::2].index(b"produced_at") * 2 + 1])
            acknowledged.append((round(now, 4), round((now - produced) * 1000, 3)))


def main() -> None:
    role, port = sys.argv[1], int(sys.argv[2])
    client = raw_client(port)
    stop = stop_event()
    if role == "produce":
        print(json.dumps(produce(client, float(sys.argv[3]), stop)), flush=True)
    elif role == "process":
        print(json.dumps({"acknowledged": process(client, stop)}), flush=True)
    else:
        raise SystemExit(f"unknown role {role!r}: produce or process")


if __name__ == "__main__":
    main()
