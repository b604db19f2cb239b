"""The ACL rules handler/ops/rights.py makes and docs/security.md gives, exact: the monitor's (what its
cycles, its metrics and `check` send) and the operator's (status, the dead-letter tools, consumers prune,
reclaim --dry-run).

Each rule is given to a user on real servers, Redis 8.2 and 7.0 (the rule with selectors) and 6.0 and 6.2
(the rule without), and every command it is for runs as that user: everything works and ACL LOG stays
empty (an alert on denials hears nothing from a healthy monitor). What those commands send, read from INFO
commandstats, is what handler/ops/rights.py declares. Each right of the monitor's rule is needed: without
it, a denial."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest

from handler.dev.host import APP_ROOT
from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, PIPELINE_NAMES, STREAM, tweet
from handler.monitor import CycleFailed, Monitor
from handler.ops import rights
from handler.ops.check import run_checks
from handler.reclaim.summary import CycleSummary
from handler.settings import MonitorSettings
from tests.cli import cli
from tests.pipeline import abandon, age, command, crash_after_reading, create_group, set_deliveries

DOC = APP_ROOT / "docs" / "security.md"
PASSWORD = "pw-rules"
VERSIONS = ["6.0", "6.2", "7.0", "8.2"]
CRASHED = "consumer-crashed"


def rule(user: str, selectors: bool, situation: set[str]) -> list[str]:
    """ACL SETUSER's words for `user`, from handler/ops/rights.py (the one source docs/security.md shows:
    test_security_md_shows_the_rules_rights_makes), for the settings `situation` names (rights.WHEN)."""
    calls = rights.MONITOR_CALLS if user == "monitor" else rights.OPERATOR_CALLS
    make = rights.selector_rule if selectors else rights.flat_rule
    body = make(rights.needed(calls, situation), [rights.key_patterns(STREAM)])
    return rights.setuser(user, body, PASSWORD).split()[3:]


# The monitor_scenario's settings: one node, REDIS_CLUSTER=detect, pruning and trimming on.
MONITOR_SITUATION = {"detect", "pruning"}


def test_security_md_shows_the_rules_rights_makes() -> None:
    """docs/security.md's rules are the ones the tests run: for each user with and without selectors, what
    each setting adds, Azure's access policy."""
    documented = DOC.read_text()
    missing = {name: text for name, text in rights.documented_rules().items() if text not in documented}
    assert {} == missing


def set_user(admin: redis.Redis, user: str, words: list[str]) -> None:
    command(admin, "ACL", "DELUSER", user)
    command(admin, "ACL", "SETUSER", user, *words)


def denials(admin: redis.Redis) -> list[str]:
    """ACL LOG as `user: command or key (context)`, one per entry."""
    return [
        f"{entry[b'username'].decode()}: {entry[b'object'].decode()} ({entry[b'reason'].decode()}, "
        f"{entry[b'context'].decode()})"
        for entry in (dict(zip(row[::2], row[1::2], strict=False)) for row in command(admin, "ACL", "LOG"))
    ]


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"redis-{v}" for v in VERSIONS])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, LocalRedis]]:
    if request.param == "7.0":
        binary, env = request.getfixturevalue("tls_binary")  # Debian's 7.0.15, spoken to without TLS here
        started = LocalRedis(binary, env=env)
    else:
        started = LocalRedis(BINARIES[request.param]())
    started.start()
    yield request.param, started
    started.cleanup()


def fresh(server: LocalRedis) -> redis.Redis:
    admin = server.client()
    admin.flushall()
    admin.config_set("maxmemory", 0)
    command(admin, "ACL", "LOG", "RESET")
    return admin


def settings_as(server: LocalRedis, user: str, **overrides: Any) -> MonitorSettings:
    values: dict[str, Any] = {
        **PIPELINE_NAMES,
        "REDIS_HOST": server.address,
        "REDIS_TLS": False,
        "MIN_IDLE_TIME_SEC": 10,
        "REDIS_USERNAME": user,
        "REDIS_PASSWORD": PASSWORD,
        **overrides,
    }
    return MonitorSettings(**values)


def big_entry() -> list[bytes]:
    """4,000 fields and no `id`: dead-lettered, too big for one Lua call."""
    return [part for n in range(4000) for part in (b"field-%d" % n, b"value-%d" % n)]


