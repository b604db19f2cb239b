"""What the tests and the randomized checker can catch: a curated list of plausible bugs (mutants) of
handler/reclaim/ and handler/transport/, the core that claims, writes, acknowledges and dead-letters
included, each applied to a scratch copy of the working tree and put to the tests of its subject, then
(only if they all pass) to the checker for a fixed time.

    ./scripts/mutants [--only ID ...] [--chaos-seconds S] [--checker-only] [--list]

A mutant is one or two lines: a condition inverted, a step dropped, an ownership or idle check removed, a
bound off by one, an error mapped to the wrong kind. Its original text must occur exactly once in its file:
when the code it targets moves, applying it fails loudly, naming the mutant, instead of testing nothing.
Every mutant must be killed; a survivor is a hole in the tests (close it with a test) or a change no user
could see (argue it in REPLACED and replace the mutant).

The scratch copy holds the tracked and the untracked, not ignored files; it borrows the project's .venv and
.cache (Redis builds) through symbolic links, and runs with PYTHONPATH set to itself, so its `handler` is
imported rather than the editable install's (checked before any mutant runs). The working tree is never
written to.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
NICE = ("nice", "-n", "19")
# The checker's seeds, tried in this order until one finds a violation or the time is spent; each a
# one-node world (a cluster's run takes minutes), one stream and two.
CHAOS_RUNS = ((11, "one-stream"), (12, "two-streams"), (13, "one-stream"), (14, "two-streams"))
CHAOS_STEPS = 40
TEST_TIMEOUT_SEC = 60  # a mutant that hangs a test is killed by this (the longest targeted test takes ~10 s)
NO_TESTS_RAN = 5  # pytest's exit code when every test asked for was deselected
HUNG = " (hung: timed out)"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repository
    original: str  # must occur exactly once in the file
    replacement: str
    plays: str  # the bug it plays, in one line
    tests: tuple[str, ...]  # the targeted fast tests of its subject (files or node ids), run first


class MutantDoesNotApplyError(RuntimeError):
    """The mutant's original text is not in its file exactly once: the code it targets moved."""


