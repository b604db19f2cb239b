"""One world's run, whatever its Redis: the steps (producers, processors, monitor invocations, faults,
operator commands) and the checks of every promise after each step, against the model. Its subclasses,
NodeRun (node.py) and ClusterRun (cluster.py), start the Redis and do what depends on its shape."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from handler.dev.host import APP_ROOT, FunctionsHost, FunctionTimedOutError, completed
from handler.dev.local_redis import LocalRedis
from handler.dev.samples import GROUP, MONITOR, STREAM, tweet_id
from handler.keys import hash_tag_of
from handler.reclaim.dead_letter import is_part, split_dead_letter
from handler.transport.client import Client
from tests.chaos.content import DEAD_LETTER_HEADS_LUA, Wide, _after, _bulk, dead_letter_of, tweet_entry
from tests.chaos.kinds import (
    ANSWER_BOUND_SEC,
    BUDGET_SEC,
    BULK_LIMIT,
    CLAIM_ATTEMPTS,
    FAULTS,
    HOST_ANSWERS,
    LATE_COMMANDS,
    LEASE_LOST,
    MAX_DELIVERIES,
    MEMORY_CAP_BYTES,
    NEAR_MAX_DELIVERIES,
    POISON_DELIVERIES,
    REFUSING_USER,
    STEP_FUNCTION_TIMEOUT_SEC,
    STRAY,
    TIMEOUT_SEC,
    WIDE_INVOCATIONS,
    Step,
    ViolationError,
    World,
    answer_bound,
)
from tests.chaos.model import EntryKey, Model, Stats, _tweet_key
from tests.chaos.processes import Invocation
from tests.pipeline import command, create_group, expected_hash, pending_rows


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
        """Every pending entry's delivery count within [lo, hi] (tests/chaos/__init__.py), then the model
        takes the counts read as its own. For an entry that left the pending list it keeps what its dead
        letter, if it has one, is checked against."""
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