def backlog(admin: redis.Redis) -> None:
    """Everything a cycle meets: tweets, one deleted, one without an id, one too big, one delivered too
    often, one whose tweet key is of another type; an idle consumer with nothing pending; a lease left
    without a time to live (a crashed monitor's)."""
    create_group(admin, STREAM, GROUP)
    entries = [tweet(n) for n in range(24)] + [[b"text", b"no id"], big_entry(), tweet(90), tweet(91)]
    ids = abandon(admin, STREAM, GROUP, entries, CRASHED)
    admin.xdel(STREAM, ids[0])
    set_deliveries(admin, STREAM, GROUP, CRASHED, [ids[26]], 50)
    command(admin, "XCLAIM", STREAM, GROUP, CRASHED, 0, ids[26], "IDLE", 60_000, "JUSTID")
    admin.set(b"tweet:" + tweet(91)[3], "not a hash")
    crash_after_reading(admin, STREAM, GROUP, "idle-consumer", 0)
    admin.set(f"{{{STREAM}}}:lease:{GROUP}", "a crashed monitor")


def no_stop() -> bool:
    return False


Act = Callable[[Callable[[], Any]], Any]


def directly(action: Callable[[], Any]) -> Any:
    return action()


def monitor_scenario(
    server: LocalRedis, admin: redis.Redis, user: str, check: bool = True, act: Act = directly
) -> list[str]:
    """The monitor's life as `user`, in process: cycles on the timer (the first meets a lease without a TTL,
    then the cap leaves a cursor, pruning and trimming are on, a huge entry is dead-lettered), its metrics
    scraped, a cycle while Redis is out of memory (refused writes, their deliveries given back, the lease
    and the last refusal refused), then `check`. Each of the monitor's steps goes through `act`; what went
    wrong is returned in words (empty: nothing)."""
    backlog(admin)
    settings = settings_as(
        server,
        user,
        DELETE_IDLE_CONSUMERS_AFTER_SEC=0.001,
        DEAD_LETTER_MAXLEN=3,
        LEASE_TTL_SEC=1,
        CYCLE_MAX_MESSAGES=10,
    )
    problems: list[str] = []
    monitor = Monitor.observed(settings)
    try:
        results = [act(lambda: monitor.run_scheduled(no_stop))]
        time.sleep(1.1)  # the lease without a TTL was given one: it runs out
        for _ in range(8):
            results.append(act(lambda: monitor.run_scheduled(no_stop)))
            if admin.xpending(STREAM, GROUP)["pending"] == 0:
                break
        act(lambda: generate_latest(monitor.metrics.registry))  # type: ignore[union-attr]
        abandon(admin, STREAM, GROUP, [tweet(n) for n in range(30, 33)], CRASHED)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"])
        try:
            results.append(act(lambda: monitor.run_once(no_stop)))
        finally:
            admin.config_set("maxmemory", 0)
        refused = [bytes(row[0]) for row in command(admin, "XPENDING", STREAM, GROUP, "-", "+", 100)]
        age(admin, STREAM, GROUP, settings.MONITORING_CONSUMER_NAME, refused, 60_000)  # given back fresh
        results.append(act(lambda: monitor.run_scheduled(no_stop)))
    finally:
        monitor.close()
    for result in results:
        if isinstance(result, CycleFailed):
            problems.append(f"a cycle failed: {result.message}")
    summaries = [result for result in results if isinstance(result, CycleSummary)]
    if sum(summary.counts.processed for summary in summaries) < 23:  # the backlog's 24 tweets, one deleted
        problems.append(f"cycles did not process the tweets: {[s.as_dict() for s in summaries]}")
    if admin.xpending(STREAM, GROUP)["pending"]:
        problems.append(f"left pending: {admin.xpending(STREAM, GROUP)}")
    if check:
        lines = act(lambda: list(run_checks(settings)))
        problems += [line.line() for line in lines if line.failed or line.skipped]
    return problems


def test_the_monitors_rule_runs_everything_and_logs_no_denial(
    server: tuple[str, LocalRedis],
) -> None:
    """The documented rule let the monitor run, but every connection left a CLIENT SETINFO denial."""
    version, started = server
    admin = fresh(started)
    set_user(admin, "monitor", rule("monitor", version >= "7", MONITOR_SITUATION))
    problems = monitor_scenario(started, admin, "monitor", check=version >= "7")
    assert [] == problems
    assert [] == denials(admin)


def test_check_signed_in_as_the_monitor_on_redis_6_skips_only_what_it_cannot_read(
    server: tuple[str, LocalRedis],
) -> None:
    """Redis 6 cannot tell a user its own rights (no ACL DRYRUN, ACL GETUSER is an administrator's):
    `check` says so (SKIP), and that one refusal is all ACL LOG holds."""
    version, started = server
    admin = fresh(started)
    set_user(admin, "monitor", rule("monitor", version >= "7", rights.DOCUMENTED_SITUATION))
    create_group(admin, STREAM, GROUP)
    lines = list(run_checks(settings_as(started, "monitor")))
    assert [] == [line.line() for line in lines if line.failed]
    if version >= "7":
        assert all(not line.skipped for line in lines), [line.line() for line in lines]
        assert [] == denials(admin)
    else:
        assert ["permissions"] == [line.name for line in lines if line.skipped]
        assert ["monitor: acl (command, toplevel)"] == denials(admin)  # ACL GETUSER