FAILURES = "handler/transport/failures.py"
RETRY = "handler/transport/retry.py"
CLIENT = "handler/transport/client.py"
WRITE_ORDER = "handler/reclaim/write_order.py"
LEASE = "handler/reclaim/lease.py"
RATE = "handler/reclaim/rate.py"
CURSOR = "handler/reclaim/cursor.py"
WALK = "handler/reclaim/walk.py"
GIVE_BACK = "handler/reclaim/give_back.py"
SUMMARY = "handler/reclaim/summary.py"
CONSUMERS = "handler/reclaim/consumers.py"
INTERPRETER = "handler/reclaim/interpreter_settings.py"
PAGE = "handler/reclaim/page.py"
SWEEP = "handler/reclaim/sweep.py"
STREAMS = "handler/reclaim/streams.py"
CYCLE = "handler/reclaim/cycle.py"
DEAD_LETTER = "handler/reclaim/dead_letter.py"
RULES = "handler/reclaim/rules.py"
HEARTBEAT = "handler/reclaim/heartbeat.py"
WIRE = "handler/transport/wire.py"
TOPOLOGY = "handler/transport/topology.py"
CONNECT = "handler/transport/connect.py"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "oom-is-passing-state",
        FAILURES,
        '"OOM": FailureKind.REFUSED_FOR_NOW,',
        '"OOM": FailureKind.PASSING_STATE,',
        "OOM mapped to the wrong kind (a passing server state instead of a refused write)",
        ("tests/test_failures.py",),
    ),
    Mutant(
        "oom-class-unread",
        FAILURES,
        '    (redis.exceptions.OutOfMemoryError, "OOM"),\n',
        "",
        "redis-py's OutOfMemoryError not read as OOM (it drops the code from its message)",
        ("tests/test_failures.py",),
    ),
    Mutant(
        "script-refusal-unread",
        FAILURES,
        'message.replace(":", " ").replace("-", " ").split()',
        'message.replace(":", " ").split()',
        "a refusal inside a Lua script (`…: -OOM …`) not recognised by its code",
        ("tests/test_failures.py",),
    ),
    Mutant(
        "passing-state-not-unavailable",
        FAILURES,
        "        FailureKind.CLUSTER_CHANGED,\n        FailureKind.PASSING_STATE,\n    }",
        "        FailureKind.CLUSTER_CHANGED,\n    }",
        "LOADING, READONLY, MASTERDOWN, BUSY no longer unavailable (500 instead of 503)",
        ("tests/test_failures.py",),
    ),
    Mutant(
        "one-retry-only",
        RETRY,
        "RETRY_DELAYS_SEC = (0.1, 0.4)",
        "RETRY_DELAYS_SEC = (0.1,)",
        "one retry instead of two: a blip a little longer than 0.1 s fails the invocation",
        (
            "tests/test_faults.py::test_a_blip_is_ridden_out_by_retrying_on_a_fresh_connection",
            "tests/test_faults.py::test_a_blip_that_outlasts_the_first_retry_is_ridden_out_by_the_second",
        ),
    ),
    Mutant(
        "raw-names-strict-utf8",
        CLIENT,
        'arg.encode("utf-8", "surrogateescape")',
        'arg.encode("utf-8")',
        "a key name that is not UTF-8 (read from Redis) cannot be sent back",
        ("tests/test_cycle.py::test_a_stream_name_that_is_not_utf8_is_swept",),
    ),
    Mutant(
        "write-order-turn-waiters-kept",
        WRITE_ORDER,
        "while self._next_turn != turn and not self._abandoned:",
        "while self._next_turn != turn:",
        "a sweep stopping on an error leaves pages waiting for a turn that never comes (it hangs)",
        ("tests/test_write_order.py",),
    ),
    Mutant(
        "write-order-done-releases-newer",
        WRITE_ORDER,
        "                if holders.get(key) is ticket:\n                    del holders[key]",
        "                holders.pop(key, None)",
        "a page done forgets a newer page's hold on the same key",
        ("tests/test_write_order.py",),
    ),
    Mutant(
        "write-order-abandon-ignored",
        WRITE_ORDER,
        "        if self._abandoned:\n            raise WriteOrderAbandonedError(",
        "        if False:\n            raise WriteOrderAbandonedError(",
        "a page that waited while the sweep stopped on an error still sends its writes",
        ("tests/test_write_order.py",),
    ),
    Mutant(
        "lease-renewed-by-anyone",
        LEASE,
        "if redis.call('GET', KEYS[1]) == ARGV[1] then\n  return redis.call('PEXPIRE'",
        "if redis.call('EXISTS', KEYS[1]) == 1 then\n  return redis.call('PEXPIRE'",
        "the renewal's ownership check removed: a stalled monitor extends its successor's lease",
        ("tests/test_lease.py",),
    ),
    Mutant(
        "lease-without-ttl-kept",
        LEASE,
        "if pttl == -1 then\n  redis.call('PEXPIRE', KEYS[1], ARGV[1])\nend\n",
        "",
        "a lease left without a TTL is never given one: every monitor is kept out for ever",
        ("tests/test_lease.py",),
    ),
    Mutant(
        "lease-renewed-too-late",
        LEASE,
        "self._renew_every = ttl_sec / 3",
        "self._renew_every = ttl_sec",
        "the lease renewed only once a whole TTL has passed, when it has already expired",
        ("tests/test_lease.py",),
    ),
    Mutant(
        "cursor-saved-by-anyone",
        LEASE,
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then\n  return 0\nend\nif ARGV[2] == '' then",
        "if ARGV[2] == '' then",
        "the cursor saved without checking the lease is still ours",
        ("tests/test_cursor.py", "tests/test_lease.py"),
    ),
    Mutant(
        "rate-page-of-zero",
        RATE,
        "return max(1, min(configured, math.floor(self.rate / PAGES_PER_SECOND)))",
        "return min(configured, math.floor(self.rate / PAGES_PER_SECOND))",
        "a RECLAIM_MAX_RATE below 4 makes pages of no entry",
        ("tests/test_rate.py",),
    ),
    Mutant(
        "rate-clock-restarted",
        RATE,
        "        if self._started is None:\n            self._started = self._clock()\n",
        "        self._started = self._clock()\n",
        "the pacer's clock restarted at every page: the drain runs far below RECLAIM_MAX_RATE",
        ("tests/test_rate.py",),
    ),
    Mutant(
        "cursor-check-inverted",
        CURSOR,
        "if value is None or is_stream_id(value):",
        "if value is None or not is_stream_id(value):",
        "the cursor's check inverted: a valid cursor ignored, garbage used as a start",
        ("tests/test_cursor.py",),
    ),
    Mutant(
        "walk-full-page-is-last",
        WALK,
        "if len(rows) < asked:",
        "if len(rows) <= asked:",
        "off by one: a full page taken for the last, so an invocation walks one page",
        ("tests/test_cycle.py", "tests/test_dry_run.py"),
    ),
    Mutant(
        "walk-first-page-refused",
        WALK,
        "        if self.pages == 0:\n            return None\n",
        "",
        "the budget may refuse the first page (the dry run then predicts nothing; the sweep guards it again)",
        ("tests/test_dry_run.py", "tests/test_invocation_limits.py", "tests/test_cycle.py"),
    ),
    Mutant(
        "walk-cap-overshoot",
        WALK,
        "return min(page_size, self._max_messages - self.handed_out)",
        "return page_size",
        "the last page not shortened to CYCLE_MAX_MESSAGES: the cap overshot by up to a page",
        ("tests/test_cycle.py", "tests/test_invocation_limits.py"),
    ),
    Mutant(
        "give-back-any-owner",
        GIVE_BACK,
        "if #row > 0 and row[1][2] == ARGV[2] then",
        "if #row > 0 then",
        "a delivery given back without checking the monitor still owns the entry",
        (
            "tests/test_no_entry_lost.py::test_an_outage_of_refused_writes_does_not_dead_letter_valid_tweets",
            "tests/test_no_entry_lost.py::test_a_delivery_is_given_back_only_while_the_monitor_still_holds_the_entry",
        ),
    ),
    Mutant(
        "summary-keys-reordered",
        SUMMARY,
        '            "duration_ms": self.duration_ms,\n            "pages": self.pages,\n',
        '            "pages": self.pages,\n            "duration_ms": self.duration_ms,\n',
        "two of the summary's keys swapped: programs and queries that read its fixed order break",
        ("tests/test_summary_shape.py",),
    ),
    Mutant(
        "prune-consumer-with-pending",
        CONSUMERS,
        "if info['pending'] == 0 and info['idle']",
        "if info['idle']",
        "a consumer pruned although it has entries pending (XGROUP DELCONSUMER drops them)",
        ("tests/test_consumers.py",),
    ),
    Mutant(
        "prune-dry-run-inverted",
        CONSUMERS,
        "if ARGV[3] ~= '1' then",
        "if ARGV[3] == '1' then",
        "pruning's dry run inverted: the report deletes, the real run only reports",
        ("tests/test_consumers.py",),
    ),
    Mutant(
        "settings-restored-while-sweeping",
        INTERPRETER,
        "            if self._sweeps == 0:\n                self._restore()",
        "            if self._sweeps <= 1:\n                self._restore()",
        "off by one: overlapping sweeps restore the settings while one still runs",
        ("tests/test_interpreter_settings.py",),
    ),
    Mutant(
        "collector-enabled-regardless",
        INTERPRETER,
        "            if self._collector_was_enabled:\n                gc.enable()",
        "            gc.enable()",
        "a collector the process disabled itself is enabled after a sweep",
        ("tests/test_interpreter_settings.py",),
    ),
    Mutant(
        "claim-without-min-idle",
        PAGE,
        'head = (b"XCLAIM", keys.stream, keys.group, keys.consumer, config.min_idle_ms)',
        'head = (b"XCLAIM", keys.stream, keys.group, keys.consumer, 0)',
        "XCLAIM without min-idle: an entry redelivered to a live consumer since XPENDING is taken from it",
        ("tests/test_cycle.py",),
    ),
    Mutant(
        "refused-write-acknowledged",
        PAGE,
        "if copied and len(results) == len(indices) and set(map(type, results)) == _COUNTS_ONLY:",
        "if copied and len(results) == len(indices):",
        "a page's HSET replies only counted, not checked: a refused write is acknowledged and lost",
        ("tests/test_cycle.py", "tests/test_no_entry_lost.py"),
    ),
    Mutant(
        "refused-not-given-back",
        PAGE,
        "    if outcome.refused:\n        _give_back(stream_wire, config, outcome.refused, deliveries)\n",
        "",
        "a refused attempt's delivery not given back: an outage of refusals dead-letters valid tweets",
        ("tests/test_no_entry_lost.py",),
    ),
    Mutant(
        "no-replica-counts-as-copied",
        PAGE,
        "if isinstance(reply, int) and reply >= 1:",
        "if isinstance(reply, int) and reply >= 0:",
        "off by one: WAIT answering no replica taken as copied, the write acknowledged before a failover",
        ("tests/test_cluster.py::test_writes_no_replica_has_copied_are_not_acknowledged",),
    ),
    Mutant(
        "page-bound-ignored",
        PAGE,
        "(reply,) = wire.read_bounded(1, config.page_max_bytes)",
        "(reply,) = wire.read(1)",
        "an XCLAIM reply read whole whatever PAGE_MAX_BYTES: a page of huge entries takes the memory",
        ("tests/test_hostile_content.py",),
    ),
    Mutant(
        "moved-not-marked-stale",
        PAGE,
        "    if kind_of(error) == FailureKind.CLUSTER_CHANGED:\n        config.topology.mark_stale()\n",
        "    if kind_of(error) == FailureKind.CLUSTER_CHANGED:\n",
        "a write refused with MOVED does not mark the slot map stale: it is sent again to the old node",
        ("tests/test_slot_moves.py",),
    ),
    Mutant(
        "cursor-past-unclaimed-pages",
        SWEEP,
        "next_start = min(self._unclaimed, key=_order)",
        "next_start = max(self._unclaimed, key=_order)",
        "the cursor advanced past pages handed out but not claimed: their entries wait a whole walk",
        ("tests/test_cycle.py",),
    ),
    Mutant(
        "pages-claimed-past-the-budget",
        SWEEP,
        "return not (self._lease_lost or self._should_stop() or self._out_of_time())",
        "return not (self._lease_lost or self._should_stop())",
        "pages already handed out still claimed once the budget is spent: the invocation overruns it",
        ("tests/test_cycle.py", "tests/test_invocation_limits.py"),
    ),
    Mutant(
        "rotation-ignores-streams-not-reached",
        STREAMS,
        "self._resume_at = not_reached[0] if not_reached else order[1 % len(order)]",
        "self._resume_at = order[1 % len(order)]",
        "the next invocation starts one stream further, not at the first stream the budget did not reach",
        ("tests/test_streams.py",),
    ),
    Mutant(
        "first-stream-takes-the-budget",
        STREAMS,
        "slice_sec = max((deadline - time.monotonic()) / len(active), MIN_SLICE_SEC)",
        "slice_sec = max(deadline - time.monotonic(), MIN_SLICE_SEC)",
        "no slice per stream: the first stream of a round may spend the whole budget",
        ("tests/test_streams.py",),
    ),
    Mutant(
        "heartbeat-for-streams-not-reached",
        STREAMS,
        "name for name in order if name not in not_reached and name not in self._without_group",
        "name for name in order if name not in self._without_group",
        "the heartbeat written for streams the invocation did not reach: a starved stream looks served",
        ("tests/test_heartbeat.py",),
    ),
    Mutant(
        "cap-not-shared-by-streams",
        STREAMS,
        "                messages_left -= handled\n",
        "",
        "CYCLE_MAX_MESSAGES applied to each stream, not to the invocation: several streams overshoot it",
        ("tests/test_invocation_limits.py", "tests/test_streams.py"),
    ),
    Mutant(
        "lease-released-on-a-silent-server",
        CYCLE,
        "            lease.abandon()\n            raise\n",
        "            raise\n",
        "the lease released after Redis stopped answering: one more timeout before the 503",
        (
            "tests/test_faults.py::test_a_server_that_stops_answering_mid_cycle_answers_503_within_three_timeouts",
        ),
    ),
    Mutant(
        "dead-letter-acknowledged-before-written",
        DEAD_LETTER,
        "local added = 1\nif #head + #original <= per_call then",
        "redis.call('XACK', stream, group, id)\nlocal added = 1\nif #head + #original <= per_call then",
        "XACK before the dead letter's XADD: a refused XADD (WRONGTYPE, OOM) leaves the entry in neither",
        ("tests/test_no_entry_lost.py",),
    ),
    Mutant(
        "dead-letter-any-owner",
        DEAD_LETTER,
        "if #row == 0 or row[1][2] ~= consumer then\n  return {0, 0}\nend\nlocal entry",
        "if #row == 0 then\n  return {0, 0}\nend\nlocal entry",
        "the move's ownership check removed: an entry another consumer now owns is dead-lettered too",
        ("tests/test_cycle.py", "tests/test_no_entry_lost.py"),
    ),
    Mutant(
        "max-deliveries-off-by-one",
        RULES,
        "if max_deliveries and deliveries_before > max_deliveries:",
        "if max_deliveries and deliveries_before >= max_deliveries:",
        "off by one: an entry dead-lettered at MAX_DELIVERIES deliveries, one early",
        ("tests/test_cycle.py",),
    ),
    Mutant(
        "empty-id-written",
        RULES,
        "    if not tweet_id:\n",
        "    if tweet_id is None:\n",
        "an empty 'id' field written to the key `tweet:` instead of dead-lettered",
        ("tests/test_cycle.py",),
    ),
    Mutant(
        "heartbeat-expires",
        HEARTBEAT,
        "  redis.call('SET', KEYS[1], now)\n",
        "  redis.call('SET', KEYS[1], now, 'PX', 86400000)\n",
        "the heartbeat given a TTL: a timer stopped for a day reads as never having run, not as stopped",
        ("tests/test_heartbeat.py",),
    ),
    Mutant(
        "unread-connection-pooled",
        WIRE,
        "if not self._healthy or self._unread:",
        "if not self._healthy:",
        "a connection with replies still unread handed back to the pool: its next user reads them",
        (
            "tests/test_no_entry_lost.py::test_a_connection_with_unread_replies_is_closed_not_returned_to_the_pool",
        ),
    ),
    Mutant(
        "timeout-as-connection-error",
        WIRE,
        '            return redis.exceptions.TimeoutError(f"Timeout reading from Redis: {exc}")\n'
        "        if isinstance(exc, OSError):",
        '            return redis.exceptions.ConnectionError(f"Timeout reading from Redis: {exc}")\n'
        "        if isinstance(exc, OSError):",
        "a late reply mapped to a lost connection: a page narrowed down on a server that answers PING only",
        ("tests/test_wire.py",),
    ),
    Mutant(
        "replicas-off-by-one",
        TOPOLOGY,
        "Node(primary.name, pool, len(holders) - 1)",
        "Node(primary.name, pool, len(holders))",
        "off by one: a master counted with a replica it lacks, so WAIT never confirms and nothing is acked",
        ("tests/test_slot_moves.py",),  # a cluster without replicas
    ),
    Mutant(
        "moved-never-marks-stale",
        TOPOLOGY,
        "    def mark_stale(self) -> None:\n        self._stale = True\n",
        "    def mark_stale(self) -> None:\n        pass\n",
        "a cluster's slot map never marked stale: after a resharding, MOVED writes go to the old node again",
        ("tests/test_slot_moves.py",),
    ),
    Mutant(
        "tls-host-name-unchecked",
        CONNECT,
        '"ssl_check_hostname": True,',
        '"ssl_check_hostname": False,',
        "TLS without host-name verification: any certificate the CA signed is taken for Redis",
        ("tests/test_connect.py",),
    ),
)


