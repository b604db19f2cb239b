"""A randomized, model-based checker: from a seed, random interleavings of producers, processors, monitor
invocations (through the real handler and the CLI), faults and operator commands against a real Redis, with
the monitor's promises checked after every step.

    ./scripts/chaos [--minutes M] [--seed S] [--steps N] [--version 8.2] [--world W]

The world is chosen from the seed (or by --world): one Redis node (with AOF, a proxy in front of it and a
read-only replica) or, on Redis 8.2, a cluster of three masters with a replica each; one stream, or two
streams under the same group (`tweets_stream,tweets_stream:1`, each with its own dead-letter stream).

The promises (a valid tweet is an entry with a usable `id` whose `tweet:<id>` key can hold a hash), for each
stream:
- an entry leaves the group's pending list only if its tweet is written, or it is in its stream's
  dead-letter stream exactly once, or it was deleted from the stream (or a processor acknowledged it, or an
  operator replayed or purged its dead letter);
- every pending entry's delivery count (XPENDING's times_delivered) is what the model expects, read after
  every step and compared with an interval [lo, hi]: lo is the count last read plus the deliveries known
  since (a processor's read; the poison step sets a count), hi adds, for every invocation of the step that
  may have spent deliveries (killed, cut, stalled, restarted, reloading, failed over, answering 503 or
  losing its lease; and the next step after a stall, whose held-back commands may land late), the times its
  claim may have been sent (the retry policy's attempts). Any other invocation (it answered 200 or exited
  0, also beside a processor or a skipped monitor, or its every write was refused: out of memory, NOPERM,
  READONLY, a dead-letter key of the wrong type) leaves every entry still pending at exactly lo: a written
  entry leaves, a refused attempt gives its delivery back (give_back.py), an entry not reached stays. Below
  lo is an extra give-back (a delivery taken back that no refusal spent); above hi, a give-back missing or a
  delivery spent by an invocation that did not fail. The model then takes the counts read as its own, and
  keeps per entry the attempts seen refused and the deliveries spent by attempts that died, for the
  violation's message;
- a valid tweet is dead-lettered only when the count its invocation read before claiming it (the count the
  model had before the step, plus what the step's other invocations may have spent) is more than that
  invocation's MAX_DELIVERIES (the handler's 4, a CLI's own 2-6; the smallest of the step's): a dead letter
  one delivery early is a violation. And only after more deliveries not refused than the smallest
  MAX_DELIVERIES any invocation used, counted from its first delivery as an upper bound (processor reads,
  deliveries set, and every invocation since that may have spent one); and never both written and
  dead-lettered;
- no dead letter is duplicated, none names an entry that never existed in its stream, no stray `tweet:` key;
- every invocation answers 200 or 503 (the CLI exits 0 or 1) within its own budget plus 3 timeouts plus 3 s,
  also when two run at once or a processor works beside it;
- the host's function timeout (function-timeout): the host SIGKILLs the handler past the timeout and its
  grace period and starts it again without counting an error (handler/dev/host.py), and the next
  invocation through the same host answers as above;
- wide entries (wide-entries-capped: 100k-500k fields or values of several MB, some over ENTRY_MAX_BYTES,
  some over PAGE_MAX_BYTES alone) claimed by command lines under a 1.5 GB address-space limit: each exits 0
  or 1 without MemoryError, and each wide entry under ENTRY_MAX_BYTES ends written (HLEN, HSTRLEN), each
  over it dead-lettered `too-large` once, whatever its deliveries. The
  checker never reads one whole: it writes and reads them raw, checks dead letters through a script that
  returns their metadata only, and removes them afterwards, so the model never holds them;
- an entry whose id or a value is over proto-max-bulk-len (id-over-bulk-limit, the limit lowered to 1mb
  after it was added, past MAX_DELIVERIES) is dead-lettered once, whole, while the limit is low;
- streams that STREAM_NAME's pattern matches without the group (group-less-streams): a command line with
  the pattern exits 0, serves exactly the real streams, and leaves the others as they were (no group).

A failing run prints its seed and a step list reduced greedily (each candidate re-run up to three times,
since threads and real servers are not deterministic), with how many re-runs reproduced it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias

import redis
from redis.cluster import ClusterNode
from redis.crc import key_slot

from handler.dev.host import APP_ROOT, FunctionsHost, FunctionTimedOutError, completed
from handler.dev.local_cluster import LocalCluster
from handler.dev.local_redis import LocalRedis, LocalRedisError, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, MONITOR, STREAM, tweet_id
from handler.keys import DEAD_LETTER_SUFFIX, hash_tag_of
from handler.reclaim.dead_letter import is_part, split_dead_letter
from handler.transport.client import Client
from handler.transport.connect import RawStreamCluster
from handler.transport.retry import RETRY_DELAYS_SEC
from tests.pipeline import command, create_group, expected_hash, pending_rows, raw
from tests.proxy import FaultyProxy

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
EntryKey: TypeAlias = tuple[str, bytes]  # (stream, entry id): two streams may hold the same id


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


@dataclass
class Model:
    """What the checker knows the world did to each entry."""

    entries: dict[EntryKey, list[bytes]] = field(default_factory=dict)  # flat fields
    tweet_of: dict[EntryKey, bytes | None] = field(default_factory=dict)  # tweet:<id>, or None without an id
    delivered: set[EntryKey] = field(default_factory=set)  # read by the group at least once
    reads: Counter[EntryKey] = field(default_factory=Counter)
    abnormal_since: dict[EntryKey, int] = field(default_factory=dict)  # abnormal invocations when delivered
    processed: set[EntryKey] = field(default_factory=set)  # acknowledged by a processor
    half_written: set[EntryKey] = field(default_factory=set)  # a processor wrote it and crashed
    deleted: set[EntryKey] = field(default_factory=set)
    poison: set[EntryKey] = field(default_factory=set)
    resolved: set[EntryKey] = field(default_factory=set)  # its dead letter replayed or purged
    wrong_type_ids: set[bytes] = field(default_factory=set)
    abnormal: int = 0  # invocations that may have spent a delivery of every entry pending then
    max_deliveries: int = MAX_DELIVERIES  # the smallest any invocation so far used
    # The delivery promise, entry by entry (the module docstring). `count` is each delivered entry's
    # times_delivered as last read (every step), plus the deliveries known since: lo of its interval.
    count: dict[EntryKey, int] = field(default_factory=dict)
    refused: Counter[EntryKey] = field(default_factory=Counter)  # attempts refused: deliveries given back
    died: Counter[EntryKey] = field(default_factory=Counter)  # deliveries spent by attempts that failed
    # The current step: per invocation, the deliveries it may have spent on each pending entry (0: none, a
    # 200 or every write refused); those a previous step's late commands may add; the smallest
    # MAX_DELIVERIES of its invocations (None: it ran none); when it began.
    spends: list[int] = field(default_factory=list)
    late: int = 0
    step_max: int | None = None
    step_began: float = 0.0
    # Entries that left the pending list: the count before that step, the deliveries its invocations other
    # than the one that took the entry may have spent first, and the step's smallest MAX_DELIVERIES.
    left: dict[EntryKey, tuple[int, int, int]] = field(default_factory=dict)
    lettered_pending: set[EntryKey] = field(default_factory=set)  # a dead letter seen while still pending

    def add(self, entry: EntryKey, fields: list[bytes]) -> None:
        self.entries[entry] = fields
        self.tweet_of[entry] = _tweet_key(fields)


@dataclass
class Stats:
    steps: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    checks: int = 0
    fates: Counter[str] = field(default_factory=Counter)


def tweet_entry(rng: random.Random, number: int) -> list[bytes]:
    """A tweet, often ordinary, sometimes adversarial: many fields, a big value, binary, repeated ids, no
    id or an empty one."""
    fields = [
        b"hashtags",
        b"covid19",
        b"id",
        tweet_id(rng.randrange(number + 1)),
        b"text",
        b"hello %d" % number,
        b"user",
        b"john",
    ]
    roll = rng.random()
    if roll < 0.06:
        fields += [part for n in range(4500) for part in (b"f%d" % n, b"v")]  # past one Lua call
        if rng.random() < 0.4:
            del fields[2:4]  # and no id: it goes to the dead-letter stream whole
    elif roll < 0.08:
        fields[5] = b"x" * 1_000_000
    elif roll < 0.16:
        fields[5] = rng.randbytes(64)
    elif roll < 0.22:
        del fields[2:4]  # no id
    elif roll < 0.26:
        fields[3] = b""
    elif roll < 0.30:
        fields += [b"text", b"a repeated name"]
    return fields


@dataclass(frozen=True)
class Wide:
    """A wide entry as the checker writes it, never held as a field list: `id`, then either `pairs` pairs
    whose names cycle over WIDE_NAMES names, each with a value of `value_len` bytes, or one value of each
    size in `big`."""

    ident: bytes
    pairs: int = 0
    value_len: int = 0
    big: tuple[int, ...] = ()

    @staticmethod
    def draw(rng: random.Random, ident: bytes, over: bool) -> Wide:
        """Many fields (100k-500k pairs) or values of several MB, under UNDER_ENTRY_BOUND or over
        OVER_ENTRY_BOUND of RESP."""
        if rng.random() < 0.5:
            if over:
                wide = Wide(ident, pairs=rng.randrange(460_000, 500_000, WIDE_NAMES), value_len=12)
            else:
                wide = Wide(ident, pairs=rng.randrange(100_000, 300_000, WIDE_NAMES), value_len=4)
        elif over:
            size = (7 << 20) + 100_000 if rng.random() < 0.3 else 4 << 20  # over both bounds, or one
            wide = Wide(ident, big=tuple(rng.randrange(size, size + (1 << 20)) for _ in range(3)))
        else:
            wide = Wide(ident, big=tuple(rng.randrange(1 << 20, 3 << 20) for _ in range(rng.randint(1, 2))))
        if wide.over != over or not (over or wide.resp_bytes < UNDER_ENTRY_BOUND):
            raise AssertionError(f"{wide} is in a band where either outcome is right")
        return wide

    def _names(self) -> list[bytes]:
        return (
            [b"f%d" % k for k in range(WIDE_NAMES)]
            if self.pairs
            else [b"big%d" % n for n in range(len(self.big))]
        )

    def fields_resp(self) -> bytes:
        """Its fields as RESP bulk strings (XADD's arguments after `*`, and XREADGROUP's reply)."""
        head = _bulk(b"id") + _bulk(self.ident)
        if self.pairs:
            block = b"".join(_bulk(name) + _bulk(b"v" * self.value_len) for name in self._names())
            return head + block * (self.pairs // WIDE_NAMES)
        return head + b"".join(
            _bulk(name) + _bulk(b"x" * size) for name, size in zip(self._names(), self.big, strict=True)
        )

    @property
    def field_count(self) -> int:
        return 1 + (self.pairs or len(self.big))

    @property
    def resp_bytes(self) -> int:
        id_pair = len(_bulk(b"id") + _bulk(self.ident))
        if self.pairs:
            per_block = sum(len(_bulk(name)) + len(_bulk(b"v" * self.value_len)) for name in self._names())
            return id_pair + per_block * (self.pairs // WIDE_NAMES)
        return id_pair + sum(
            len(_bulk(n)) + size + len(b"$%d\r\n\r\n" % size)
            for n, size in zip(self._names(), self.big, strict=True)
        )

    @property
    def over(self) -> bool:
        """Over ENTRY_MAX_BYTES, beyond the band: dead-lettered too-large however its page is read."""
        return self.resp_bytes > OVER_ENTRY_BOUND

    def value_lengths(self) -> dict[bytes, int]:
        """Its hash as HSET leaves it, as lengths (the later of repeated names wins; every value of a name
        is the same)."""
        lengths = {b"id": len(self.ident)}
        if self.pairs:
            lengths.update(dict.fromkeys(self._names(), self.value_len))
        else:
            lengths.update(zip(self._names(), self.big, strict=True))
        return lengths


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def dead_letter_of(stream: str) -> str:
    return hash_tag_of(stream) + DEAD_LETTER_SUFFIX


# A page of a dead-letter stream as ids, field counts and metadata only (a wide dead letter is never sent
# to the checker): KEYS: the dead-letter stream; ARGV: the first id, how many. Each row: {id, field count,
# the metadata (with dlq:parts and dlq:fields for a continued letter) or a part's dlq:part-of pair}.
DEAD_LETTER_HEADS_LUA = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local out = {}
for i, row in ipairs(rows) do
  local f = row[2]
  local n = 18
  if f[1] == 'dlq:part-of' then
    n = 2
  elseif f[2] == '2' then
    n = 22
  end
  local head = {}
  for j = 1, math.min(n, #f) do
    head[j] = f[j]
  end
  out[i] = {row[1], #f, head}
end
return out
"""


