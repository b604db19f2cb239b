"""The one error vocabulary: every spelling of a Redis failure the monitor meets names the same code and kind.

Three spellings per code: the raw reply text (the hot path and raw replies), the exception redis-py's parser
makes of it (which drops the code from the message for the codes it knows), and a refusal from inside a Lua
script. The parsed spelling is made by redis-py's own parser, so a new redis-py that parses differently fails
here rather than in production.
"""

from __future__ import annotations

import pytest
import redis
from redis._parsers.base import BaseParser
from redis.exceptions import RedisClusterException

from handler.transport.failures import UNAVAILABLE, FailureKind, code_of, is_unavailable, kind_of


def parse_error(reply: str) -> Exception:
    """The exception redis-py's parser makes of an error reply (what every parsed command raises)."""
    error: Exception = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    return error


REPLIES = [
    ("OOM command not allowed when used memory > 'maxmemory'.", "OOM", FailureKind.REFUSED_FOR_NOW),
    ("NOREPLICAS Not enough good replicas to write.", "NOREPLICAS", FailureKind.REFUSED_FOR_NOW),
    (
        "MISCONF Redis is configured to save RDB snapshots, but it's unable to persist",
        "MISCONF",
        FailureKind.REFUSED_FOR_NOW,
    ),
    ("NOPERM User mon has no permissions to run the 'hset' command", "NOPERM", FailureKind.NOT_PERMITTED),
    ("READONLY You can't write against a read only replica.", "READONLY", FailureKind.PASSING_STATE),
    (
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "MASTERDOWN",
        FailureKind.PASSING_STATE,
    ),
    ("BUSY Redis is busy running a script.", "BUSY", FailureKind.PASSING_STATE),
    ("MOVED 3999 127.0.0.1:6381", "MOVED", FailureKind.CLUSTER_CHANGED),
    ("ASK 3999 127.0.0.1:6381", "ASK", FailureKind.CLUSTER_CHANGED),
    ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN", FailureKind.CLUSTER_CHANGED),
    ("TRYAGAIN Multiple keys request during rehashing of slot", "TRYAGAIN", FailureKind.CLUSTER_CHANGED),
    ("NOGROUP No such key 'tweets_stream' or consumer group 'g'", "NOGROUP", FailureKind.NO_GROUP),
    (
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "WRONGTYPE",
        FailureKind.WRONG_TYPE,
    ),
    ("ERR something else", "ERR", FailureKind.OTHER),
]


@pytest.mark.parametrize(("reply", "code", "kind"), REPLIES)
def test_a_raw_reply_is_named_by_its_code(reply: str, code: str, kind: FailureKind) -> None:
    raw = redis.exceptions.ResponseError(reply)  # as the hot path's hiredis reader makes it
    assert (code, kind) == (code_of(raw), kind_of(raw))
    assert (code, kind) == (code_of(reply), kind_of(reply))


@pytest.mark.parametrize(("reply", "code", "kind"), REPLIES)
def test_a_reply_parsed_by_redis_py_is_named_by_the_same_code(
    reply: str, code: str, kind: FailureKind
) -> None:
    parsed = parse_error(reply)
    assert (code, kind) == (code_of(parsed), kind_of(parsed))
    # The same exception built without the status code redis-py's parser attaches: the class alone says it.
    bare = type(parsed)(str(parsed))
    if type(parsed) is not redis.exceptions.ResponseError:
        assert code == code_of(bare)


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (
            "ERR Error running script (call to f_1): @user_script:25: @user_script: 25: -OOM command not "
            "allowed when used memory > 'maxmemory'.",
            "OOM",
        ),
        ("ERR ACL failure in script: this user has no permissions to run the 'xlen' command", "NOPERM"),
        (
            "NOPERM User mon has no permissions to run the 'xdel' command script: 5c1b…, on @user_script:3.",
            "NOPERM",
        ),
        ("ERR Error running script (call to f_2): @user_script:4: -NOGROUP No such key", "NOGROUP"),
        (
            "ERR Error running script (call to f_3): @user_script:9: -WRONGTYPE Operation against a key",
            "WRONGTYPE",
        ),
    ],
)
def test_a_refusal_inside_a_script_is_named_by_the_refused_code(reply: str, code: str) -> None:
    assert code == code_of(redis.exceptions.ResponseError(reply))
    assert code == code_of(parse_error(reply))


def test_lost_connections_and_an_unreachable_cluster_are_unavailable() -> None:
    lost: list[Exception] = [
        redis.exceptions.ConnectionError("Connection closed by server"),
        redis.exceptions.TimeoutError(),
    ]
    for error in lost:
        assert FailureKind.LOST == kind_of(error)
    unreachable = [
        RedisClusterException("Redis Cluster cannot be connected"),
        redis.exceptions.ClusterError("TTL exhausted."),
    ]
    for error in unreachable:
        assert FailureKind.CLUSTER_UNREACHABLE == kind_of(error)
    assert all(is_unavailable(error) for error in [*lost, *unreachable])
    # LOADING arrives as a ConnectionError from redis-py: a passing state, retried as a lost connection is.
    loading = parse_error("LOADING Redis is loading the dataset in memory")
    assert isinstance(loading, redis.exceptions.ConnectionError)
    assert (FailureKind.PASSING_STATE, "LOADING") == (kind_of(loading), code_of(loading))


@pytest.mark.parametrize(("reply", "code", "kind"), REPLIES)
def test_only_passing_failures_are_unavailable(reply: str, code: str, kind: FailureKind) -> None:
    assert (kind in UNAVAILABLE) == is_unavailable(redis.exceptions.ResponseError(reply))
    assert (code in ("READONLY", "MASTERDOWN", "BUSY", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")) == (
        kind in UNAVAILABLE
    )