@dataclass(frozen=True)
class Replaced:
    """A mutant that survived and was argued to change nothing a user could see, kept to show why."""

    id: str
    file: str
    plays: str
    why: str


REPLACED: tuple[Replaced, ...] = (
    Replaced(
        "cap-leaves-no-work",
        SUMMARY,
        "a stream stopped by CYCLE_MAX_MESSAGES dropped from the next round of a multi-stream sweep",
        "survived its tests and two minutes of the checker. A stream stops by the cap only once the "
        "invocation's cap is spent, and streams.py then stops every stream before the next round; only rows "
        "not idle yet, which count toward a stream's walk but not the invocation's cap, would leave a second "
        "round to that same stream, which nothing documents. Replaced by summary-keys-reordered",
    ),
    Replaced(
        "slot-moved-map-not-read",
        CYCLE,
        "a cycle failing on MOVED outside its walk does not read the slot map again",
        "survived its tests. A slot move met by the walk (XPENDING, a page) is handled by _slot_moved, "
        "which reads the map itself; what reaches _explain comes from redis-py's cluster client (the "
        "pending count, the lease, the cursor), which follows MOVED and reads its own map first, so only "
        "an ASK, TRYAGAIN or CLUSTERDOWN that outlasted its retries gets there. Without the read, the "
        "stream's next turn meets MOVED in its walk, reads the map there and goes on: nothing is lost and "
        "nothing waits longer than that turn, which already answered slot-moved. Replaced by "
        "lease-released-on-a-silent-server",
    ),
)