def _after(entry_id: bytes) -> bytes:
    """The smallest stream ID after `entry_id` (XRANGE's `(` needs Redis 6.2)."""
    ms, seq = entry_id.split(b"-")
    return b"%s-%d" % (ms, int(seq) + 1)


class Invocation:
    """One monitor invocation running in a thread; finish() joins it, checks its answer and bound, and says
    whether it may have spent a delivery (it failed, or lost its lease to another monitor)."""

    def __init__(self, run: Callable[[], Any], check: Callable[[Any], bool], bound: float) -> None:
        self._results: list[Any] = []
        self._check, self.bound = check, bound
        self._thread = threading.Thread(target=self._run, args=(run,), daemon=True)
        self._thread.start()

    def _run(self, run: Callable[[], Any]) -> None:
        try:
            self._results.append(run())
        except Exception as exc:  # reported by finish(), in the checker's thread
            self._results.append(exc)

    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self) -> bool:
        self._thread.join(timeout=self.bound * 3 + 10)
        if not self._results:
            raise ViolationError(f"an invocation did not end within {self.bound * 3 + 10:.0f} s")
        return self._check(self._results[0])

    @property
    def result(self) -> Any:
        """What it returned (a CLI's (CompletedProcess, seconds), the host's Answer), None before it ended."""
        return self._results[0] if self._results else None

    @property
    def text(self) -> bytes:
        """The answer's body, or the CLI's output (empty before it ended)."""
        if not self._results:
            return b""
        result = self._results[0]
        if isinstance(result, tuple):
            return str(result[0].stdout).encode()
        return bytes(getattr(result, "body", b""))


class Reload:
    """DEBUG RELOAD from a background thread (the server saves its RDB and loads it back, answering LOADING
    meanwhile), and a probe that sees what clients see: a GET on a fresh connection every 20 ms."""

    def __init__(self, port: int, probe_key: bytes = b"chaos:probe") -> None:
        self.port = port
        # On a cluster, a key of the reloading node's slots: another would answer MOVED, not LOADING.
        self.probe_key = probe_key
        self.saw_loading = False
        self.error: Exception | None = None
        self._loading, self._done = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._reload, self._probe)]
        for thread in self._threads:
            thread.start()

    def start_after(self, delay: float) -> None:
        time.sleep(delay)
        self.start()

    def wait_until_loading(self, timeout: float = 5) -> None:
        self._loading.wait(timeout)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)
        if self.error is not None:
            raise self.error

    def _reload(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, protocol=2)
        try:
            client.execute_command("DEBUG", "RELOAD")  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            self.error = exc
        finally:
            client.close()
            self._done.set()

    def _probe(self) -> None:
        while not self._done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as probe:
                    probe.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(self.probe_key), self.probe_key))
                    reply = probe.recv(200)
            except OSError:
                reply = b""
            if reply.startswith(b"-LOADING"):
                self.saw_loading = True
                self._loading.set()
            self._done.wait(0.02)


