"""The summary's exact shape, pinned by golden files: users read it in the CLI's JSON, the log line, the
host's ReturnValue and their alert queries, so a refactoring must not change a key, an order or a spelling.

The files in tests/golden/ were captured from real cycles against Redis 8.2 before the package was split into
layers. Only `duration_ms` is masked (it is the one value a run cannot repeat). To capture them anew after a
deliberate change of the shape, run with WRITE_GOLDEN=1: the test then writes the files and fails, so a
capture can never pass as a check.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, MONITOR
from handler.reclaim.streams import StreamsCycle
from handler.reclaim.summary import CycleSummary
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection
from tests.pipeline import abandon, command, create_group, set_deliveries, tweet

GOLDEN = Path(__file__).resolve().parent / "golden"


def _settings(server: LocalRedis, stream_name: str, **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        "REDIS_HOST": server.address,
        "REDIS_TLS": False,
        "MIN_IDLE_TIME_SEC": 10,
        "STREAM_NAME": stream_name,
        "STREAM_CONSUMER_GROUP_NAME": GROUP,
        "MONITORING_CONSUMER_NAME": MONITOR,
        "RECLAIM_PAGE_SIZE": 3,
        **overrides,
    }
    return MonitorSettings(**values)


def _masked(document: Any) -> Any:
    if isinstance(document, dict):
        return {k: 0 if k == "duration_ms" else _masked(v) for k, v in document.items()}
    return document


def _cycle(server: LocalRedis, stream_name: str) -> CycleSummary:
    settings = _settings(server, stream_name)
    connection = RedisConnection(settings)
    try:
        return StreamsCycle(connection, settings).run()
    finally:
        connection.close()


def _mixed_backlog(client: redis.Redis, stream: str) -> None:
    """Every outcome a cycle counts: written, deleted while pending, dead-lettered three ways."""
    create_group(client, stream, GROUP)
    entries = [tweet(n) for n in range(5)]
    entries.append([b"text", b"no id here"])  # missing-id
    entries.append(tweet(5))  # its key holds a string: write-failed
    entries.append(tweet(6))  # delivered too often: max-deliveries
    entries.append(tweet(7))  # deleted from the stream while pending
    ids = abandon(client, stream, GROUP, entries)
    client.set(b"tweet:" + tweet(5)[3], b"not a hash")
    set_deliveries(client, stream, GROUP, "consumer-crashed", [ids[7]], 20)
    command(client, "XCLAIM", stream, GROUP, "consumer-crashed", 0, ids[7], "IDLE", 60_000, "JUSTID")
    client.xdel(stream, ids[8])


def _scenarios(server: LocalRedis, client: redis.Redis) -> dict[str, CycleSummary]:
    client.flushall()
    summaries: dict[str, CycleSummary] = {}
    _mixed_backlog(client, "tweets_stream")
    summaries["one-stream"] = _cycle(server, "tweets_stream")
    summaries["empty"] = _cycle(server, "tweets_stream")

    abandon(client, "tweets_stream", GROUP, [tweet(n) for n in range(10, 12)])
    client.set("{tweets_stream}:lease:" + GROUP, "monitoring_app@elsewhere:42:abcd", px=60_000)
    summaries["lease-held"] = _cycle(server, "tweets_stream")
    client.delete("{tweets_stream}:lease:" + GROUP)

    _mixed_backlog(client, "tweets_stream:0")
    create_group(client, "tweets_stream:1", GROUP)
    summaries["two-streams"] = _cycle(server, "tweets_stream:0,tweets_stream:1")
    summaries["no-stream-matches"] = _cycle(server, "nothing_here:*")
    return summaries


def _rendered(summary: CycleSummary) -> dict[str, Any]:
    return {
        "json": _masked(summary.as_dict()),
        "log_line": re.sub(r"duration_ms=\d+", "duration_ms=0", summary.log_line()),
        "log_line_of_stream": re.sub(r"duration_ms=\d+", "duration_ms=0", summary.log_line("s")),
    }


def test_the_summary_keeps_its_exact_shape(redis_8: LocalRedis, client8: redis.Redis) -> None:
    rendered = {name: _rendered(summary) for name, summary in _scenarios(redis_8, client8).items()}
    if os.environ.get("WRITE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        for name, document in rendered.items():
            (GOLDEN / f"summary-{name}.json").write_text(json.dumps(document, indent=2) + "\n")
        pytest.fail("golden files written: review and commit them, then run without WRITE_GOLDEN")
    for name, document in rendered.items():
        golden = json.loads((GOLDEN / f"summary-{name}.json").read_text())
        assert golden == document, name
        # The key order is part of the shape (alert queries and people read it in this order).
        assert list(golden["json"]) == list(document["json"]), name