@dataclass(frozen=True)
class Result:
    mutant: Mutant
    killed: bool
    by: str  # a test id, `checker seed S (world)`, or what ran without failing
    seconds: float


def mutated(mutant: Mutant, root: Path) -> str:
    """The mutant's file under `root` with the mutant in it; loud when its original text is not there
    exactly once."""
    source = (root / mutant.file).read_text()
    found = source.count(mutant.original)
    if found != 1:
        raise MutantDoesNotApplyError(
            f"mutant {mutant.id}: its original text occurs {found} times in {mutant.file} (expected once): "
            "the code it targets moved; update the mutant"
        )
    return source.replace(mutant.original, mutant.replacement)


def apply(mutant: Mutant, root: Path) -> None:
    """Write the mutant into the copy at `root` (never the working tree)."""
    if root.resolve() == ROOT:
        raise RuntimeError("mutants are applied to a scratch copy, never to the working tree")
    (root / mutant.file).write_text(mutated(mutant, root))


def project_files(root: Path = ROOT) -> list[str]:
    """The tracked files that exist, and the untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def scratch_copy(destination: Path, root: Path = ROOT) -> Path:
    """A copy of the working tree at `destination`, with the project's .venv and .cache linked in."""
    for name in project_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    for borrowed in (".venv", ".cache"):
        if (root / borrowed).exists():
            (destination / borrowed).symlink_to(root / borrowed)
    return destination


