"""The checker's vocabulary: its constants (bounds, counts, the handler's settings it mirrors), the fault and
work kinds with their weights, the worlds a seed can choose, the step list a seed plans, the answer bound,
and the error a broken promise raises."""

from __future__ import annotations

import random
from dataclasses import dataclass

from handler.dev.samples import STREAM
from handler.transport.retry import RETRY_DELAYS_SEC

SECOND_STREAM = STREAM + ":1"  # on a cluster its slot is on another master than tweets_stream's
MAX_DELIVERIES = 4  # the handler's; each CLI invocation draws its own from 2-6
TIMEOUT_SEC = 1
BUDGET_SEC = 2  # the handler's; each CLI invocation draws its own from 0.5-3 s
POISON_DELIVERIES = 50
# The poison step mostly sets counts about the handler's MAX_DELIVERIES, so that the dead-letter rule's edge
# is met: an invocation must write an entry at its MAX_DELIVERIES and dead-letter one past it.
NEAR_MAX_DELIVERIES = (MAX_DELIVERIES - 1, MAX_DELIVERIES + 1)
REFUSING_USER = "chaos-refused"  # may do everything but HSET: each write is refused (NOPERM)
LEASE_LOST = "lease-lost"
# LOADING: DEBUG RELOAD with key-load-delay set so that loading lasts about this long. Redis 6.x answers
# other clients only every 2 MB of RDB loaded, so the world gets 20 MB of incompressible filler first.
LOADING_SEC = 1.0
FILLER_KEYS, FILLER_BYTES = 2000, 10_000
CLUSTER_FILLER_KEYS = 200
MONITOR_CLIENT_NAME = "tweets-monitor"  # the name every connection of the monitor gives itself
CLUSTER_VERSIONS = frozenset({"8.2"})  # LocalCluster assigns slots with CLUSTER ADDSLOTSRANGE (7.0+)
CLUSTER_SHARE, TWO_STREAMS_SHARE = 0.2, 0.4  # of the worlds chosen from seeds
FAULTS = (
    "dead-letter-key-wrong-type",
    "cut",
    "stall",
    "handler-killed",
    "redis-restarted",
    "out-of-memory",
    "refused-command",
    "read-only-replica",
    "loading",
    "overlapping-monitors",
    "live-processor",
    "failover",
    "tweet-node-failover",
    "function-timeout",
    "wide-entries-capped",
    "id-over-bulk-limit",
    "group-less-streams",
)
NODE_ONLY: frozenset[str] = frozenset()
CLUSTER_ONLY = frozenset({"failover", "tweet-node-failover"})
WORK = (
    "produce",
    "process",
    "age",
    "poison",
    "delete",
    "invoke-http",
    "invoke-cli",
    "replay",
    "purge",
    "prune",
)
WEIGHTS = {
    "produce": 6,
    "process": 5,
    "age": 2,
    "poison": 1,
    "delete": 1,
    "invoke-http": 4,
    "invoke-cli": 3,
    "replay": 1,
    "purge": 1,
    "prune": 1,
    **dict.fromkeys(FAULTS, 2),
    "function-timeout": 1,  # the slowest steps: a host of their own, or megabytes through the CLI
    "wide-entries-capped": 1,
}
HOST_ANSWERS = {200, 503}
# function-timeout: the host kills a worker still running this long after the function timeout (host.py).
STEP_FUNCTION_TIMEOUT_SEC = 0.3
# wide-entries-capped: the command line's address-space limit in tests/test_hostile_content.py, and the
# handler's default ENTRY_MAX_BYTES and PAGE_MAX_BYTES. An entry over ENTRY_MAX_BYTES is dead-lettered
# too-large whether its page was read whole (its size counted exactly) or a few entries at a time, once its
# XCLAIM reply was over PAGE_MAX_BYTES (handler/reclaim/page.py handle_page). A reply read a few at a time
# is judged over its bound only after a receive (a quarter of the bound) has passed it
# (handler/transport/wire.py read_bounded), so wide entries stay clear of the band between: under
# UNDER_ENTRY_BOUND they are written, over OVER_ENTRY_BOUND they must be dead-lettered too-large.
MEMORY_CAP_BYTES = 1_500_000_000
ENTRY_MAX_BYTES, PAGE_MAX_BYTES = 8 << 20, 16 << 20
UNDER_ENTRY_BOUND = ENTRY_MAX_BYTES - (1 << 20)
OVER_ENTRY_BOUND = ENTRY_MAX_BYTES * 5 // 4 + (1 << 20)
WIDE_NAMES = 16  # a many-field entry's names cycle over f0..f15, so its hash stays small
WIDE_INVOCATIONS = 4  # the capped command lines a wide entry is given to end written or dead-lettered
# id-over-bulk-limit: the lowest proto-max-bulk-len Redis accepts (1mb).
BULK_LIMIT = 1 << 20
STRAY = STREAM + ":stray:"  # group-less streams the pattern STREAM* matches
# The most deliveries one invocation that failed may have spent on an entry: it is in one page of the
# invocation's walk, whose XCLAIM is sent at most this often (the retry policy), each time counting one with
# a min-idle of 0.
CLAIM_ATTEMPTS = len(RETRY_DELAYS_SEC) + 1
# Faults whose held-back commands the proxy may still deliver after their step: a stalled connection's
# XCLAIM reaches Redis once the proxy is healed, which may be during the next step.
LATE_COMMANDS = frozenset({"stall"})


def answer_bound(budget_sec: float) -> float:
    """The documented bound (budget + 3 timeouts + 1 s), plus process start and slack."""
    return budget_sec + 3 * TIMEOUT_SEC + 3


ANSWER_BOUND_SEC = answer_bound(BUDGET_SEC)


class ViolationError(AssertionError):
    """A promise broken: what, and at which step."""


@dataclass(frozen=True)
class World:
    cluster: bool = False
    streams: tuple[str, ...] = (STREAM,)

    def __str__(self) -> str:
        where = "cluster" if self.cluster else "one node"
        return f"{where}, {len(self.streams)} stream" + "s" * (len(self.streams) > 1)

    @property
    def kinds(self) -> list[str]:
        """The steps that can run in this world (no failover on one node)."""
        excluded = NODE_ONLY if self.cluster else CLUSTER_ONLY
        return [kind for kind in WEIGHTS if kind not in excluded]


WORLDS = {
    "one-stream": World(),
    "two-streams": World(streams=(STREAM, SECOND_STREAM)),
    "cluster": World(cluster=True),
    "cluster-two-streams": World(cluster=True, streams=(STREAM, SECOND_STREAM)),
}


def world_for(seed: int, version: str) -> World:
    """The world a seed runs in: a cluster now and then (where the version allows one), two streams often."""
    rng = random.Random(f"world {seed}")
    cluster = rng.random() < CLUSTER_SHARE and version in CLUSTER_VERSIONS
    two = rng.random() < TWO_STREAMS_SHARE
    return World(cluster=cluster, streams=(STREAM, SECOND_STREAM) if two else (STREAM,))


@dataclass(frozen=True)
class Step:
    kind: str
    seed: int  # the step draws its own randomness from this, so a reduced list replays the same steps

    def __str__(self) -> str:
        return f"{self.kind}#{self.seed}"


def plan(seed: int, count: int, world: World | None = None) -> list[Step]:
    rng = random.Random(seed)
    kinds = (world or World()).kinds
    return [
        Step(rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0], rng.randrange(1 << 30)) for _ in range(count)
    ]