class Run:
    """One world: Redis, a handler, the model. The subclasses make the Redis: one node or a cluster."""

    def __init__(self, version: str, workdir: Path, world: World) -> None:
        self.version, self.workdir, self.world = version, workdir, world
        self.streams = world.streams
        self.model = Model()
        self.stats = Stats()
        self.numbers = 0
        self._previous_kind = ""
        self._pairs: dict[bytes, tuple[int, set[tuple[bytes, bytes]]]] = {}  # per tweet, for _check_written
        self.admin: Client = self._start_redis()
        try:
            for stream in self.streams:
                create_group(self.admin, stream, GROUP)
            self._refusing_user()
            self.host = FunctionsHost(self._host_env()).start()
        except BaseException:
            self._stop_redis()
            raise

    # What each kind of world provides.
    def _start_redis(self) -> Client:
        raise NotImplementedError

    def _stop_redis(self) -> None:
        raise NotImplementedError

    def _node_clients(self) -> list[redis.Redis]:
        """A new client for every live server (closed by the caller)."""
        raise NotImplementedError

    def _env(self, **overrides: str) -> dict[str, str]:
        """The CLI's environment (and the handler's, via _host_env)."""
        raise NotImplementedError

    def _server_of(self, stream: str) -> LocalRedis:
        """The server that holds `stream` (for commands sent raw)."""
        raise NotImplementedError

    def _host_env(self) -> dict[str, str]:
        return self._env()

    def _settings(self, **overrides: str) -> dict[str, str]:
        return {
            "STREAM_NAME": ",".join(self.streams),
            "STREAM_CONSUMER_GROUP_NAME": GROUP,
            "MONITORING_CONSUMER_NAME": MONITOR,
            "MIN_IDLE_TIME_SEC": "0",
            "MAX_DELIVERIES": str(MAX_DELIVERIES),
            "REDIS_TIMEOUT_SEC": str(TIMEOUT_SEC),
            "CYCLE_TIME_BUDGET_SEC": str(BUDGET_SEC),
            "LEASE_TTL_SEC": "1",
            "RECLAIM_PAGE_SIZE": "50",
            **overrides,
        }

    def _refusing_user(self) -> None:
        """On every server: ACL users live in each server's memory only."""
        for client in self._node_clients():
            with client:
                acl = ("ACL", "SETUSER", REFUSING_USER, "on", ">pw", "~*", "+@all", "-hset")
                client.execute_command(*acl)  # type: ignore[no-untyped-call]

    def _config_set(self, name: str, value: object) -> None:
        for client in self._node_clients():
            with client:
                client.config_set(name, value)  # type: ignore[arg-type]

    def close(self) -> None:
        self.host.stop(timeout=10)
        self.admin.close()
        self._stop_redis()

    # Steps.
    def step(self, step: Step) -> None:
        rng = random.Random(step.seed)
        self.stats.steps += 1
        model = self.model
        model.late = CLAIM_ATTEMPTS if self._previous_kind in LATE_COMMANDS else 0
        model.spends, model.step_max, model.step_began = [], None, time.monotonic()
        self._previous_kind = step.kind
        injected = getattr(self, "_" + step.kind.replace("-", "_"))(rng)
        if step.kind in FAULTS and injected is not False:
            self.stats.faults[step.kind] += 1

    def _produce(self, rng: random.Random, count: int | None = None) -> None:
        for _ in range(count or rng.randrange(1, 30)):
            self.numbers += 1
            stream = rng.choice(self.streams)
            fields = tweet_entry(rng, self.numbers)
            wrong = rng.random() < 0.03 and len(fields) > 3 and fields[2] == b"id" and fields[3]
            # A tweet key of another type (never over a hash written already): its writes can never succeed.
            if wrong and self.admin.set(b"tweet:" + fields[3], b"not a hash", nx=True):
                self.model.wrong_type_ids.add(fields[3])
            entry_id = bytes(command(self.admin, "XADD", stream, "*", *fields))
            self.model.add((stream, entry_id), fields)

    def _process(self, rng: random.Random, *, live: bool = False) -> int:
        """A processor reads, writes and acknowledges some entries, and crashes on the rest (a live one
        sometimes after writing)."""
        stream = rng.choice(self.streams)
        consumer = f"processor-{rng.randrange(4)}"
        count = rng.randrange(1, 10 if live else 40)
        read = self._read(stream, consumer, count)
        for raw_id, fields in read:
            entry = (stream, bytes(raw_id))
            self._delivered(entry)
            flat = list(fields)
            key = _tweet_key(flat)
            if key is None or key[6:] in self.model.wrong_type_ids:
                continue  # the processor crashes on it
            roll = rng.random()
            if roll < 0.5:
                command(self.admin, "HSET", key, *flat)
                self.admin.xack(stream, GROUP, entry[1])
                self.model.processed.add(entry)
            elif live and roll < 0.7:
                command(self.admin, "HSET", key, *flat)  # and crashes before acknowledging
                self.model.half_written.add(entry)
        return len(read)

    def _abandon(self, rng: random.Random, count: int) -> None:
        """New entries, read by a processor that crashes at once."""
        self._produce(rng, count)
        for stream in self.streams:
            for raw_id, _ in self._read(stream, "processor-crashed", 1000):
                self._delivered((stream, bytes(raw_id)))

    def _read(self, stream: str, consumer: str, count: int) -> list[Any]:
        """New entries for a processor ([id, fields] each)."""
        read = command(
            self.admin, "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "STREAMS", stream, ">"
        )
        return list(read[0][1]) if read else []

    def _delivered(self, entry: EntryKey) -> None:
        self.model.delivered.add(entry)
        self.model.reads[entry] += 1
        self.model.count[entry] = self.model.count.get(entry, 0) + 1
        self.model.abnormal_since.setdefault(entry, self.model.abnormal)

    def _foreign_rows(self, stream: str) -> list[tuple[bytes, bytes, int, int]]:
        return [row for row in pending_rows(self.admin, stream, GROUP) if row[1] != MONITOR.encode()]

    def _age(self, rng: random.Random) -> None:
        stream = rng.choice(self.streams)
        rows = self._foreign_rows(stream)
        ids = [row[0] for row in rng.sample(rows, min(len(rows), rng.randrange(1, 50)))]
        for entry_id in ids:
            command(self.admin, "XCLAIM", stream, GROUP, "processor-0", 0, entry_id, "IDLE", 60_000, "JUSTID")

    def _poison(self, rng: random.Random) -> None:
        stream = rng.choice(self.streams)
        rows = self._foreign_rows(stream)
        if not rows:  # work for it: entries a processor crashed on
            self._abandon(rng, rng.randrange(3, 10))
            rows = self._foreign_rows(stream)
        for row in rng.sample(rows, min(len(rows), rng.randrange(1, 4))):
            deliveries = POISON_DELIVERIES if rng.random() < 0.3 else rng.randint(*NEAR_MAX_DELIVERIES)
            command(
                self.admin,
                "XCLAIM",
                stream,
                GROUP,
                row[1],
                0,
                row[0],
                "RETRYCOUNT",
                deliveries,
                "JUSTID",
            )
            self.model.poison.add((stream, row[0]))
            self.model.count[stream, row[0]] = deliveries  # RETRYCOUNT sets it; JUSTID adds none

    def _delete(self, rng: random.Random) -> None:
        stream = rng.choice(self.streams)
        rows = pending_rows(self.admin, stream, GROUP)
        for row in rng.sample(rows, min(len(rows), rng.randrange(1, 3))):
            self.admin.xdel(stream, row[0])
            self.model.deleted.add((stream, row[0]))

    # Invocations.
    def _begin_http(self) -> Invocation:
        self._invoked(MAX_DELIVERIES)

        def check(answer: Any) -> bool:
            if isinstance(answer, BaseException):
                raise ViolationError(f"the handler did not answer: {answer!r}")
            if answer.status not in HOST_ANSWERS or answer.seconds > ANSWER_BOUND_SEC:
                raise ViolationError(
                    f"invocation answered {answer.status} in {answer.seconds:.1f} s: {answer.body[:300]!r}"
                )
            return bool(answer.status != 200 or LEASE_LOST.encode() in answer.body)

        return Invocation(self.host.invoke, check, ANSWER_BOUND_SEC)

    def _cli_settings(self, rng: random.Random) -> dict[str, str]:
        """Random settings for one CLI invocation; the model keeps the smallest MAX_DELIVERIES."""
        max_deliveries = rng.randint(2, 6)
        self.model.max_deliveries = min(self.model.max_deliveries, max_deliveries)
        self._invoked(max_deliveries)
        return {
            "RECLAIM_PAGE_SIZE": str(rng.choice([1, 7, 50, 500])),
            "CYCLE_MAX_MESSAGES": str(rng.choice([5, 100, 1_000_000])),
            "CYCLE_TIME_BUDGET_SEC": f"{rng.uniform(0.5, 3):.1f}",
            "MIN_IDLE_TIME_SEC": str(rng.choice([0, 1])),
            "MAX_DELIVERIES": str(max_deliveries),
        }

    def _begin_cli(self, settings: dict[str, str], launcher: tuple[str, ...] = ()) -> Invocation:
        """The CLI's `reclaim`; `launcher` runs it under another program (prlimit)."""
        bound = answer_bound(float(settings.get("CYCLE_TIME_BUDGET_SEC", BUDGET_SEC)))
        env = self._env(**settings)

        def run() -> tuple[subprocess.CompletedProcess[str], float]:
            began = time.monotonic()
            done = subprocess.run(
                [*launcher, sys.executable, "-m", "handler", "reclaim"],
                env=env,
                cwd=APP_ROOT,
                capture_output=True,
                text=True,
                timeout=bound * 3,
            )
            return done, time.monotonic() - began

        def check(result: Any) -> bool:
            if isinstance(result, BaseException):
                raise ViolationError(f"reclaim did not exit: {result!r}")
            done, took = result
            crashed = "Traceback" in done.stderr or "MemoryError" in done.stderr
            if done.returncode not in (0, 1) or took > bound or crashed:
                raise ViolationError(
                    f"reclaim exited {done.returncode} in {took:.1f} s (bound {bound:.1f} s): "
                    f"{done.stderr[-500:]}"
                )
            return bool(done.returncode != 0 or LEASE_LOST in done.stdout)

        return Invocation(run, check, bound)

    def _http(self, fault: Callable[[], None] | None = None) -> bool:
        invocation = self._begin_http()
        if fault is not None:
            fault()
        return invocation.finish()

    def _invoked(self, max_deliveries: int) -> None:
        """An invocation of this step will use this MAX_DELIVERIES (the model keeps the step's smallest)."""
        step_max = self.model.step_max
        self.model.step_max = max_deliveries if step_max is None else min(step_max, max_deliveries)

    def _spent(self, *abnormal: bool) -> None:
        """Invocations that failed or lost their lease may each have spent a delivery (CLAIM_ATTEMPTS on
        one entry); the others none. An invocation no step counts here (one whose every write is refused)
        spends none either."""
        self.model.abnormal += sum(abnormal)
        self.model.spends += [CLAIM_ATTEMPTS if a else 0 for a in abnormal]

    def _abnormal(self) -> None:
        self.model.abnormal += 1
        self.model.spends.append(CLAIM_ATTEMPTS)

    def _invoke_http(self, rng: random.Random) -> None:
        self._spent(self._http())

    def _invoke_cli(self, rng: random.Random) -> None:
        self._spent(self._begin_cli(self._cli_settings(rng)).finish())

    def _overlapping_monitors(self, rng: random.Random) -> bool:
        """Two invocations at once against the same world: a CLI with small pages over a backlog, and once it
        holds the sweep lease, the handler or another CLI. Counted as injected when they met: one was skipped
        because the other held the lease, or one lost the lease."""
        self._abandon(rng, rng.randrange(100, 300))
        slow = {
            "RECLAIM_PAGE_SIZE": str(rng.choice([1, 7])),
            "MIN_IDLE_TIME_SEC": "0",
            "CYCLE_MAX_MESSAGES": "1000000",
        }
        settings = [{**self._cli_settings(rng), **slow}, self._cli_settings(rng)]
        first = self._begin_cli(settings[0])
        self._wait_for_a_lease(first)  # the first is sweeping: the second starts in its middle
        second = self._begin_http() if rng.random() < 0.5 else self._begin_cli(settings[1])
        outcomes: list[bool] = []
        errors: list[ViolationError] = []
        for invocation in (first, second):
            try:
                outcomes.append(invocation.finish())
            except ViolationError as exc:
                errors.append(exc)
        self._spent(*outcomes)
        if errors:
            raise errors[0]
        return any(
            b"lease held by" in answer or LEASE_LOST.encode() in answer
            for answer in (first.text, second.text)
        )

    def _wait_for_a_lease(self, invocation: Invocation) -> None:
        leases = [hash_tag_of(stream) + ":lease:" + GROUP for stream in self.streams]
        while invocation.running() and not any(self.admin.exists(lease) for lease in leases):
            time.sleep(0.002)

    def _live_processor(self, rng: random.Random) -> bool:
        """While an invocation runs (over a backlog, often), a producer adds entries and a processor reads new
        ones (`>`), writes and acknowledges some, crashes on others, sometimes after writing. Counted as
        injected when the processor read something while the invocation was still running."""
        if rng.random() < 0.7:
            self._abandon(rng, rng.randrange(20, 150))
        invocation = self._begin_http() if rng.random() < 0.5 else self._begin_cli(self._cli_settings(rng))
        met = False
        try:
            for _ in range(500):
                if rng.random() < 0.5:
                    self._produce(rng, rng.randrange(1, 6))
                read = self._process(rng, live=True)
                met = met or (read > 0 and invocation.running())
                time.sleep(rng.uniform(0.005, 0.03))
                if not invocation.running():
                    break
        finally:
            abnormal = invocation.finish()
        self._spent(abnormal)
        return met

    # Faults every world has.
    def _handler_killed(self, rng: random.Random) -> None:
        thread, _ = self.host.invoke_in_background()
        time.sleep(rng.uniform(0, 0.3))
        self.host.send_signal(signal.SIGKILL)
        thread.join(timeout=30)
        self.host.stop(timeout=10)
        self.host = FunctionsHost(self._host_env()).start()
        self._abnormal()

    def _out_of_memory(self, rng: random.Random) -> None:
        """Refused writes give their deliveries back: a 503 here is not counted as a spent delivery."""
        self._abandon(rng, rng.randrange(5, 30))  # work for it: claims whose writes are refused
        self._config_set("maxmemory-policy", "noeviction")
        self._config_set("maxmemory", 1)
        try:
            self._http()
        finally:
            self._config_set("maxmemory", 0)

    def _dead_letter_key_wrong_type(self, rng: random.Random) -> None:
        """Someone left a string where the dead-letter stream should be: every dead letter is refused."""
        self._abandon(rng, rng.randrange(5, 30))  # work for it: some of it poison or without an id
        dead_letter = dead_letter_of(rng.choice(self.streams))
        kept = dead_letter + ":kept-aside"
        had_letters = bool(self.admin.exists(dead_letter))
        if had_letters:
            self.admin.rename(dead_letter, kept)
        self.admin.set(dead_letter, b"not a stream")
        try:
            self._http()
        finally:
            self.admin.delete(dead_letter)
            if had_letters:
                self.admin.rename(kept, dead_letter)

    def _refused_command(self, rng: random.Random) -> None:
        """Every write refused (NOPERM): refusals give their deliveries back, so nothing is counted spent."""
        self._abandon(rng, rng.randrange(5, 30))
        refused = {"REDIS_USERNAME": REFUSING_USER, "REDIS_PASSWORD": "pw"}
        self._begin_cli({**self._cli_settings(rng), **refused}).finish()

    def _function_timeout(self, rng: random.Random) -> bool:
        """A host of its own with a short function timeout, and an invocation that outlives it (a backlog
        claimed at a slow RECLAIM_MAX_RATE for a long budget): the host fails it, kills the handler after
        the grace period and starts it again (handler/dev/host.py). The next invocation through the same
        host must answer. Counted only when the kill happened."""
        self._abandon(rng, rng.randrange(40, 80))
        budget = rng.uniform(3.0, 3.5)  # past the kill (the timeout plus the host's 2 s of grace)
        slow = {"RECLAIM_PAGE_SIZE": "1", "RECLAIM_MAX_RATE": "10", "CYCLE_TIME_BUDGET_SEC": f"{budget:.1f}"}
        host = FunctionsHost({**self._host_env(), **slow}).start()
        default_timeout = host.function_timeout_sec
        host.function_timeout_sec = STEP_FUNCTION_TIMEOUT_SEC
        try:
            first = host.process
            with contextlib.suppress(FunctionTimedOutError):  # it is the point
                host.invoke(timeout=budget * 3 + 10)
            killed = any("A function timeout has occurred" in event for event in host.events)
            if killed:
                self._abnormal()  # killed in its middle: every entry it held may have spent a delivery
                host.wait_until(lambda: host.workers_started == 2, "the restart after the function timeout")
                if first is None or first.wait(timeout=10) != -signal.SIGKILL:
                    raise ViolationError(f"the timed-out handler was not SIGKILLed: {first and first.poll()}")
            host.wait_until_ready()
            host.function_timeout_sec = default_timeout
            self._spent(self._answer(host, answer_bound(budget)))
            if host.errors or host.exits:
                raise ViolationError(f"the host counted errors: {host.errors} {host.exits}")
        finally:
            host.stop(timeout=10)
        return killed

    @staticmethod
    def _answer(host: FunctionsHost, bound: float) -> bool:
        """An invocation through `host` that must answer 200 or 503 within `bound`; whether it may have spent
        a delivery."""
        answer = host.invoke(timeout=bound * 3 + 10)
        if answer.status not in HOST_ANSWERS or answer.seconds > bound:
            raise ViolationError(
                f"invocation answered {answer.status} in {answer.seconds:.1f} s: {answer.body[:300]!r}"
            )
        return bool(answer.status != 200 or LEASE_LOST.encode() in answer.body)

    def _wide_entries_capped(self, rng: random.Random) -> bool:
        """Wide entries (many fields, or values of several MB; some over ENTRY_MAX_BYTES), abandoned among
        valid tweets and claimed by command lines under tests/test_hostile_content.py's address-space
        limit with the default bounds: each exits 0 or 1 (no MemoryError), and every wide entry ends
        written (checked with HLEN and HSTRLEN) or, over ENTRY_MAX_BYTES, dead-lettered `too-large` once
        (checked from its metadata: reason and field count), whatever its deliveries and however its page
        was read. The checker never reads one whole, and removes them
        (entries, dead letters, hashes) afterwards, so the model never holds them."""
        stream = rng.choice(self.streams)
        self._abandon(rng, rng.randrange(2, 10))
        count = rng.randint(2, 3)
        wides = [
            Wide.draw(rng, b"wide-%d-%d" % (self.numbers, n), over=n == 0 or rng.random() < 0.3)
            for n in range(count)
        ]
        ids = self._add_wide(stream, wides)
        settings = {
            **self._cli_settings(rng),
            "MIN_IDLE_TIME_SEC": "0",
            "CYCLE_MAX_MESSAGES": "1000000",
            "CYCLE_TIME_BUDGET_SEC": "3",
            "RECLAIM_PAGE_SIZE": str(rng.choice([50, 500, 2000])),
        }
        try:
            for _ in range(WIDE_INVOCATIONS):
                capped = self._begin_cli(settings, launcher=("prlimit", f"--as={MEMORY_CAP_BYTES}"))
                self._spent(capped.finish())
                held = {row[0] for row in pending_rows(self.admin, stream, GROUP)} & set(ids)
                if not held:
                    break
            else:
                raise ViolationError(
                    f"wide entries {sorted(held)[:3]} still pending after {WIDE_INVOCATIONS} invocations"
                )
            self._check_wide(stream, dict(zip(ids, wides, strict=True)))
        finally:
            self._remove_wide(stream, ids, wides)
        return True

    def _add_wide(self, stream: str, wides: list[Wide]) -> list[bytes]:
        """XADD each wide entry, then a processor reads them (XREADGROUP `>`) and dies: sent and read raw,
        the reply compared with what was written as it streams in, never held whole."""
        server = self._server_of(stream)
        name = stream.encode()
        consumer = b"processor-crashed"
        ids: list[bytes] = []
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            reader = sock.makefile("rb")
            for wide in wides:
                fields = wide.fields_resp()
                sock.sendall(
                    b"*%d\r\n" % (3 + 2 * wide.field_count)
                    + _bulk(b"XADD")
                    + _bulk(name)
                    + _bulk(b"*")
                    + fields
                )
                line = reader.readline()
                if not line.startswith(b"$"):
                    raise RuntimeError(f"XADD of a wide entry: {line!r}")
                ids.append(reader.readline()[:-2])
            args = [
                b"XREADGROUP",
                b"GROUP",
                GROUP.encode(),
                consumer,
                b"COUNT",
                b"%d" % len(wides),
                b"STREAMS",
                name,
                b">",
            ]
            sock.sendall(b"*%d\r\n" % len(args) + b"".join(map(_bulk, args)))
            expected = [b"*1\r\n*2\r\n" + _bulk(name) + b"*%d\r\n" % len(wides)]
            for entry_id, wide in zip(ids, wides, strict=True):
                expected.append(b"*2\r\n" + _bulk(entry_id) + b"*%d\r\n" % (2 * wide.field_count))
                expected.append(wide.fields_resp())
            for part in expected:
                for start in range(0, len(part), 1 << 20):
                    piece = part[start : start + (1 << 20)]
                    if reader.read(len(piece)) != piece:
                        raise RuntimeError("XREADGROUP's reply is not the wide entries written")
        return ids

    def _dead_letter_heads(self, stream: str) -> Iterator[tuple[bytes, int, list[bytes]]]:
        """Each dead letter of `stream` as (id, field count, metadata or part-of pair), read server-side."""
        start = b"-"
        while True:
            rows = command(self.admin, "EVAL", DEAD_LETTER_HEADS_LUA, 1, dead_letter_of(stream), start, 50)
            for entry_id, count, head in rows:
                yield bytes(entry_id), int(count), [bytes(x) for x in head]
            if len(rows) < 50:
                return
            start = _after(bytes(rows[-1][0]))

    def _check_wide(self, stream: str, wides: dict[bytes, Wide]) -> None:
        letters: dict[bytes, list[tuple[bytes, int, dict[bytes, bytes]]]] = {}
        for entry_id, count, head in self._dead_letter_heads(stream):
            if head[:1] == [b"dlq:part-of"]:
                continue
            metadata = dict(zip(head[0::2], head[1::2], strict=True))
            original = metadata.get(b"dlq:original-id", b"")
            if original in wides:
                letters.setdefault(original, []).append((entry_id, count, metadata))
        for entry_id, wide in wides.items():
            found = letters.get(entry_id, [])
            key = b"tweet:" + wide.ident
            if len(found) > 1:
                raise ViolationError(f"wide entry {entry_id!r} dead-lettered {len(found)} times")
            if wide.over:
                if not found or found[0][2].get(b"dlq:reason") != b"too-large":
                    raise ViolationError(
                        f"wide entry {entry_id!r} over ENTRY_MAX_BYTES not dead-lettered too-large: {found}"
                    )
                _, count, metadata = found[0]
                fields = int(metadata[b"dlq:fields"]) * 2 if metadata[b"dlq:version"] == b"2" else count - 18
                if fields != 2 * wide.field_count:
                    raise ViolationError(
                        f"wide entry {entry_id!r} dead-lettered with {fields} values, "
                        f"not {2 * wide.field_count}"
                    )
                if self.admin.exists(key):
                    raise ViolationError(f"wide entry {entry_id!r} dead-lettered too-large and written")
                continue
            if found:
                raise ViolationError(
                    f"wide entry {entry_id!r} under ENTRY_MAX_BYTES dead-lettered: {found[0][2]}"
                )
            lengths = wide.value_lengths()
            pipe = self.admin.pipeline(transaction=False)
            pipe.hlen(key)
            for name in lengths:
                pipe.hstrlen(key, name)
            stored = pipe.execute()
            if stored != [len(lengths), *lengths.values()]:
                raise ViolationError(
                    f"wide entry {entry_id!r} written as {stored[:5]}, not {list(lengths.values())[:4]}"
                )

    def _remove_wide(self, stream: str, ids: list[bytes], wides: list[Wide]) -> None:
        """The wide entries out of the stream (acknowledged first, had they been left pending), their dead
        letters and hashes deleted."""
        self.admin.xack(stream, GROUP, *ids)
        self.admin.xdel(stream, *ids)
        doomed: list[bytes] = []
        heads: set[bytes] = set()
        wanted = set(ids)
        for entry_id, _, head in self._dead_letter_heads(stream):
            if head[:1] == [b"dlq:part-of"]:
                if head[1] in heads:
                    doomed.append(entry_id)
            elif dict(zip(head[0::2], head[1::2], strict=True)).get(b"dlq:original-id") in wanted:
                heads.add(entry_id)
                doomed.append(entry_id)
        for start in range(0, len(doomed), 500):
            self.admin.xdel(dead_letter_of(stream), *doomed[start : start + 500])
        for wide in wides:  # one at a time: on a cluster they are in different slots
            self.admin.delete(b"tweet:" + wide.ident)

    def _id_over_bulk_limit(self, rng: random.Random) -> bool:
        """An entry whose id (or another value) is over proto-max-bulk-len, lowered to its 1mb minimum after
        the entry was added, and past MAX_DELIVERIES: Redis drops the connection at any command that
        carries it (a relayed dead letter's XADD), and the monitor must still dead-letter it, moved by one
        script, byte-exact, within three invocations that reach every entry (docs/performance.md: once the
        page is narrowed down to it, it is moved by the one-script path)."""
        stream = rng.choice(self.streams)
        self.numbers += 1
        big = b"%d-" % self.numbers + b"i" * rng.randrange(BULK_LIMIT, BULK_LIMIT + 100_000)
        if rng.random() < 0.5:
            fields = [b"id", big, b"text", b"an id over the bulk limit"]
        else:
            fields = [b"id", tweet_id(self.numbers), b"text", big]
        entry = (stream, bytes(command(self.admin, "XADD", stream, "*", *fields)))
        self.model.add(entry, fields)
        for raw_id, _ in self._read(stream, "processor-crashed", 1000):
            self._delivered((stream, bytes(raw_id)))
        command(
            self.admin,
            "XCLAIM",
            stream,
            GROUP,
            "processor-crashed",
            0,
            entry[1],
            "RETRYCOUNT",
            POISON_DELIVERIES,
            "JUSTID",
        )
        self.model.poison.add(entry)
        self.model.count[entry] = POISON_DELIVERIES  # RETRYCOUNT sets it; JUSTID adds none
        with self._node_clients()[0] as client:
            before = str(client.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
        self._config_set("proto-max-bulk-len", BULK_LIMIT)
        reach = {"MIN_IDLE_TIME_SEC": "0", "CYCLE_MAX_MESSAGES": "1000000", "CYCLE_TIME_BUDGET_SEC": "3"}
        moved = False
        try:
            for _ in range(3):
                if rng.random() < 0.5:  # the handler's settings reach it too
                    self._spent(self._http())
                else:
                    self._spent(self._begin_cli({**self._cli_settings(rng), **reach}).finish())
                moved = any(
                    head[:1] != [b"dlq:part-of"] and head[3:4] == [entry[1]]
                    for _, _, head in self._dead_letter_heads(stream)
                )
                if moved:
                    break
        finally:
            self._config_set("proto-max-bulk-len", before)
        if not moved:
            raise ViolationError(f"{entry} over proto-max-bulk-len not dead-lettered in 3 invocations")
        return moved

    def _group_less_streams(self, rng: random.Random) -> bool:
        """Streams of another pipeline (no group) that STREAM_NAME's pattern `tweets_stream*` matches
        beside the real ones: an invocation with that pattern (a command line, or a handler of its own
        through the host) exits 0 or answers 200, serves exactly the real streams (its summary's `streams`),
        and leaves the others untouched: no group created (docs/cluster.md, Many streams: skipped and
        reported). Counted when it reported them left out."""
        self._abandon(rng, rng.randrange(5, 30))
        strays = [f"{STRAY}{self.numbers}:{n}" for n in range(rng.randint(1, 20))]
        for stray in strays:
            for _ in range(rng.randint(1, 3)):
                self.admin.xadd(stray, {b"id": b"other", b"text": b"another pipeline's"})
        lengths = [self.admin.xlen(stray) for stray in strays]
        # Every stream reached: no cap, a budget that SCAN and a page of each stream fit in.
        whole = {"CYCLE_MAX_MESSAGES": "1000000", "CYCLE_TIME_BUDGET_SEC": "3", "STREAM_NAME": STREAM + "*"}
        try:
            summaries, logs = (self._pattern_http if rng.random() < 0.3 else self._pattern_cli)(rng, whole)
            # A stream not reached is listed as such, with or without the group (docs/cluster.md).
            served = {
                name for name, summary in summaries.items() if "not reached" not in str(summary["skipped"])
            }
            if served != set(self.streams) or not set(summaries) <= {*self.streams, *strays}:
                raise ViolationError(f"reclaim over {STREAM}* served {summaries}, not {list(self.streams)}")
            for stray, length in zip(strays, lengths, strict=True):
                groups = self.admin.xinfo_groups(stray)
                if groups or self.admin.xlen(stray) != length:
                    raise ViolationError(f"group-less stream {stray} changed: groups {groups}")
            return "have no group" in logs
        finally:
            for stray in strays:
                self.admin.delete(stray)

    def _pattern_cli(self, rng: random.Random, settings: dict[str, str]) -> tuple[dict[str, Any], str]:
        """A command line's summaries per stream and its logs; it must exit 0."""
        invocation = self._begin_cli({**self._cli_settings(rng), **settings})
        self._spent(invocation.finish())
        done, _ = invocation.result
        if done.returncode != 0:
            raise ViolationError(f"reclaim over {STREAM}* exited {done.returncode}: {done.stderr[-500:]}")
        return json.loads(done.stdout.splitlines()[-1]).get("streams", {}), str(done.stderr)

    def _pattern_http(self, rng: random.Random, settings: dict[str, str]) -> tuple[dict[str, Any], str]:
        """A handler of its own (the host's has STREAM_NAME listed): its summaries and logs; it must answer
        200."""
        host = FunctionsHost({**self._host_env(), **settings}).start()
        try:
            answer = host.invoke(timeout=answer_bound(3) * 3 + 10)
            if answer.status != 200 or answer.seconds > answer_bound(3):
                raise ViolationError(
                    f"invocation over {STREAM}* answered {answer.status} in {answer.seconds:.1f} s: "
                    f"{answer.body[:300]!r}"
                )
            self._spent(LEASE_LOST.encode() in answer.body)
            return completed(answer).get("streams", {}), host.stderr + host.stdout
        finally:
            host.stop(timeout=10)

    # Operator commands.
    def _replay(self, rng: random.Random) -> None:
        stream = rng.choice(self.streams)
        originals = self._dead_letter_originals(stream)
        done = self._cli("dead-letter", "replay", "--all", stream=stream)
        if done.returncode != 0:
            raise ViolationError(f"replay exited {done.returncode}: {done.stderr[-500:]}")
        self.model.resolved |= {(stream, original) for original in originals}
        for entry_id, fields in command(self.admin, "XRANGE", stream, "-", "+"):
            if (stream, bytes(entry_id)) not in self.model.entries:
                self.model.add((stream, bytes(entry_id)), list(fields))  # a replayed entry

    def _purge(self, rng: random.Random) -> None:
        stream = rng.choice(self.streams)
        letters = command(self.admin, "XRANGE", dead_letter_of(stream), "-", "+")
        heads = [(i, list(f)) for i, f in letters if not is_part(list(f))]
        chosen = rng.sample(heads, min(len(heads), rng.randrange(1, 5)))
        if not chosen:
            return
        done = self._cli("dead-letter", "purge", *[i.decode() for i, _ in chosen], "--yes", stream=stream)
        if done.returncode != 0:
            raise ViolationError(f"purge exited {done.returncode}: {done.stderr[-500:]}")
        self.model.resolved |= {
            (stream, split_dead_letter(fields)[0][b"dlq:original-id"]) for _, fields in chosen
        }

    def _prune(self, rng: random.Random) -> None:
        done = self._cli("consumers", "prune", "--idle-sec", "0", stream=rng.choice(self.streams))
        if done.returncode != 0:
            raise ViolationError(f"prune exited {done.returncode}: {done.stderr[-500:]}")

    def _cli(self, *args: str, stream: str) -> subprocess.CompletedProcess[str]:
        """A per-stream operator command (they work on one stream: STREAM_NAME names it)."""
        return subprocess.run(
            [sys.executable, "-m", "handler", *args],
            env=self._env(STREAM_NAME=stream),
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # The promises.
    def _dead_letter_originals(self, stream: str) -> list[bytes]:
        originals = []
        for _, fields in command(self.admin, "XRANGE", dead_letter_of(stream), "-", "+"):
            if is_part(list(fields)):
                continue
            metadata = split_dead_letter(list(fields))[0]
            if metadata[b"dlq:stream"] != stream.encode():
                raise ViolationError(
                    f"a dead letter of {metadata[b'dlq:stream']!r} in {stream}'s dead letters"
                )
            originals.append(metadata[b"dlq:original-id"])
        return originals

    def check(self) -> None:
        self.stats.checks += 1
        model, admin = self.model, self.admin
        rows = {(stream, r[0]): r for stream in self.streams for r in pending_rows(admin, stream, GROUP)}
        pending = set(rows)
        delivered = model.delivered
        self.stats.fates = Counter(
            {
                "pending": len(delivered & pending),
                "acknowledged by a processor": len(delivered & model.processed),
                "deleted while pending": len(delivered & model.deleted),
                "dead letter replayed or purged": len(delivered & model.resolved),
            }
        )
        letters: Counter[EntryKey] = Counter()
        for stream in self.streams:
            letters.update((stream, original) for original in self._dead_letter_originals(stream))
        duplicated = [entry for entry, n in letters.items() if n > 1]
        if duplicated:
            raise ViolationError(f"dead letters duplicated: {duplicated[:5]}")
        self._check_deliveries(rows, letters)
        unknown = [entry for entry in letters if entry not in model.entries]
        if unknown:
            raise ViolationError(f"dead letters of entries that never existed: {unknown[:5]}")
        ids_by_tweet: dict[bytes, list[list[bytes]]] = {}
        for entry, fields in model.entries.items():
            key = model.tweet_of[entry]
            if key is not None:
                ids_by_tweet.setdefault(key, []).append(fields)
        stray = [k for k in admin.scan_iter(match=b"tweet:*", count=1000) if bytes(k) not in ids_by_tweet]
        if stray:
            raise ViolationError(f"stray tweet keys: {stray[:5]}")
        gone = sorted(model.delivered - model.processed - model.deleted - model.resolved - pending)
        keys = {model.tweet_of[entry] for entry in gone}
        stored = self._hashes(
            sorted(key for key in keys if key is not None and key[6:] not in model.wrong_type_ids)
        )
        for entry in gone:
            fields, key = model.entries[entry], model.tweet_of[entry]
            valid = key is not None and key[6:] not in model.wrong_type_ids
            if letters[entry]:
                self._check_dead_lettered(entry, key, valid, ids_by_tweet, stored)
                continue
            if not valid or key is None:
                raise ViolationError(f"lost: {entry} left the pending list, not written nor dead-lettered")
            self._check_written(entry, key, fields, ids_by_tweet[key], stored[key])

    def _check_deliveries(
        self, rows: dict[EntryKey, tuple[bytes, bytes, int, int]], letters: Counter[EntryKey]
    ) -> None:
        """Every pending entry's delivery count within [lo, hi] (the module docstring), then the model takes
        the counts read as its own. For an entry that left the pending list it keeps what its dead letter,
        if it has one, is checked against."""
        model = self.model
        spent = sum(model.spends) + model.late  # hi - lo, the same for every entry pending
        others = spent - min(model.spends, default=0)  # spent by invocations other than the one that took it
        step_max = MAX_DELIVERIES if model.step_max is None else model.step_max  # None: a killed handler
        for entry in [entry for entry in model.count if entry not in rows]:
            model.left[entry] = (model.count.pop(entry), others, step_max)
        model.lettered_pending.update(entry for entry in letters if entry in rows)
        began_ms = (time.monotonic() - model.step_began) * 1000
        monitor = MONITOR.encode()
        for entry, (_, owner, idle_ms, count) in rows.items():
            lo = model.count.get(entry)
            model.count[entry] = count  # resynced: the next step's lo
            if lo is None:  # pending again (a failover lost its acknowledgement): its last leaving is void
                model.left.pop(entry, None)
                continue
            if entry in model.deleted:
                continue
            attempted = owner == monitor and idle_ms <= began_ms  # the monitor claimed it during this step
            if attempted and not spent:
                model.refused[entry] += 1  # still pending after a claim no failure explains: refused
            elif count > lo:
                model.died[entry] += count - lo
            if not lo <= count <= lo + spent:
                raise ViolationError(self._delivery_violation(entry, lo, spent, count, attempted))

    def _delivery_violation(self, entry: EntryKey, lo: int, spent: int, count: int, attempted: bool) -> str:
        model = self.model
        said = f"XPENDING says {count}"
        so_far = (
            f"(attempts refused so far: {model.refused[entry]}; "
            f"deliveries spent by attempts that died: {model.died[entry]})"
        )
        if count < lo:
            return f"entry {entry}: {lo} deliveries known, {said} (an extra give-back) {so_far}"
        if attempted and not spent:
            return (
                f"entry {entry}: {lo} deliveries expected after a refused attempt, {said} "
                f"(give-back missing) {so_far}"
            )
        if not spent:
            return f"entry {entry}: {lo} deliveries expected (no invocation failed), {said} {so_far}"
        return (
            f"entry {entry}: at most {lo + spent} deliveries expected ({lo} known, {spent} the step's failed "
            f"invocations may have spent), {said} {so_far}"
        )

    def _hashes(self, keys: list[bytes]) -> dict[bytes, dict[bytes, bytes]]:
        """Each tweet hash, read in pipelines of 500 (a check reads hundreds)."""
        found: dict[bytes, dict[bytes, bytes]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            pipe = self.admin.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            found.update(zip(chunk, pipe.execute(), strict=True))  # bytes to bytes already
        return found

    def _check_dead_lettered(
        self,
        entry: EntryKey,
        key: bytes | None,
        valid: bool,
        ids_by_tweet: dict[bytes, list[list[bytes]]],
        stored: dict[bytes, dict[bytes, bytes]],
    ) -> None:
        self.stats.fates["dead-lettered"] += 1
        model = self.model
        if not valid or key is None:
            return
        abnormal = model.abnormal - model.abnormal_since.get(entry, 0)
        alone = len(ids_by_tweet[key]) == 1 and entry not in model.half_written
        if not abnormal and alone and stored[key]:
            # No fault since it was delivered, so no attempt wrote it without acknowledging it.
            raise ViolationError(f"{entry} both written and dead-lettered")
        if entry in model.left and entry not in model.lettered_pending:
            # Its invocation read, before claiming it, the count of the step before plus what the step's
            # other invocations may have added: a dead letter for deliveries needs more than MAX_DELIVERIES.
            before, others, step_max = model.left[entry]
            if before + others <= step_max:
                raise ViolationError(
                    f"valid tweet {entry} dead-lettered early: its invocation read at most {before + others} "
                    f"deliveries, not more than MAX_DELIVERIES {step_max}"
                )
        spent = model.reads[entry] + abnormal
        if entry not in model.poison and spent <= model.max_deliveries:
            raise ViolationError(
                f"valid tweet {entry} dead-lettered after at most {spent} deliveries not refused "
                f"(MAX_DELIVERIES {model.max_deliveries} or more)"
            )

    def _check_written(
        self,
        entry: EntryKey,
        key: bytes,
        fields: list[bytes],
        same: list[list[bytes]],
        stored: dict[bytes, bytes],
    ) -> None:
        self.stats.fates["written"] += 1
        if not stored:
            raise ViolationError(f"lost: {entry} acknowledged but {key!r} was never written")
        if len(same) == 1 and stored != expected_hash(fields):
            raise ViolationError(f"corrupted: {key!r} differs from its only entry {entry}")
        known = self._pairs.get(key)
        if known is None or known[0] != len(same):  # every (field, value) an entry of this tweet had
            known = (
                len(same),
                {pair for other in same for pair in zip(other[0::2], other[1::2], strict=True)},
            )
            self._pairs[key] = known
        wrong = stored.items() - known[1]
        if wrong:
            raise ViolationError(f"corrupted: {key!r} holds values no entry of it had ({sorted(wrong)[:3]})")


class NodeRun(Run):
    """One Redis with AOF, a proxy in front of it (the handler goes through it) and a read-only replica."""

    def _start_redis(self) -> Client:
        # DEBUG RELOAD (the LOADING fault) needs the DEBUG command, off by default since Redis 7.0; 6.x has
        # no such option and refuses it.
        debug = [] if self.version.startswith("6.") else ["--enable-debug-command", "local"]
        (self.workdir / "redis").mkdir(parents=True)
        self.server = LocalRedis(
            BINARIES[self.version](), directory=self.workdir / "redis", persistent=True, extra_args=debug
        )
        self.server.start()
        self.replica = LocalRedis(
            BINARIES[self.version](), extra_args=["--replicaof", "127.0.0.1", str(self.server.port)]
        )
        try:
            self.replica.start()
        except BaseException:
            self.server.cleanup()
            raise
        self.proxy = FaultyProxy(self.server.port)
        self.filled = False  # the filler LOADING needs is written the first time
        return self.server.client()

    def _stop_redis(self) -> None:
        self.proxy.close()
        self.replica.cleanup()
        self.server.cleanup()

    def _node_clients(self) -> list[redis.Redis]:
        return [self.server.client()]

    def _server_of(self, stream: str) -> LocalRedis:
        return self.server

    def _env(self, **overrides: str) -> dict[str, str]:
        return environment_for(self.server, **self._settings(**overrides))

    def _host_env(self) -> dict[str, str]:
        return self._env(REDIS_HOST=self.proxy.address)

    def _cut(self, rng: random.Random) -> None:
        self.proxy.cut_after(rng.randrange(100, 200_000))
        try:
            self._http()
        finally:
            self.proxy.heal()
            self._abnormal()

    def _stall(self, rng: random.Random) -> None:
        try:
            self._http(fault=partial(self._stall_after, rng.uniform(0, 0.3)))
        finally:
            self.proxy.heal()
            self._abnormal()

    def _stall_after(self, delay: float) -> None:
        time.sleep(delay)
        self.proxy.stall()

    def _redis_restarted(self, rng: random.Random) -> None:
        def kill() -> None:
            time.sleep(rng.uniform(0, 0.3))
            self.server.stop(kill=True)  # what appendfsync always made durable survives

        try:
            self._http(fault=kill)
        finally:
            self.server.start()
            self.admin.close()
            self.admin = self.server.client()
            self._refusing_user()  # ACL users live in memory only
            self._abnormal()

    def _read_only_replica(self, rng: random.Random) -> None:
        """READONLY refuses the claims themselves: nothing is counted spent."""
        self._begin_cli({**self._cli_settings(rng), "REDIS_HOST": self.replica.address}).finish()

    def _loading(self, rng: random.Random) -> bool:
        """Redis answers LOADING for real while an invocation runs: DEBUG RELOAD with key-load-delay, started
        before the invocation (once clients see LOADING) or during it. Counted only if the probe saw it."""
        self._fill()
        keys = max(1, int(self.admin.dbsize()))
        self.admin.config_set("key-load-delay", max(1, int(LOADING_SEC * 1_000_000) // keys))
        reload = Reload(self.server.port)
        try:
            if rng.random() < 0.5:
                reload.start()
                reload.wait_until_loading()
                self._http()
            else:
                # Work for the invocation, so that the reload starts in its middle.
                self._abandon(rng, rng.randrange(20, 60))
                self._http(fault=partial(reload.start_after, rng.uniform(0, 0.1)))
        finally:
            reload.join()
            self.admin.config_set("key-load-delay", 0)
            self._abnormal()  # a claim made just before loading began cannot be given back during it
        return reload.saw_loading

    def _fill(self) -> None:
        if self.filled:
            return
        filler = random.Random(0)
        pipe = self.admin.pipeline(transaction=False)
        for n in range(FILLER_KEYS):
            pipe.set(f"chaos:filler:{n}", filler.randbytes(FILLER_BYTES))
        pipe.execute()
        self.filled = True


class _ClusterClient(RawStreamCluster):
    """The checker's cluster client: XREADGROUP's replies raw too (flat field lists), as tests.pipeline
    leaves them on one node."""

    def get_redis_connection(self, node: ClusterNode) -> redis.Redis:
        client = super().get_redis_connection(node)
        client.set_response_callback("XREADGROUP", raw)
        return client


class ClusterRun(Run):
    """Three masters with a replica each (Redis 8.2), every node with AOF (a node restarted from its files
    keeps what it acknowledged). The handler and the CLI are pointed at a master that held no stream at
    start; only a failover of a node that holds only tweets kills it (and it comes back as a replica)."""

    def _start_redis(self) -> Client:
        self.cluster = LocalCluster(
            BINARIES[self.version](),
            replicas_per_master=1,
            extra_args=[
                "--repl-diskless-sync-delay",
                "0",  # a restarted node resyncs at once
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--enable-debug-command",
                "local",  # DEBUG RELOAD, for LOADING
                # Answer clients every 1 KiB of RDB loaded (not 2 MB): LOADING needs only a small filler.
                "--loading-process-events-interval-bytes",
                "1024",
            ],
        ).start()
        try:
            holding = {self.cluster.master_of(stream).port for stream in self.streams}
            self.stable = next(node for node in self.cluster.masters if node.port not in holding)
            return self._cluster_client()
        except BaseException:
            self.cluster.cleanup()
            raise

    def _cluster_client(self) -> RawStreamCluster:
        return _ClusterClient(host="127.0.0.1", port=self.stable.port, protocol=2)

    def _stop_redis(self) -> None:
        self.cluster.cleanup()

    def _node_clients(self) -> list[redis.Redis]:
        return [self.cluster.node_client(node) for node in self.cluster.live_nodes()]

    def _server_of(self, stream: str) -> LocalRedis:
        return self.cluster.master_of(stream)

    def _env(self, **overrides: str) -> dict[str, str]:
        return environment_for(self.stable, **self._settings(**overrides))

    def _failover(self, rng: random.Random) -> None:
        """A stream's master SIGKILLed during an invocation; its replica takes over; the old master comes
        back from its files as the new master's replica."""
        self._kill_during_an_invocation(rng, self.cluster.master_of(rng.choice(self.streams)), restart=False)

    def _tweet_node_failover(self, rng: random.Random) -> bool:
        """The same for a master that holds only tweets: in the two-stream world that is the node the
        handler and the CLI are pointed at. Half the time its replica lags: stopped (SIGSTOP) from just
        before the invocation until the kill, its link cut by the master (CLIENT KILL TYPE replica: else
        what the master wrote to the link would still reach it on loopback), so that writes the master
        acknowledged meanwhile are lost in the failover and only the handler's WAIT keeps their entries
        pending. Counted when the invocation was still running when the master died."""
        victim = rng.choice(self._tweet_only_masters())
        lagging = rng.choice(self._shards()[victim]) if rng.random() < 0.5 else None
        return self._kill_during_an_invocation(rng, victim, restart=False, lagging=lagging)

    def _redis_restarted(self, rng: random.Random) -> bool:
        """A master SIGKILLed during an invocation and started again from its AOF: at once (before its
        replica takes over, most times), or once its replica has. Counted when the invocation was still
        running when the master died."""
        victim = rng.choice(self._masters_now())
        return self._kill_during_an_invocation(rng, victim, restart=rng.random() < 0.7)

    def _kill_during_an_invocation(
        self, rng: random.Random, victim: LocalRedis, *, restart: bool, lagging: LocalRedis | None = None
    ) -> bool:
        self._abandon(rng, rng.randrange(100, 300))  # work for the invocation, so that it dies in its middle
        self._wait_replicated(victim)  # the checker's own writes are on the replica: the model keeps them
        stopped = lagging.process if lagging is not None else None
        if stopped is not None:
            stopped.send_signal(signal.SIGSTOP)
            with self.cluster.node_client(victim) as client:
                client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        try:
            invocation = self._begin_http()
            time.sleep(rng.uniform(0.1, 0.5) if stopped is not None else rng.uniform(0, 0.1))
            met = invocation.running()
            victim.stop(kill=True)
            if stopped is not None:
                stopped.send_signal(signal.SIGCONT)
            if restart:
                victim.start()
            self._spent(invocation.finish())
        finally:
            if stopped is not None:
                stopped.send_signal(signal.SIGCONT)
            if victim.process is None:  # killed and not started again: its replica takes over first
                self.cluster.wait_for_failover(victim)
                victim.start()
            self._recovered()
        return met

    def _recovered(self) -> None:
        """After a fault on one node: the cluster whole again, a fresh checker client, the ACL user on every
        node (a restarted node lost it), and the fault counted as having spent a delivery of every entry
        pending (as on one node)."""
        self._wait_until_ready()
        self.admin.close()
        self.admin = self._cluster_client()
        self._refusing_user()
        self._abnormal()

    def _cut(self, rng: random.Random) -> bool:
        """The connections of the monitor to one master killed (CLIENT KILL) once to three times during an
        invocation over a backlog, each time a little after the monitor has one there: the cluster itself
        stays whole. Counted when one was killed while the invocation ran."""
        node = rng.choice(self._masters_now())
        self._abandon(rng, rng.randrange(50, 200))
        invocation = self._begin_http() if rng.random() < 0.5 else self._begin_cli(self._cli_settings(rng))
        met = False
        try:
            for _ in range(rng.randint(1, 3)):
                while invocation.running() and not self._monitor_connections(node):
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.2))
                if not invocation.running():
                    break
                met = self._kill_monitor_connections(node) > 0 or met
        finally:
            self._spent(invocation.finish())
            self._abnormal()
        return met

    def _monitor_connections(self, node: LocalRedis) -> list[str]:
        """The ids of the monitor's connections to `node`."""
        with self.cluster.node_client(node) as client:
            return [c["id"] for c in client.client_list() if c.get("name") == MONITOR_CLIENT_NAME]

    def _kill_monitor_connections(self, node: LocalRedis) -> int:
        with self.cluster.node_client(node) as client:
            return sum(
                int(client.execute_command("CLIENT", "KILL", "ID", connection))
                for connection in self._monitor_connections(node)
            )

    def _stall(self, rng: random.Random) -> bool:
        """One node stops (SIGSTOP) for 1.5-3 s during an invocation, past the client timeouts, then goes on
        (SIGCONT): a master (its replica may take over meanwhile: the node timeout is 1 s) or, now and then,
        a replica (WAIT for it times out). Counted when the invocation was still running when it stopped."""
        shards = self._shards()
        master = rng.choice(list(shards))
        node = rng.choice(shards[master]) if rng.random() < 0.25 and shards[master] else master
        self._abandon(rng, rng.randrange(50, 200))
        self._wait_replicated(master)
        process = node.process
        assert process is not None
        invocation = self._begin_http()
        met = False
        try:
            time.sleep(rng.uniform(0, 0.3))
            met = invocation.running()
            process.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(1.5, 3))
        finally:
            process.send_signal(signal.SIGCONT)
            try:
                self._spent(invocation.finish())
            finally:
                self._recovered()
        return met

    def _read_only_replica(self, rng: random.Random) -> bool:
        """A CLI invocation (pointed at a replica half the time) during which a master is demoted: its
        replica takes over with CLUSTER FAILOVER, so the monitor's commands to the old master meet MOVED
        (or READONLY). Counted when the demotion was complete while the invocation still ran."""
        shards = self._shards()
        master = (
            self.cluster.master_of(rng.choice(self.streams))
            if rng.random() < 0.7
            else rng.choice(list(shards))
        )
        replica = shards[master][0]
        settings = self._cli_settings(rng)
        if rng.random() < 0.5:
            settings["REDIS_HOST"] = rng.choice([r for rs in shards.values() for r in rs]).address
        self._abandon(rng, rng.randrange(50, 200))
        invocation = self._begin_cli(settings)
        met = False
        try:
            time.sleep(rng.uniform(0, 0.3))
            if invocation.running():
                with self.cluster.node_client(replica) as client:
                    client.execute_command("CLUSTER", "FAILOVER")
                    deadline = time.monotonic() + 5
                    while client.info("replication")["role"] != "master" and time.monotonic() < deadline:
                        time.sleep(0.01)
                    met = client.info("replication")["role"] == "master" and invocation.running()
        finally:
            try:
                self._spent(invocation.finish())
            finally:
                self._recovered()
        return met

    def _loading(self, rng: random.Random) -> bool:
        """One master answers LOADING for real during an invocation (DEBUG RELOAD with key-load-delay, as on
        one node), started before the invocation (once clients see LOADING) or during it; the other masters
        keep answering. Counted only if the probe saw LOADING."""
        master = rng.choice(self._masters_now())
        tag = self._tag_of(master)
        self._fill(master, tag)
        with self.cluster.node_client(master) as client:
            keys = max(1, int(client.dbsize()))
            client.config_set("key-load-delay", max(1, int(LOADING_SEC * 1_000_000) // keys))
        reload = Reload(master.port, probe_key=tag.encode() + b"chaos:probe")
        try:
            if rng.random() < 0.5:
                reload.start()
                reload.wait_until_loading()
                self._spent(self._http())
            else:
                self._abandon(rng, rng.randrange(20, 60))
                self._spent(self._http(fault=partial(reload.start_after, rng.uniform(0, 0.1))))
        finally:
            reload.join()
            with self.cluster.node_client(master) as client:
                client.config_set("key-load-delay", 0)
            self._recovered()  # loading blocks the cluster bus too: its replica may have taken over
        return reload.saw_loading

    def _fill(self, master: LocalRedis, tag: str) -> None:
        """Keys in `master`'s slots, so that key-load-delay makes its loading last (once per slot: failovers
        keep them); few and small, since the cluster's nodes answer clients every 1 KiB of RDB loaded."""
        with self.cluster.node_client(master) as client:
            if client.exists(f"{tag}chaos:filler:0"):
                return
            pipe = client.pipeline(transaction=False)
            for n in range(CLUSTER_FILLER_KEYS):
                pipe.set(f"{tag}chaos:filler:{n}", b"x" * 100)
            pipe.execute()

    def _tag_of(self, master: LocalRedis) -> str:
        """A hash tag whose slot `master` serves."""
        ranges = self._slot_ranges()[master.port]
        for n in range(100_000):
            tag = f"{{chaos-{n}}}"
            if any(first <= key_slot(tag.encode()) <= last for first, last in ranges):
                return tag
        raise LocalRedisError(f"no hash tag found for {master.address}")

    def _slot_rows(self) -> list[Any]:
        with self.cluster.node_client(self.cluster.live_nodes()[0]) as client:
            return list(client.execute_command("CLUSTER", "SLOTS"))

    def _slot_ranges(self) -> dict[int, list[tuple[int, int]]]:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for first, last, holder, *_ in self._slot_rows():
            ranges.setdefault(int(holder[1]), []).append((int(first), int(last)))
        return ranges

    def _shards(self) -> dict[LocalRedis, list[LocalRedis]]:
        """Each master now, with its replicas now (failovers swap them)."""
        by_port = {node.port: node for node in self.cluster.nodes}
        return {
            by_port[int(holder[1])]: [by_port[int(replica[1])] for replica in replicas]
            for _, _, holder, *replicas in self._slot_rows()
        }

    def _masters_now(self) -> list[LocalRedis]:
        return list(self._shards())

    def _tweet_only_masters(self) -> list[LocalRedis]:
        holding = {self.cluster.master_of(stream).port for stream in self.streams}
        return [node for node in self._masters_now() if node.port not in holding]

    def _wait_replicated(self, master: LocalRedis) -> None:
        with self.cluster.node_client(master) as client:
            target = int(client.info("replication")["master_repl_offset"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                info = client.info("replication")
                offsets = [
                    int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                ]
                if offsets and min(offsets) >= target:
                    return
                time.sleep(0.02)
        raise LocalRedisError(f"the replica of {master.address} did not catch up in 10 s")

    def _wait_until_ready(self) -> None:
        """Every node ok, every replica linked, every node's slot map listing three replicas."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if all(self._node_ready(node) for node in self.cluster.live_nodes()):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise LocalRedisError("the cluster was not ready again 30 s after the failover")

    def _node_ready(self, node: LocalRedis) -> bool:
        with self.cluster.node_client(node) as client:
            if client.cluster("INFO")["cluster_state"] != "ok":
                return False
            replication = client.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
            slots = client.execute_command("CLUSTER", "SLOTS")
            return sum(len(entry) - 3 for entry in slots) == len(self.cluster.replicas)


def _tweet_key(fields: list[bytes]) -> bytes | None:
    """tweet:<id> as HSET would use it (the later of repeated ids), or None without a usable id."""
    value = None
    for name, item in zip(fields[0::2], fields[1::2], strict=True):
        if name == b"id":
            value = item
    return b"tweet:" + value if value else None


@dataclass
class Outcome:
    stats: Stats
    violation: str | None = None
    failed_at: int | None = None


def run_steps(steps: list[Step], version: str, world: World | None = None) -> Outcome:
    world = world or World()
    workdir = Path(tempfile.mkdtemp(prefix="tweets-monitor-chaos-"))
    run = (ClusterRun if world.cluster else NodeRun)(version, workdir, world)
    try:
        for index, step in enumerate(steps):
            try:
                run.step(step)
                run.check()
            except ViolationError as exc:
                return Outcome(run.stats, str(exc), index)
        return Outcome(run.stats)
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)


def reduce(
    steps: list[Step], version: str, world: World | None = None, reruns: int = 3
) -> tuple[list[Step], int, int]:
    """Drop steps while the violation still shows: halves of the list first, then quarters, and so on down
    to single steps (a cluster's run is slow, so few runs matter), each single step's removal tried up to
    `reruns` times since threads and real servers are not deterministic."""
    current, tried, reproduced = list(steps), 0, 0
    size = max(1, len(current) // 2)
    while True:
        index = 0
        while index < len(current):
            candidate = current[:index] + current[index + size :]
            for _ in range(reruns if size == 1 else 1):
                tried += 1
                if candidate and run_steps(candidate, version, world).violation is not None:
                    reproduced += 1
                    current = candidate
                    break
            else:
                index += size
        if size == 1:
            return current, tried, reproduced
        size //= 2


def seeds_for(minutes: float, seed: int | None) -> Iterator[int]:
    deadline = time.monotonic() + minutes * 60
    next_seed = seed if seed is not None else random.randrange(1 << 30)
    while True:
        yield next_seed
        if seed is not None or time.monotonic() > deadline:
            return
        next_seed = random.randrange(1 << 30)


def table(totals: Stats, runs: int, violations: int, worlds: Counter[str], possible: set[str]) -> list[str]:
    """The run's numbers; a fault no world that ran could inject (a failover without a cluster) is n/a."""
    lines = [
        f"runs {runs}, steps {totals.steps}, invariant checks {totals.checks}, violations {violations}",
        "worlds: " + ", ".join(f"{name} {count}" for name, count in sorted(worlds.items())),
        "| fault | injected |",
        "| --- | ---: |",
    ]
    lines += [f"| {kind} | {totals.faults[kind] if kind in possible else 'n/a'} |" for kind in FAULTS]
    lines += ["| entries by fate | count |", "| --- | ---: |"]
    lines += [f"| {fate} | {count} |" for fate, count in sorted(totals.fates.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, help="run this seed once")
    parser.add_argument("--steps", type=int, default=60, help="steps per seed")
    parser.add_argument("--version", default="8.2", choices=sorted(BINARIES))
    parser.add_argument(
        "--world",
        default="from-seed",
        choices=["from-seed", *WORLDS],
        help="one node or a cluster (8.2), one stream or two; by default each seed chooses",
    )
    args = parser.parse_args(argv)
    if args.world.startswith("cluster") and args.version not in CLUSTER_VERSIONS:
        parser.error(f"a cluster needs Redis {', '.join(sorted(CLUSTER_VERSIONS))}")
    totals, runs, violations = Stats(), 0, 0
    worlds: Counter[str] = Counter()
    possible: set[str] = set()
    for seed in seeds_for(args.minutes, args.seed):
        world = world_for(seed, args.version) if args.world == "from-seed" else WORLDS[args.world]
        steps = plan(seed, args.steps, world)
        outcome = run_steps(steps, args.version, world)
        runs += 1
        worlds[str(world)] += 1
        possible |= set(world.kinds)
        totals.steps += outcome.stats.steps
        totals.checks += outcome.stats.checks
        totals.faults.update(outcome.stats.faults)
        totals.fates.update(outcome.stats.fates)  # each run's fates at its last check
        if outcome.violation is not None:
            violations += 1
            print(f"seed {seed} ({world}): {outcome.violation} (at step {outcome.failed_at})", flush=True)
            reduced, tried, reproduced = reduce(steps[: (outcome.failed_at or 0) + 1], args.version, world)
            print(
                f"  reduced to {len(reduced)} steps ({reproduced} of {tried} re-runs reproduced it): "
                + " ".join(map(str, reduced)),
                flush=True,
            )
            break
    print("\n".join(table(totals, runs, violations, worlds, possible)))
    missing = [kind for kind in FAULTS if kind in possible and not totals.faults[kind]]
    if missing and not violations:
        print(f"no fault of kind {', '.join(missing)} was injected: run longer")
        return 1
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
