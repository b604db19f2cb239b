"""The pipeline's end: what the monitor reclaimed is found by the RediSearch index as the processor's
writes are."""

from __future__ import annotations

import json
from typing import Any

from handler.dev.demo import SEARCH_QUERIES
from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, tweet_id
from tests.cli import cli
from tests.pipeline import (
    abandon_in_pipeline,
    command,
    create_group,
    tweet,
)


def test_search_finds_what_the_monitor_reclaimed(redis_search: LocalRedis) -> None:
    """The pipeline's seven example FT.SEARCH queries find the reclaimed tweets like the processor's."""
    client = redis_search.client()
    client.flushall()
    command(
        client,
        "FT.CREATE",
        "tweets-index",
        "ON",
        "HASH",
        "PREFIX",
        "1",
        "tweet:",
        "SCHEMA",
        "id",
        "TEXT",
        "user",
        "TEXT",
        "text",
        "TEXT",
        "location",
        "TEXT",
        "hashtags",
        "TAG",
    )
    create_group(client, STREAM, GROUP)
    samples = {
        "t1": tweet(
            1, user="john", location="Mumbai, India", text="hello from Mumbai", hashtags="covid19,Medicine"
        ),
        "t2": tweet(2, user="maria", location="London", text="world news today", hashtags="MedTech"),
        "t3": tweet(3, user="joanna", location="Berlin", text="nothing to see", hashtags=""),
        "t4": tweet(4, user="priya", location="New Delhi, India", text="just saying hi", hashtags="cov19"),
    }
    abandon_in_pipeline(client, list(samples.values()))
    env = environment_for(redis_search, **{**PIPELINE_NAMES, "MIN_IDLE_TIME_SEC": "10"})
    host = FunctionsHost(env).start()
    try:
        assert 4 == completed(host.invoke())["processed"]
    finally:
        host.stop()
    # The control: the same tweets as the processor writes them (HSET of the entry's fields), other ids.
    for number, fields in enumerate(samples.values(), start=101):
        values = {
            k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=True) if k != b"id"
        }
        control = tweet(number, **values)
        command(client, "HSET", b"tweet:" + control[3], *control)
    name_of = {b"tweet:" + fields[3]: name for name, fields in samples.items()}
    control_of = {b"tweet:" + tweet_id(n): name for n, name in enumerate(samples, start=101)}
    assert 7 == len(SEARCH_QUERIES)  # the pipeline's seven
    for query in SEARCH_QUERIES:
        found: Any = command(client, "FT.SEARCH", "tweets-index", query, "NOCONTENT", "LIMIT", 0, 100)
        reclaimed = {name_of[key] for key in found[1:] if key in name_of}
        written_by_processor = {control_of[key] for key in found[1:] if key in control_of}
        assert reclaimed, query  # every query finds reclaimed tweets...
        assert written_by_processor == reclaimed, query  # ...exactly as it finds the processor's
    done = cli(env, "status", "--json", timeout=60)
    assert 8 == json.loads(done.stdout)["search_documents"]
    client.close()
