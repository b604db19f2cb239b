"""What kind of Redis failure is this: the one place that reads Redis's error codes.

Redis names what went wrong with a code at the start of its error reply (`OOM command not allowed…`). The
monitor meets that code in three spellings:
- redis-py parses some replies into exception classes and drops the code from the message
  (`OutOfMemoryError("command not allowed…")`, keeping it in `status_code` only when it parsed the reply);
- the hot path (wire.py) and replies read raw hand the text on as Redis sent it;
- a command refused inside a Lua script arrives wrapped: `ERR Error running script …: -OOM …` (Redis 6),
  `ERR ACL failure in script: … no permissions …`.
Every decision about a failure (retry it, answer 503, give an entry's delivery back, dead-letter it, say
a right is missing) asks `code_of` or `kind_of` here, never a substring test of its own: a spelling missed
in one place turns a 503 into a 500, or dead-letters a valid tweet.
"""

from __future__ import annotations

from enum import StrEnum

import redis
from redis.exceptions import RedisClusterException

# Lost or timed out (LOADING parsed by redis-py and refused authentication are ConnectionErrors too): the
# one retry policy (retry.py) retries these, on a fresh connection.
LOST_CONNECTION = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
# What the cluster client raises when it cannot read any node's slot map (RedisClusterException, not a
# RedisError), or when its own redirections ran out (ClusterError, "TTL exhausted").
CLUSTER_UNREACHABLE = (RedisClusterException, redis.exceptions.ClusterError)
# Everything talking to Redis can raise, for the few places that must catch them all.
REDIS_FAILURES = (redis.exceptions.RedisError, RedisClusterException)


class FailureKind(StrEnum):
    """What a failure means for the monitor; decisions are made on this, not on the code's spelling."""

    LOST = "lost"  # the connection was lost or timed out: retried, then the invocation answers 503
    CLUSTER_UNREACHABLE = "cluster-unreachable"  # no node of the cluster answered for its slot map: 503
    CLUSTER_CHANGED = "cluster-changed"  # MOVED, ASK, CLUSTERDOWN, TRYAGAIN: read the slot map again
    PASSING_STATE = "passing-state"  # LOADING, READONLY, MASTERDOWN, BUSY: the server will be back: 503
    REFUSED_FOR_NOW = "refused-for-now"  # OOM, NOREPLICAS, MISCONF: this write may succeed later
    NOT_PERMITTED = "not-permitted"  # NOPERM: the ACL user lacks a right (a misconfiguration)
    NO_GROUP = "no-group"  # NOGROUP: the stream or its consumer group does not exist
    WRONG_TYPE = "wrong-type"  # WRONGTYPE: a key of another type; this write can never succeed
    OTHER = "other"


_KIND_OF_CODE = {
    "MOVED": FailureKind.CLUSTER_CHANGED,
    "ASK": FailureKind.CLUSTER_CHANGED,
    "CLUSTERDOWN": FailureKind.CLUSTER_CHANGED,
    "TRYAGAIN": FailureKind.CLUSTER_CHANGED,
    "LOADING": FailureKind.PASSING_STATE,
    "READONLY": FailureKind.PASSING_STATE,
    "MASTERDOWN": FailureKind.PASSING_STATE,
    "BUSY": FailureKind.PASSING_STATE,
    "OOM": FailureKind.REFUSED_FOR_NOW,
    "NOREPLICAS": FailureKind.REFUSED_FOR_NOW,
    "MISCONF": FailureKind.REFUSED_FOR_NOW,
    "NOPERM": FailureKind.NOT_PERMITTED,
    "NOGROUP": FailureKind.NO_GROUP,
    "WRONGTYPE": FailureKind.WRONG_TYPE,
}
# The codes redis-py takes off the message, by the class it parses them into (redis/_parsers/base.py).
_CODE_OF_CLASS: tuple[tuple[type[Exception], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.MovedError, "MOVED"),
    (redis.exceptions.AskError, "ASK"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
)
# Passing server states, in words for the message that says the next invocation tries again.
STATE_IN_WORDS = {
    "LOADING": "is loading its data set after a restart",
    "READONLY": "is a read-only replica (a failover may be under way)",
    "MASTERDOWN": "is a replica whose master is down",
    "BUSY": "is busy running a script",
}
# A refused command inside a script: Redis 7+ ("ACL failure in script"), Redis 6 ("The user executing the
# script can't run this command or subcommand", "… can't access at least one of the keys …").
_SCRIPT_ACL_FAILURE = ("ACL failure", "no permissions", "executing the script can't")


def code_of(error: BaseException | str) -> str:
    """The Redis error code of a failure (`OOM`, `NOPERM`, `MOVED`…), however it was spelled; `ERR` for a
    reply without a code the monitor knows, and for failures that are not error replies."""
    if isinstance(error, BaseException):
        for kind, code in _CODE_OF_CLASS:
            if isinstance(error, kind):
                return code
        status = getattr(error, "status_code", None)
        if isinstance(status, str) and status in _KIND_OF_CODE:
            return status
    message = str(error)
    first = message.split(" ", 1)[0]
    if first in _KIND_OF_CODE:
        return first
    if any(words in message for words in _SCRIPT_ACL_FAILURE):
        return "NOPERM"
    # A refusal inside a Lua script comes after the script's location: "…: @user_script:25: -OOM command…".
    for word in message.replace(":", " ").replace("-", " ").split():
        if word in _KIND_OF_CODE:
            return word
    return "ERR"


def kind_of(error: BaseException | str) -> FailureKind:
    """What the failure means for the monitor (see FailureKind)."""
    code = code_of(error)
    if code in _KIND_OF_CODE:  # CLUSTERDOWN and MASTERDOWN parsed by redis-py are ClusterErrors too
        return _KIND_OF_CODE[code]
    if isinstance(error, CLUSTER_UNREACHABLE):
        return FailureKind.CLUSTER_UNREACHABLE
    if isinstance(error, LOST_CONNECTION):
        return FailureKind.LOST
    return FailureKind.OTHER


def is_unavailable(error: BaseException) -> bool:
    """Redis cannot do the work now but will be able to (unreachable, failing over, loading, busy): the
    invocation answers 503 and the next one tries again."""
    return kind_of(error) in UNAVAILABLE


UNAVAILABLE = frozenset(
    {
        FailureKind.LOST,
        FailureKind.CLUSTER_UNREACHABLE,
        FailureKind.CLUSTER_CHANGED,
        FailureKind.PASSING_STATE,
    }
)