def environment(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_the_copy(root: Path) -> None:
    """The copy's `handler` must be the one imported there, not the editable install's (the working tree)."""
    done = subprocess.run(
        [str(PYTHON), "-c", "import handler; print(handler.__file__)"],
        cwd=root,
        env=environment(root),
        capture_output=True,
        text=True,
        check=True,
    )
    imported = Path(done.stdout.strip()).resolve()
    if not imported.is_relative_to(root.resolve()):
        raise RuntimeError(f"the scratch copy at {root} imports handler from {imported}, not its own")


def pytest(root: Path, arguments: Sequence[str], timeout: float = 900) -> tuple[list[str], int, float, str]:
    """pytest in the copy: (the ids of the tests that failed or errored, its exit code, seconds, its
    output)."""
    started = time.monotonic()
    done = subprocess.run(
        [*NICE, str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *arguments],
        cwd=root,
        env=environment(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # `FAILED tests/test_failures.py::test_a[OOM …] - Error`: ids hold spaces, a message follows " - "
    failed = [
        test + (HUNG if "Timeout" in message else "")
        for test, message in re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - (.*))?$", done.stdout, re.M)
    ]
    return failed, done.returncode, time.monotonic() - started, done.stdout + done.stderr


def failing_before(root: Path, mutants: Sequence[Mutant]) -> list[str]:
    """The targeted tests that fail on the unmutated copy (work in progress elsewhere in the tree): they
    cannot tell a mutant from the code as it stands, so they are left out of the mutants' runs."""
    tests = list(dict.fromkeys(test for mutant in mutants for test in mutant.tests))
    failed, code, _, output = pytest(root, tests)
    if code not in (0, 1):
        raise RuntimeError(f"the targeted tests do not run on the unmutated tree (exit {code}):\n{output}")
    return [test.removesuffix(HUNG) for test in failed]


def run_tests(root: Path, tests: Sequence[str], deselected: Sequence[str] = ()) -> tuple[str | None, float]:
    """The mutant's tests in the copy, stopping at the first failure: (the failing test's id or None,
    seconds)."""
    leave_out = [argument for test in deselected for argument in ("--deselect", test)]
    failed, code, seconds, _ = pytest(root, ["-x", f"--timeout={TEST_TIMEOUT_SEC}", *leave_out, *tests])
    if code in (0, NO_TESTS_RAN):  # every test of its left out: they cannot kill it
        return None, seconds
    return (failed[0] if failed else f"pytest exit {code}"), seconds


def run_checker(root: Path, seconds: float) -> tuple[str | None, float]:
    """The randomized checker on CHAOS_RUNS, one seed after another until one reports a violation (killed:
    `checker seed S (world)`) or `seconds` have passed; the first violation ends the run (its reduction is
    not waited for)."""
    started = time.monotonic()
    for seed, world in CHAOS_RUNS:
        if time.monotonic() - started >= seconds:
            break
        command = [*NICE, str(PYTHON), "-m", "tests.chaos", "--seed", str(seed), "--steps", str(CHAOS_STEPS)]
        process = subprocess.Popen(
            [*command, "--world", world],
            cwd=root,
            env=environment(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert process.stdout is not None
        violation = None
        for line in process.stdout:
            if line.startswith(f"seed {seed} ("):  # tests/chaos/cli.py prints it only for a violation
                violation = line.strip()
                break
        _stop(process)
        if violation is not None:
            return f"checker seed {seed} ({world}): {violation.split(': ', 1)[1]}", time.monotonic() - started
    return None, time.monotonic() - started


def _stop(process: subprocess.Popen[str]) -> None:
    """End the checker and the servers it started (its own process group): SIGINT lets it stop them."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def try_mutant(
    mutant: Mutant, base: Path, chaos_seconds: float, deselected: Sequence[str] = (), tests: bool = True
) -> Result:
    """The mutant's tests (unless `tests` is false: the checker alone), then the checker if they passed."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.id}-") as scratch:
        root = Path(scratch) / "tree"
        shutil.copytree(base, root, symlinks=True)
        apply(mutant, root)
        failed, seconds = run_tests(root, mutant.tests, deselected) if tests else (None, 0.0)
        if failed is not None:
            return Result(mutant, True, failed, seconds)
        if chaos_seconds <= 0:
            return Result(mutant, False, "its tests passed; the checker was not run", seconds)
        caught, checker_seconds = run_checker(root, chaos_seconds)
        if caught is not None:
            return Result(mutant, True, caught, seconds + checker_seconds)
        return Result(
            mutant,
            False,
            f"its tests and {checker_seconds:.0f} s of the checker passed",
            seconds + checker_seconds,
        )


def table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| mutant | file | what it plays | killed | by | seconds |",
        "| --- | --- | --- | --- | --- | ---: |",
    ]
    for result in results:
        mutant = result.mutant
        verdict = "killed" if result.killed else "**survived**"
        by = result.by.replace("|", "\\|")
        lines.append(
            f"| `{mutant.id}` | `{mutant.file}` | {mutant.plays} | {verdict} | {by} | {result.seconds:.0f} |"
        )
    for gone in REPLACED:
        lines.append(f"| `{gone.id}` | `{gone.file}` | {gone.plays} | replaced | {gone.why} | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    parser.add_argument("--chaos-seconds", type=float, default=120.0, help="the checker's time per mutant")
    parser.add_argument("--list", action="store_true", help="check that every mutant applies, and list them")
    parser.add_argument(
        "--checker-only", action="store_true", help="what the checker alone catches: no tests are run"
    )
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"no mutant {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        base = scratch_copy(Path(scratch) / "base")
        check_imports_the_copy(base)
        for mutant in chosen:  # all of them apply, or nothing runs
            mutated(mutant, base)
        if args.list:
            print("\n".join(f"{m.id}: {m.file}: {m.plays}" for m in chosen))
            return 0
        deselected = [] if args.checker_only else failing_before(base, chosen)
        for test in deselected:
            print(f"left out, failing on the unmutated tree: {test}", flush=True)
        results = []
        for mutant in chosen:
            result = try_mutant(mutant, base, args.chaos_seconds, deselected, tests=not args.checker_only)
            results.append(result)
            verdict = "killed" if result.killed else "SURVIVED"
            print(f"{mutant.id}: {verdict} by {result.by} in {result.seconds:.0f} s", flush=True)
    print()
    print("\n".join(table(results)))
    survivors = [result.mutant.id for result in results if not result.killed]
    if survivors:
        print(f"\n{len(survivors)} survived: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
