"""Hostile HTTP input, generated property-based with hypothesis against the real handler process: wrong and
missing content types, invalid UTF-8, huge bodies, deep nesting, wrong methods, unknown paths. Every answer
is a 4xx (JSON wherever the app sees the request) or, for a valid envelope, a completed invocation; never a
5xx, never a stack trace, and the process stays alive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.dev.host import FunctionsHost, completed, envelope
from handler.dev.local_redis import LocalRedis, environment_for
from handler.functions.app import MAX_BODY_BYTES
from handler.functions.envelope import BadEnvelopeError, parse_invocation
from tests.pipeline import (
    IDLE_ENOUGH_MS,
    age,
    crash_after_reading,
    create_group,
    dead_letters,
    hash_fields,
    produce,
)
from tests.reliability import FUZZ_CASES

CASES = 400
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
PATHS = [
    "/monitor",
    "/monitor",
    "/monitor",
    "/",
    "/monitor/",
    "/Monitor",
    "/admin/functions/monitor",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/metrics/../monitor",
    "/%00",
    "/monitor?x=1",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/json-patch+json",
    "",
    "*/*",
    "application/json; charset=latin-1",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def mutated_envelope(draw: st.DrawFn) -> bytes:
    """A host envelope with one part replaced by something else."""
    document: dict[str, Any] = envelope()
    target = draw(st.sampled_from(["Data", "Metadata", "req", "ScheduleStatus", "IsPastDue", "root"]))
    value = draw(json_values)
    if target in ("Data", "Metadata"):
        document[target] = value
    elif target == "req":
        document["Data"]["req"] = value
    elif target in ("ScheduleStatus", "IsPastDue"):
        document["Data"]["req"][target] = value
    else:
        return json.dumps(value).encode()
    return json.dumps(document).encode()


class LargeBody(bytes):
    """Bytes that print as their size, so hypothesis never renders megabytes when it reports a case."""

    def __repr__(self) -> str:
        return f"<{len(self):,} bytes starting {bytes(self[:40])!r}>"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["binary", "json", "envelope", "nested", "invalid-utf8", "huge", "empty"]))
    if kind == "binary":
        return draw(st.binary(max_size=2000))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "envelope":
        return mutated_envelope(draw)
    if kind == "nested":
        depth = draw(st.sampled_from([100, 1000, 10_000, 200_000]))
        return LargeBody(b'{"Data": {"req": ' + b"[" * depth + b"]" * depth + b"}}")
    if kind == "invalid-utf8":
        return (
            b'{"Data": {"req": {"IsPastDue": false, "x": "'
            + draw(st.binary(min_size=1, max_size=50))
            + b'\xff"}}}'
        )
    if kind == "huge":
        return LargeBody(b"[" + b"1," * (MAX_BODY_BYTES // 2) + b"1]")
    return b""


@pytest.fixture(scope="module")
def fuzz_host(redis_8: LocalRedis) -> Iterator[FunctionsHost]:
    client = redis_8.client()
    client.flushall()
    create_group(client, "tweets_stream", "redisearch_app_group")
    names = {"STREAM_NAME": "tweets_stream", "STREAM_CONSUMER_GROUP_NAME": "redisearch_app_group"}
    env = environment_for(redis_8, MONITORING_CONSUMER_NAME="monitoring_app", MIN_IDLE_TIME_SEC="10", **names)
    host = FunctionsHost(env).start()
    yield host
    host.stop()
    client.close()


def is_valid_envelope(body: bytes) -> bool:
    try:
        parse_invocation(body)
    except BadEnvelopeError:
        return False
    return True


def test_hostile_requests_never_get_a_5xx_or_a_stack_trace(fuzz_host: FunctionsHost) -> None:
    ran = 0

    @settings(
        max_examples=CASES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        method=st.sampled_from(METHODS),
        path=st.sampled_from(PATHS),
        content_type=st.none() | st.sampled_from(CONTENT_TYPES),
        body=bodies(),
        chunked=st.booleans(),
    )
    def one_request(method: str, path: str, content_type: str | None, body: bytes, chunked: bool) -> None:
        nonlocal ran
        ran += 1
        headers = {"X-Azure-Functions-InvocationId": "fuzz"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        payload = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
        answer = fuzz_host.request(method, path, payload, headers)
        assert answer.status < 500, (answer.status, answer.body[:300])
        json_request = (content_type or "").split(";")[0].strip().lower() == "application/json"
        if 200 <= answer.status < 300:
            assert (method, path) in {("POST", "/monitor"), ("GET", "/")}
            if method == "POST":
                assert json_request and is_valid_envelope(body)
                completed(answer)
        else:
            assert 400 <= answer.status < 500
            assert answer.content_type.startswith("application/json"), answer.content_type
            assert "Traceback" not in answer.body.decode(errors="replace")

    one_request()
    FUZZ_CASES["HTTP requests to the handler (hypothesis, derandomized)"] = ran
    assert ran == CASES
    assert fuzz_host.alive()
    assert "Traceback" not in fuzz_host.stderr


def test_odd_stream_entries_are_written_byte_exact_or_dead_lettered(
    client8: redis.Redis, redis_8: LocalRedis
) -> None:
    """Binary values, ids with spaces, colons, braces and unicode, repeated names, a 5 MB field."""
    stream, group = "odd_stream", "odd_group"
    create_group(client8, stream, group)
    odd_ids = [
        b"1 2",
        b"a:b:c",
        b"{tag}",
        b"\xe2\x9c\x93 unicode \xf0\x9f\x90\xa6",
        b"\xff\xfe raw",
        b"x" * 10_000,
    ]
    entries = [[b"id", tweet_id, b"text", b"\x00\x01\xff"] for tweet_id in odd_ids]
    entries.append([b"id", b"dup", b"id", b"dup-later", b"text", b"t"])
    entries.append([b"id", b"big", b"text", b"y" * 5_000_000])
    entries.append([b"id", b"", b"id", b""])
    ids = produce(client8, stream, entries)
    crash_after_reading(client8, stream, group, "crashed", len(ids))
    age(client8, stream, group, "crashed", ids, IDLE_ENOUGH_MS)
    env = environment_for(
        redis_8,
        STREAM_NAME=stream,
        STREAM_CONSUMER_GROUP_NAME=group,
        MONITORING_CONSUMER_NAME="monitoring_app",
        MIN_IDLE_TIME_SEC="10",
    )
    host = FunctionsHost(env).start()
    try:
        summary = completed(host.invoke())
    finally:
        host.stop()
    assert (8, 1) == (summary["processed"], summary["dead_lettered"])
    for fields in entries[:-1]:
        key = b"tweet:" + [v for f, v in zip(fields[::2], fields[1::2], strict=True) if f == b"id"][-1]
        assert dict(zip(fields[::2], fields[1::2], strict=True)) == hash_fields(client8, key)
    ((meta, original),) = dead_letters(client8, "{odd_stream}:dead-letter")
    assert (b"missing-id", entries[-1]) == (meta[b"dlq:reason"], original)