def operator_cli(started: LocalRedis, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(started, *args, REDIS_USERNAME=user, REDIS_PASSWORD=PASSWORD)


def dead_letters_and_pending(started: LocalRedis, admin: redis.Redis) -> list[bytes]:
    """Dead letters (inline and continued) written by the monitor's cycle as the default user, consumers
    with and without pending entries; the dead letters' IDs, oldest first."""
    create_group(admin, STREAM, GROUP)
    abandon(admin, STREAM, GROUP, [[b"text", b"no id 1"], [b"text", b"no id 2"], big_entry()], CRASHED)
    values: dict[str, Any] = {
        **PIPELINE_NAMES,
        "REDIS_HOST": started.address,
        "REDIS_TLS": False,
        "MIN_IDLE_TIME_SEC": 10,
    }
    settings = MonitorSettings(**values)
    Monitor(settings).run_once(no_stop)
    abandon(admin, STREAM, GROUP, [tweet(n) for n in range(5)], CRASHED)
    crash_after_reading(admin, STREAM, GROUP, "idle-consumer", 0)
    return [bytes(row[0]) for row in command(admin, "XRANGE", "{" + STREAM + "}:dead-letter", "-", "+")]


OPERATOR_COMMANDS: list[Callable[[list[bytes]], list[str]]] = [
    lambda ids: ["status"],
    lambda ids: ["status", "--json"],
    lambda ids: ["dead-letter", "list"],
    lambda ids: ["dead-letter", "list", "--newest", "--json"],
    lambda ids: ["dead-letter", "show", ids[2].decode()],  # the continued one
    lambda ids: ["dead-letter", "replay", ids[0].decode()],
    lambda ids: ["dead-letter", "replay", "--count", "1", "--dry-run"],
    lambda ids: ["dead-letter", "purge", ids[1].decode(), "--yes"],
    lambda ids: ["dead-letter", "replay", "--all"],
    lambda ids: ["dead-letter", "purge", "--all", "--yes"],
    lambda ids: ["consumers", "prune", "--idle-sec", "0", "--dry-run"],
    lambda ids: ["consumers", "prune", "--idle-sec", "0"],
    lambda ids: ["reclaim", "--dry-run"],
]


def test_the_operators_rule_runs_every_operator_command_and_logs_no_denial(
    server: tuple[str, LocalRedis],
) -> None:
    """The documented rule let status, dead-letter list --newest, replay, purge and consumers prune fail."""
    version, started = server
    admin = fresh(started)
    ids = dead_letters_and_pending(started, admin)
    set_user(admin, "operator", rule("operator", version >= "7", rights.DOCUMENTED_SITUATION))
    failed = []
    for arguments in OPERATOR_COMMANDS:
        args = arguments(ids)
        done = operator_cli(started, "operator", *args)
        if done.returncode != 0:
            failed.append(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    assert [] == failed
    assert [] == denials(admin)


def without_each_right(words: list[str]) -> Iterator[tuple[str, list[str]]]:
    """The rule without one of its rights at a time: a command or a key pattern of its root, or of one of
    its selectors `(~keys +commands)` (a selector left without commands or keys is dropped)."""
    text = " ".join(words)
    head, _, rest = text.partition("-@all")
    selectors = re.findall(r"\(([^)]*)\)", rest)
    root = re.sub(r"\([^)]*\)", " ", rest).split()

    def render(root_words: list[str], groups: list[list[str]]) -> list[str]:
        kept = [g for g in groups if any(w.startswith("+") for w in g) and any(w.startswith("~") for w in g)]
        return [*head.split(), "-@all", *root_words, *("(" + " ".join(g) + ")" for g in kept)]

    groups = [group.split() for group in selectors]
    for index, word in enumerate(root):
        yield word, render(root[:index] + root[index + 1 :], groups)
    for number, group in enumerate(groups):
        for index, word in enumerate(group):
            changed = [*groups[:number], group[:index] + group[index + 1 :], *groups[number + 1 :]]
            yield f"{word} in ({' '.join(group)})", render(root, changed)


def test_each_right_of_the_monitors_rule_is_needed(redis_8: LocalRedis) -> None:
    """Without any one right of the documented rule (a command or a key pattern, in the root or in a
    selector), the monitor meets a denial: the rule grants nothing it never needs (DEL or PEXPIRE of the
    stream, DEL or SET of tweets, XADD into the stream, cluster commands on one node). Only a right that
    rights.py says is for a path too rare to play here may go unmet."""
    admin = fresh(redis_8)
    whole = rule("monitor", True, MONITOR_SITUATION)
    set_user(admin, "monitor", whole)
    assert ([], []) == (monitor_scenario(redis_8, admin, "monitor"), denials(admin))  # the whole rule
    unneeded = []
    for right, words in without_each_right(whole):
        admin.flushall()
        command(admin, "ACL", "LOG", "RESET")
        set_user(admin, "monitor", words)
        if not monitor_scenario(redis_8, admin, "monitor") and not denials(admin):
            unneeded.append(right.split()[0])
    played = {call.token for call in rights.MONITOR_CALLS if not call.rare}
    assert set(unneeded) <= {call.token for call in rights.MONITOR_CALLS} - played, unneeded


def commands_sent(admin: redis.Redis, action: Callable[[], object]) -> set[str]:
    """What `action` sent, as ACL rules (+xadd, +xinfo|consumers), from INFO commandstats (a script's and
    a transaction's commands included); the INFO read itself left out."""
    before = {name: stats["calls"] for name, stats in admin.info("commandstats").items()}
    action()
    after = {name: stats["calls"] for name, stats in admin.info("commandstats").items()}
    sent = {name.removeprefix("cmdstat_") for name, calls in after.items() if calls > before.get(name, 0)}
    if after.get("cmdstat_info", 0) - before.get("cmdstat_info", 0) <= 1:
        sent.discard("info")
    return {"+" + name for name in sent}


def test_what_the_monitor_and_the_operator_send_is_what_rights_declares(redis_8: LocalRedis) -> None:
    """One source for the command lists check verifies, the docs print and these tests run: what the
    commands send is exactly what handler/ops/rights.py declares for them."""
    admin = fresh(redis_8)
    set_user(admin, "monitor", ["on", f">{PASSWORD}", "~*", "+@all"])
    sent: set[str] = set()

    def measured(action: Callable[[], Any]) -> Any:
        answer: list[Any] = []
        sent.update(commands_sent(admin, lambda: answer.append(action())))
        return answer[0]

    assert [] == monitor_scenario(redis_8, admin, "monitor", act=measured)
    sent.discard("+auth")  # signing in: no rule can refuse it
    declared = {call.token for call in rights.needed(rights.MONITOR_CALLS, MONITOR_SITUATION)}
    rare = {call.token for call in rights.MONITOR_CALLS if call.rare}
    assert (set(), set()) == (sent - declared, declared - sent - rare)
    admin = fresh(redis_8)
    ids = dead_letters_and_pending(redis_8, admin)
    set_user(admin, "operator", ["on", f">{PASSWORD}", "~*", "+@all"])
    sent = set()
    for arguments in OPERATOR_COMMANDS:
        args = arguments(ids)
        sent |= commands_sent(admin, lambda: operator_cli(redis_8, "operator", *args))  # noqa: B023
    sent.discard("+auth")
    declared = {call.token for call in rights.needed(rights.OPERATOR_CALLS, {"detect"})}
    assert (set(), set()) == (sent - declared, declared - sent)


@pytest.mark.parametrize(
    ("right", "args"),
    [
        ("+xinfo|groups", ["status"]),
        ("+xinfo|consumers", ["status"]),
        ("+xlen", ["status"]),
        ("+time", ["status"]),
        ("+xrevrange", ["dead-letter", "list", "--newest"]),
        ("+xrange", ["dead-letter", "show", "1-1"]),
        ("+xinfo|consumers", ["consumers", "prune", "--idle-sec", "0"]),
        ("+xgroup|delconsumer", ["consumers", "prune", "--idle-sec", "0"]),
    ],
)
def test_an_operator_missing_a_right_is_told_which(redis_8: LocalRedis, right: str, args: list[str]) -> None:
    """A NOPERM names the rule to add: the operator's rule without one right, the command that needs it
    fails saying which (on Redis 7+ even from inside a script; Redis 6 does not say which of a script's
    commands it refused, so the script's are named)."""
    admin = fresh(redis_8)
    dead_letters_and_pending(redis_8, admin)
    words = [word.replace(right + ")", ")") for word in rule("operator", True, rights.DOCUMENTED_SITUATION)]
    set_user(admin, "operator", [word for word in words if word != right])
    done = operator_cli(redis_8, "operator", *args)
    assert 1 == done.returncode, done.stdout + done.stderr
    assert right in done.stderr and "Traceback" not in done.stderr, done.stderr
