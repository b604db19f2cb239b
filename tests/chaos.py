"""A randomized, model-based checker: from a seed, random interleavings of producers, processors, monitor
invocations (through the real handler and the CLI), faults and operator commands against a real Redis, with
the monitor's promises checked after every step.

    ./scripts/chaos [--minutes M] [--seed S] [--version 8.2]

The promises (a valid tweet is an entry with a usable `id` whose `tweet:<id>` key can hold a hash):
- an entry leaves the group's pending list only if its tweet is written, or it is in the dead-letter stream
  exactly once, or it was deleted from the stream (or a processor acknowledged it, or an operator replayed
  or purged its dead letter);
- a valid tweet is dead-lettered only after more than MAX_DELIVERIES deliveries that did not end in a
  retryable refusal (the model counts an upper bound: processor reads, deliveries it set, and every
  invocation that ended abnormally since), and never both written and dead-lettered;
- no dead letter is duplicated, no dead letter names an entry that never existed, no stray `tweet:` key;
- every invocation answers 200 or 503 (the CLI exits 0 or 1) within its budget plus 3 timeouts plus 3 s.

A failing run prints its seed and a step list reduced greedily (each candidate re-run up to three times,
since threads and real servers are not deterministic), with how many re-runs reproduced it.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import GROUP, MONITOR, STREAM, tweet_id
from handler.keys import DEAD_LETTER_SUFFIX, hash_tag_of
from handler.reclaim.dead_letter import is_part, split_dead_letter
from tests.host import APP_ROOT, FunctionsHost
from tests.pipeline import command, create_group, expected_hash, pending_rows
from tests.proxy import FaultyProxy
from tests.redis_binaries import BINARIES

DEAD_LETTER = hash_tag_of(STREAM) + DEAD_LETTER_SUFFIX
MAX_DELIVERIES = 4
TIMEOUT_SEC = 1
BUDGET_SEC = 2
ANSWER_BOUND_SEC = BUDGET_SEC + 3 * TIMEOUT_SEC + 3  # the documented bound, plus process start and slack
POISON_DELIVERIES = 50
REFUSING_USER = "chaos-refused"  # may do everything but HSET: each write is refused (NOPERM)
FAULTS = (
    "dead-letter-key-wrong-type",
    "cut",
    "stall",
    "handler-killed",
    "redis-restarted",
    "out-of-memory",
    "refused-command",
    "read-only-replica",
)
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
}
HOST_ANSWERS = {200, 503}


class ViolationError(AssertionError):
    """A promise broken: what, and at which step."""


@dataclass(frozen=True)
class Step:
    kind: str
    seed: int  # the step draws its own randomness from this, so a reduced list replays the same steps

    def __str__(self) -> str:
        return f"{self.kind}#{self.seed}"


def plan(seed: int, count: int) -> list[Step]:
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    return [
        Step(rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0], rng.randrange(1 << 30)) for _ in range(count)
    ]


@dataclass
class Model:
    """What the checker knows the world did to each entry."""

    entries: dict[bytes, list[bytes]] = field(default_factory=dict)  # stream entry id -> flat fields
    delivered: set[bytes] = field(default_factory=set)  # read by the group at least once
    reads: Counter[bytes] = field(default_factory=Counter)
    abnormal_since: dict[bytes, int] = field(default_factory=dict)  # abnormal invocations when delivered
    processed: set[bytes] = field(default_factory=set)  # acknowledged by a processor
    deleted: set[bytes] = field(default_factory=set)
    poison: set[bytes] = field(default_factory=set)
    resolved: set[bytes] = field(default_factory=set)  # its dead letter replayed or purged
    wrong_type_ids: set[bytes] = field(default_factory=set)
    abnormal: int = 0  # invocations that ended by a fault: each may have spent a delivery


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


class Run:
    """One world: a Redis with AOF, a proxy in front of it, a replica, a handler, the model."""

    def __init__(self, version: str, workdir: Path) -> None:
        self.workdir = workdir
        self.server = LocalRedis(BINARIES[version](), directory=workdir / "redis", persistent=True)
        (workdir / "redis").mkdir(parents=True)
        self.server.start()
        self.admin = self.server.client()
        create_group(self.admin, STREAM, GROUP)
        self._refusing_user()
        self.replica = LocalRedis(
            BINARIES[version](), extra_args=["--replicaof", "127.0.0.1", str(self.server.port)]
        )
        self.replica.start()
        self.proxy = FaultyProxy(self.server.port)
        self.host = FunctionsHost(self._env(REDIS_HOST=self.proxy.address)).start()
        self.model = Model()
        self.stats = Stats()
        self.numbers = 0

    def _refusing_user(self) -> None:
        command(self.admin, "ACL", "SETUSER", REFUSING_USER, "on", ">pw", "~*", "+@all", "-hset")

    def _env(self, **overrides: str) -> dict[str, str]:
        settings = {
            "STREAM_NAME": STREAM,
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
        return environment_for(self.server, **settings)

    def close(self) -> None:
        self.host.stop(timeout=10)
        self.proxy.close()
        self.admin.close()
        self.replica.cleanup()
        self.server.cleanup()

    # Steps.
    def step(self, step: Step) -> None:
        rng = random.Random(step.seed)
        self.stats.steps += 1
        getattr(self, "_" + step.kind.replace("-", "_"))(rng)
        if step.kind in FAULTS:
            self.stats.faults[step.kind] += 1

    def _produce(self, rng: random.Random) -> None:
        for _ in range(rng.randrange(1, 30)):
            self.numbers += 1
            fields = tweet_entry(rng, self.numbers)
            wrong = rng.random() < 0.03 and len(fields) > 3 and fields[2] == b"id" and fields[3]
            # A tweet key of another type (never over a hash written already): its writes can never succeed.
            if wrong and self.admin.set(b"tweet:" + fields[3], b"not a hash", nx=True):
                self.model.wrong_type_ids.add(fields[3])
            entry_id = bytes(command(self.admin, "XADD", STREAM, "*", *fields))
            self.model.entries[entry_id] = fields

    def _process(self, rng: random.Random) -> None:
        """A processor reads, writes and acknowledges some entries, and crashes on the rest."""
        consumer = f"processor-{rng.randrange(4)}"
        read = command(
            self.admin,
            "XREADGROUP",
            "GROUP",
            GROUP,
            consumer,
            "COUNT",
            rng.randrange(1, 40),
            "STREAMS",
            STREAM,
            ">",
        )
        for raw_id, fields in read[0][1] if read else []:
            entry_id = bytes(raw_id)
            self._delivered(entry_id)
            flat = list(fields)
            key = _tweet_key(flat)
            if rng.random() < 0.5 and key is not None and key[6:] not in self.model.wrong_type_ids:
                command(self.admin, "HSET", key, *flat)
                self.admin.xack(STREAM, GROUP, entry_id)
                self.model.processed.add(entry_id)

    def _delivered(self, entry_id: bytes) -> None:
        self.model.delivered.add(entry_id)
        self.model.reads[entry_id] += 1
        self.model.abnormal_since.setdefault(entry_id, self.model.abnormal)

    def _age(self, rng: random.Random) -> None:
        rows = [row for row in pending_rows(self.admin, STREAM, GROUP) if row[1] != MONITOR.encode()]
        ids = [row[0] for row in rng.sample(rows, min(len(rows), rng.randrange(1, 50)))]
        for entry_id in ids:
            command(self.admin, "XCLAIM", STREAM, GROUP, "processor-0", 0, entry_id, "IDLE", 60_000, "JUSTID")

    def _poison(self, rng: random.Random) -> None:
        rows = [row for row in pending_rows(self.admin, STREAM, GROUP) if row[1] != MONITOR.encode()]
        for row in rng.sample(rows, min(len(rows), rng.randrange(1, 4))):
            command(
                self.admin,
                "XCLAIM",
                STREAM,
                GROUP,
                row[1],
                0,
                row[0],
                "RETRYCOUNT",
                POISON_DELIVERIES,
                "JUSTID",
            )
            self.model.poison.add(row[0])

    def _delete(self, rng: random.Random) -> None:
        rows = pending_rows(self.admin, STREAM, GROUP)
        for row in rng.sample(rows, min(len(rows), rng.randrange(1, 3))):
            self.admin.xdel(STREAM, row[0])
            self.model.deleted.add(row[0])

    def _invoke_http(self, rng: random.Random, fault: Callable[[], None] | None = None) -> None:
        thread, answers = self.host.invoke_in_background()
        if fault is not None:
            fault()
        thread.join(timeout=ANSWER_BOUND_SEC * 3)
        if not answers or isinstance(answers[0], BaseException):
            raise ViolationError(f"the handler did not answer: {answers}")
        answer = answers[0]
        if answer.status not in HOST_ANSWERS or answer.seconds > ANSWER_BOUND_SEC:
            raise ViolationError(
                f"invocation answered {answer.status} in {answer.seconds:.1f} s: {answer.body[:300]!r}"
            )

    def _invoke_cli(self, rng: random.Random, **env: str) -> None:
        overrides = {
            "RECLAIM_PAGE_SIZE": str(rng.choice([1, 7, 50, 500])),
            "CYCLE_MAX_MESSAGES": str(rng.choice([5, 100, 1_000_000])),
            **env,
        }
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "handler", "reclaim"],
            env=self._env(**overrides),
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=ANSWER_BOUND_SEC * 3,
        )
        took = time.monotonic() - began
        if done.returncode not in (0, 1) or took > ANSWER_BOUND_SEC or "Traceback" in done.stderr:
            raise ViolationError(f"reclaim exited {done.returncode} in {took:.1f} s: {done.stderr[-500:]}")

    def _abnormal(self) -> None:
        self.model.abnormal += 1

    def _cut(self, rng: random.Random) -> None:
        self.proxy.cut_after(rng.randrange(100, 200_000))
        try:
            self._invoke_http(rng)
        finally:
            self.proxy.heal()
            self._abnormal()

    def _stall(self, rng: random.Random) -> None:
        try:
            self._invoke_http(rng, fault=partial(self._stall_after, rng.uniform(0, 0.3)))
        finally:
            self.proxy.heal()
            self._abnormal()

    def _stall_after(self, delay: float) -> None:
        time.sleep(delay)
        self.proxy.stall()

    def _handler_killed(self, rng: random.Random) -> None:
        thread, _ = self.host.invoke_in_background()
        time.sleep(rng.uniform(0, 0.3))
        self.host.send_signal(signal.SIGKILL)
        thread.join(timeout=30)
        self.host.stop(timeout=10)
        self.host = FunctionsHost(self._env(REDIS_HOST=self.proxy.address)).start()
        self._abnormal()

    def _redis_restarted(self, rng: random.Random) -> None:
        def kill() -> None:
            time.sleep(rng.uniform(0, 0.3))
            self.server.stop(kill=True)  # what appendfsync always made durable survives

        try:
            self._invoke_http(rng, fault=kill)
        finally:
            self.server.start()
            self.admin = self.server.client()
            self._refusing_user()  # ACL users live in memory only
            self._abnormal()

    def _out_of_memory(self, rng: random.Random) -> None:
        self.admin.config_set("maxmemory-policy", "noeviction")
        self.admin.config_set("maxmemory", 1)
        try:
            self._invoke_http(rng)
        finally:
            self.admin.config_set("maxmemory", 0)

    def _dead_letter_key_wrong_type(self, rng: random.Random) -> None:
        """Someone left a string where the dead-letter stream should be: every dead letter is refused."""
        kept = DEAD_LETTER + ":kept-aside"
        had_letters = bool(self.admin.exists(DEAD_LETTER))
        if had_letters:
            self.admin.rename(DEAD_LETTER, kept)
        self.admin.set(DEAD_LETTER, b"not a stream")
        try:
            self._invoke_http(rng)
        finally:
            self.admin.delete(DEAD_LETTER)
            if had_letters:
                self.admin.rename(kept, DEAD_LETTER)

    def _refused_command(self, rng: random.Random) -> None:
        self._invoke_cli(rng, REDIS_USERNAME=REFUSING_USER, REDIS_PASSWORD="pw")

    def _read_only_replica(self, rng: random.Random) -> None:
        self._invoke_cli(rng, REDIS_HOST=self.replica.address)

    def _replay(self, rng: random.Random) -> None:
        originals = self._dead_letter_originals()
        done = self._cli("dead-letter", "replay", "--all")
        if done.returncode != 0:
            raise ViolationError(f"replay exited {done.returncode}: {done.stderr[-500:]}")
        self.model.resolved |= set(originals)
        for entry_id, fields in command(self.admin, "XRANGE", STREAM, "-", "+"):
            self.model.entries.setdefault(bytes(entry_id), list(fields))  # the replayed entries

    def _purge(self, rng: random.Random) -> None:
        letters = command(self.admin, "XRANGE", DEAD_LETTER, "-", "+")
        heads = [(i, list(f)) for i, f in letters if not is_part(list(f))]
        chosen = rng.sample(heads, min(len(heads), rng.randrange(1, 5)))
        if not chosen:
            return
        done = self._cli("dead-letter", "purge", *[i.decode() for i, _ in chosen], "--yes")
        if done.returncode != 0:
            raise ViolationError(f"purge exited {done.returncode}: {done.stderr[-500:]}")
        self.model.resolved |= {split_dead_letter(fields)[0][b"dlq:original-id"] for _, fields in chosen}

    def _prune(self, rng: random.Random) -> None:
        done = self._cli("consumers", "prune", "--idle-sec", "0")
        if done.returncode != 0:
            raise ViolationError(f"prune exited {done.returncode}: {done.stderr[-500:]}")

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "handler", *args],
            env=self._env(),
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # The promises.
    def _dead_letter_originals(self) -> list[bytes]:
        letters = command(self.admin, "XRANGE", DEAD_LETTER, "-", "+")
        return [split_dead_letter(list(f))[0][b"dlq:original-id"] for _, f in letters if not is_part(list(f))]

    def check(self) -> None:
        self.stats.checks += 1
        model, admin = self.model, self.admin
        pending = {row[0] for row in pending_rows(admin, STREAM, GROUP)}
        delivered = model.delivered
        self.stats.fates = Counter(
            {
                "pending": len(delivered & pending),
                "acknowledged by a processor": len(delivered & model.processed),
                "deleted while pending": len(delivered & model.deleted),
                "dead letter replayed or purged": len(delivered & model.resolved),
            }
        )
        letters = Counter(self._dead_letter_originals())
        duplicated = [i for i, n in letters.items() if n > 1]
        if duplicated:
            raise ViolationError(f"dead letters duplicated: {duplicated[:5]}")
        unknown = [i for i in letters if i not in model.entries]
        if unknown:
            raise ViolationError(f"dead letters of entries that never existed: {unknown[:5]}")
        ids_by_tweet: dict[bytes, list[list[bytes]]] = {}
        for fields in model.entries.values():
            key = _tweet_key(fields)
            if key is not None:
                ids_by_tweet.setdefault(key, []).append(fields)
        stray = [k for k in admin.scan_iter(match=b"tweet:*", count=1000) if bytes(k) not in ids_by_tweet]
        if stray:
            raise ViolationError(f"stray tweet keys: {stray[:5]}")
        for entry_id in sorted(model.delivered - model.processed - model.deleted - model.resolved - pending):
            fields = model.entries[entry_id]
            key = _tweet_key(fields)
            valid = key is not None and key[6:] not in model.wrong_type_ids
            if letters[entry_id]:
                self._check_dead_lettered(entry_id, key, valid, ids_by_tweet)
                continue
            if not valid or key is None:
                raise ViolationError(
                    f"lost: {entry_id!r} left the pending list, not written nor dead-lettered"
                )
            self._check_written(entry_id, key, fields, ids_by_tweet[key])

    def _check_dead_lettered(
        self, entry_id: bytes, key: bytes | None, valid: bool, ids_by_tweet: dict[bytes, list[list[bytes]]]
    ) -> None:
        self.stats.fates["dead-lettered"] += 1
        model = self.model
        if not valid or key is None:
            return
        abnormal = model.abnormal - model.abnormal_since.get(entry_id, 0)
        if not abnormal and len(ids_by_tweet[key]) == 1 and self.admin.exists(key):
            # No fault since it was delivered, so no attempt wrote it without acknowledging it.
            raise ViolationError(f"{entry_id!r} both written and dead-lettered")
        spent = model.reads[entry_id] + abnormal
        if entry_id not in model.poison and spent <= MAX_DELIVERIES:
            raise ViolationError(
                f"valid tweet {entry_id!r} dead-lettered after at most {spent} deliveries not refused"
            )

    def _check_written(
        self, entry_id: bytes, key: bytes, fields: list[bytes], same: list[list[bytes]]
    ) -> None:
        self.stats.fates["written"] += 1
        stored: Any = self.admin.hgetall(key)
        stored = {bytes(k): bytes(v) for k, v in stored.items()}
        if not stored:
            raise ViolationError(f"lost: {entry_id!r} acknowledged but {key!r} was never written")
        if len(same) == 1 and stored != expected_hash(fields):
            raise ViolationError(f"corrupted: {key!r} differs from its only entry {entry_id!r}")
        candidates: dict[bytes, set[bytes]] = {}
        for other in same:
            for name, value in zip(other[0::2], other[1::2], strict=True):
                candidates.setdefault(name, set()).add(value)
        wrong = [name for name, value in stored.items() if value not in candidates.get(name, set())]
        if wrong:
            raise ViolationError(f"corrupted: {key!r} holds values no entry of it had ({wrong[:3]})")


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


def run_steps(steps: list[Step], version: str) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix="tweets-monitor-chaos-"))
    world = Run(version, workdir)
    try:
        for index, step in enumerate(steps):
            try:
                world.step(step)
                world.check()
            except ViolationError as exc:
                return Outcome(world.stats, str(exc), index)
        return Outcome(world.stats)
    finally:
        world.close()
        shutil.rmtree(workdir, ignore_errors=True)


def reduce(steps: list[Step], version: str, reruns: int = 3) -> tuple[list[Step], int, int]:
    """Greedily drop steps while the violation still shows (each candidate run up to `reruns` times)."""
    current, tried, reproduced = list(steps), 0, 0
    index = 0
    while index < len(current):
        candidate = current[:index] + current[index + 1 :]
        for _ in range(reruns):
            tried += 1
            if run_steps(candidate, version).violation is not None:
                reproduced += 1
                current = candidate
                break
        else:
            index += 1
    return current, tried, reproduced


def seeds_for(minutes: float, seed: int | None) -> Iterator[int]:
    deadline = time.monotonic() + minutes * 60
    next_seed = seed if seed is not None else random.randrange(1 << 30)
    while True:
        yield next_seed
        if seed is not None or time.monotonic() > deadline:
            return
        next_seed = random.randrange(1 << 30)


def table(totals: Stats, runs: int, violations: int) -> list[str]:
    lines = [
        f"runs {runs}, steps {totals.steps}, invariant checks {totals.checks}, violations {violations}",
        "| fault | injected |",
        "| --- | ---: |",
    ]
    lines += [f"| {kind} | {totals.faults[kind]} |" for kind in FAULTS]
    lines += ["| entries by fate | count |", "| --- | ---: |"]
    lines += [f"| {fate} | {count} |" for fate, count in sorted(totals.fates.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, help="run this seed once")
    parser.add_argument("--steps", type=int, default=60, help="steps per seed")
    parser.add_argument("--version", default="8.2", choices=sorted(BINARIES))
    args = parser.parse_args(argv)
    totals, runs, violations = Stats(), 0, 0
    for seed in seeds_for(args.minutes, args.seed):
        steps = plan(seed, args.steps)
        outcome = run_steps(steps, args.version)
        runs += 1
        totals.steps += outcome.stats.steps
        totals.checks += outcome.stats.checks
        totals.faults.update(outcome.stats.faults)
        totals.fates.update(outcome.stats.fates)  # each run's fates at its last check
        if outcome.violation is not None:
            violations += 1
            print(f"seed {seed}: {outcome.violation} (at step {outcome.failed_at})", flush=True)
            reduced, tried, reproduced = reduce(steps[: (outcome.failed_at or 0) + 1], args.version)
            print(
                f"  reduced to {len(reduced)} steps ({reproduced} of {tried} re-runs reproduced it): "
                + " ".join(map(str, reduced)),
                flush=True,
            )
            break
    print("\n".join(table(totals, runs, violations)))
    missing = [kind for kind in FAULTS if not totals.faults[kind]]
    if missing and not violations:
        print(f"no fault of kind {', '.join(missing)} was injected: run longer")
        return 1
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
