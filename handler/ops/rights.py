"""What each Redis user may run: the commands the monitor and the operator send, the ACL rules made from
them, and a refusal turned into the right to add.

Two users, two rules (docs/security.md): the monitor's, exactly what its cycles (and `check`, signed in as
it) send; the operator's, what status, the dead-letter tools, consumers prune and reclaim --dry-run send.
On Redis 7.0+ each command is confined to the keys it is sent with (selectors); Redis 6.x has no
selectors, so there every command of a rule may touch every key of it. `check` verifies a user against
these lists, the docs print the rules made from them, and the tests run every command as a user holding
exactly one rule.

A command refused for want of a right (NOPERM, however Redis spells it: failures.py) is said as the ACL rule
that grants it, on the key it was refused for, and where the rule that holds it is documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from handler.errors import MonitorError
from handler.keys import DEAD_LETTER_SUFFIX, TWEET_KEY_PREFIX, display_name, hash_tag_of
from handler.settings import MonitorSettings, is_pattern
from handler.transport.failures import FailureKind, kind_of

SECURITY_DOC = "docs/security.md"
OPERATOR = "the operator's rule"
MONITOR = "the monitor's rule"
# Commands whose rules name a subcommand (`+xinfo|consumers`): allowing the whole command would grant more.
CONTAINERS = frozenset({"ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "XGROUP", "XINFO"})


def token(*words: str) -> str:
    """The ACL rule allowing a command: `+xdel`, `+xinfo|consumers`."""
    name = words[0].lower()
    if words[0].upper() in CONTAINERS and len(words) > 1:
        return f"+{name}|{words[1].lower()}"
    return f"+{name}"


class MissingRightError(MonitorError):
    """Redis refused a command for want of a right: the message names the rule that grants it. `inside`: the
    commands a script runs, when the refusal came from one of them (Redis 6 does not say which)."""

    def __init__(
        self,
        words: tuple[str, ...],
        key: str | None,
        reason: str,
        rule: str = OPERATOR,
        inside: tuple[str, ...] = (),
    ) -> None:
        self.right = token(*words)
        self.key = key
        on = f" on '{display_name(key)}'" if key is not None else ""
        sent = " ".join(words).upper()
        if inside:
            sent = f"one of {', '.join(inside)} in its {sent} script"
            self.right = " ".join(token(*command.split()) for command in inside)
        super().__init__(
            f"the Redis user may not run {sent}{on} ({reason}): add {self.right}"
            f"{' for that key' if key is not None else ''} ({rule} in {SECURITY_DOC} has it)"
        )


def is_refused_right(error: BaseException | str) -> bool:
    return kind_of(error) == FailureKind.NOT_PERMITTED


@contextmanager
def needs(
    *words: str, key: str | None = None, rule: str = OPERATOR, inside: tuple[str, ...] = ()
) -> Iterator[None]:
    """Around a command sending `words` on `key` (a script running the commands `inside`): a NOPERM becomes
    MissingRightError naming the command, or the script's commands when the refusal came from within it."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        if is_refused_right(exc):
            from_script = bool(inside) and not isinstance(exc, redis.exceptions.NoPermissionError)
            raise MissingRightError(words, key, str(exc), rule, inside if from_script else ()) from exc
        raise


# What each kind of user sends: every command with representative arguments, as ACL DRYRUN takes them, the
# commands inside the Lua scripts and transactions included. Keys are placeholders for their role
# (KEY_ROLES); {group} and {consumer} are not keys. `when` names what makes a call needed (WHEN); check,
# the documented rules (docs/security.md) and the tests all read these lists.
KEY_ROLES = ("stream", "dead_letter", "cursor", "lease", "last_refusal", "last_cycle", "tweet")
ALWAYS = ""
WHEN = {
    ALWAYS: "always",
    "detect": "REDIS_CLUSTER=detect (the default): whether REDIS_HOST is a cluster node",
    "cluster": "a Redis Cluster: redis-py reads its slot map and command table; writes wait for a replica",
    "pattern": "STREAM_NAME with a pattern (tweets_stream:*): the streams are found with SCAN",
    "pruning": "DELETE_IDLE_CONSUMERS_AFTER_SEC set: idle consumers removed after each cycle",
    "search": "the search module loaded: status counts tweets-index's documents",
}
SCRIPT = "return 0"  # any script: ACL rules cannot tell one script from another


@dataclass(frozen=True)
class Call:
    words: tuple[str, ...]
    why: str
    when: str = ALWAYS
    rare: str = ""  # sent only on a path too rare to play in a test (a race): said why it is needed

    @property
    def token(self) -> str:
        return token(*self.words)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(word[1:-1] for word in self.words if word[1:-1] in KEY_ROLES and word[0] == "{")


def _calls(why: str, when: str, *calls: tuple[str, ...]) -> list[Call]:
    return [Call(words, why, when) for words in calls]


S, G, C, DL = "{stream}", "{group}", "{consumer}", "{dead_letter}"
CURSOR, LEASE, LAST_REFUSAL, LAST_CYCLE, TWEET = (
    "{cursor}",
    "{lease}",
    "{last_refusal}",
    "{last_cycle}",
    "{tweet}",
)

MONITOR_CALLS = [
    *_calls(
        "the cycle",
        ALWAYS,
        ("CLIENT", "SETNAME", "tweets-monitor"),
        ("XPENDING", S, G),
        ("XPENDING", S, G, "-", "+", "1"),
        ("XCLAIM", S, G, C, "0", "0-1"),
        ("XCLAIM", S, G, C, "0", "0-1", "IDLE", "0", "RETRYCOUNT", "1", "JUSTID"),
        ("XRANGE", S, "0-1", "0-1", "COUNT", "1"),
        ("XACK", S, G, "0-1"),
        ("HSET", TWEET, "id", "1"),
    ),
    *_calls(
        "dead letters (reclaim/dead_letter.py)",
        ALWAYS,
        ("EVAL", SCRIPT, "2", S, DL),
        ("EVAL", SCRIPT, "1", S),
        ("XADD", DL, "*", "field", "value"),
        ("XADD", DL, "MAXLEN", "~", "1", "1-1", "field", "value"),
        ("XRANGE", DL, "1-1", "1-1"),
        ("XLEN", DL),
        ("TIME",),
        ("MULTI",),
        ("EXEC",),
    ),
    Call(
        ("XDEL", DL, "1-1"),
        "dead letters (reclaim/dead_letter.py)",
        rare="a relayed dead letter whose entry another consumer took meanwhile is deleted again",
    ),
    *_calls(
        "the sweep lease and the cursor (reclaim/lease.py, reclaim/cursor.py)",
        ALWAYS,
        ("SET", LEASE, "holder", "NX", "PX", "1000"),
        ("GET", LEASE),
        ("PTTL", LEASE),
        ("TYPE", LEASE),
        ("PEXPIRE", LEASE, "1000"),
        ("DEL", LEASE),
        ("EVAL", SCRIPT, "1", LEASE),
        ("EVAL", SCRIPT, "2", LEASE, CURSOR),
        ("GET", CURSOR),
        ("SET", CURSOR, "0-1", "PX", "1000"),
        ("DEL", CURSOR),
    ),
    *_calls(
        "the heartbeat and the last refusal, for status",
        ALWAYS,
        ("EVAL", SCRIPT, "1", LAST_CYCLE),
        ("GET", LAST_CYCLE),
        ("SET", LAST_CYCLE, "1"),
        ("SET", LAST_REFUSAL, "refused", "PX", "1000"),
    ),
    *_calls(
        "check, signed in as the monitor",
        ALWAYS,
        ("PING",),
        ("ACL", "WHOAMI"),
        ("INFO", "server"),
        ("TYPE", DL),
    ),
    *_calls("REDIS_CLUSTER=detect", "detect", ("INFO", "cluster")),
    *_calls("a cluster", "cluster", ("CLUSTER", "SLOTS"), ("COMMAND",), ("WAIT", "1", "0")),
    *_calls("STREAM_NAME as a pattern", "pattern", ("SCAN", "0", "MATCH", "x", "TYPE", "stream")),
    *_calls(
        "DELETE_IDLE_CONSUMERS_AFTER_SEC",
        "pruning",
        ("XINFO", "CONSUMERS", S, G),
        ("XGROUP", "DELCONSUMER", S, G, C),
    ),
]

OPERATOR_CALLS = [
    *_calls("signing in", ALWAYS, ("CLIENT", "SETNAME", "tweets-monitor")),
    *_calls("REDIS_CLUSTER=detect", "detect", ("INFO", "cluster")),
    *_calls(
        "status",
        ALWAYS,
        ("XINFO", "GROUPS", S),
        ("XINFO", "CONSUMERS", S, G),
        ("XPENDING", S, G),
        ("XPENDING", S, G, "-", "+", "1", C),
        ("TYPE", DL),
        ("XLEN", DL),
        ("GET", LAST_REFUSAL),
        ("EVAL", SCRIPT, "1", LAST_CYCLE),
        ("GET", LAST_CYCLE),
        ("TIME",),
        ("INFO", "memory"),
    ),
    *_calls("status", "search", ("FT.INFO", "tweets-index")),
    *_calls(
        "dead-letter list, show, replay, purge",
        ALWAYS,
        ("XRANGE", DL, "-", "+", "COUNT", "1"),
        ("XREVRANGE", DL, "+", "-", "COUNT", "1"),
        ("EVAL", SCRIPT, "2", DL, S),
        ("EVAL", SCRIPT, "2", S, DL),
        ("XPENDING", S, G),
        ("TYPE", S),
        ("XADD", S, "*", "field", "value"),
        ("XDEL", DL, "0-1"),
        ("WATCH", DL),
        ("UNWATCH",),
        ("MULTI",),
        ("EXEC",),
    ),
    *_calls(
        "consumers prune",
        ALWAYS,
        ("EVAL", SCRIPT, "1", S),
        ("XINFO", "CONSUMERS", S, G),
        ("XGROUP", "DELCONSUMER", S, G, C),
    ),
    *_calls(
        "reclaim --dry-run",
        ALWAYS,
        ("XPENDING", S, G, "-", "+", "1"),
        ("GET", CURSOR),
        ("XRANGE", S, "0-1", "0-1"),
        ("TYPE", TWEET),
    ),
]


def needed(calls: list[Call], when: set[str]) -> list[Call]:
    """The calls needed where `when` holds (ALWAYS is always in it)."""
    return [call for call in calls if call.when in when | {ALWAYS}]


def situation(settings: MonitorSettings, cluster: bool = False, search: bool = False) -> set[str]:
    """What the settings (and the server met) make needed, as WHEN's names."""
    flags = {
        "detect": settings.REDIS_CLUSTER == "detect",
        "cluster": cluster or settings.REDIS_CLUSTER == "on",
        "pattern": any(is_pattern(name) for name in settings.stream_names),
        "pruning": bool(settings.DELETE_IDLE_CONSUMERS_AFTER_SEC),
        "search": search,
    }
    return {name for name, on in flags.items() if on}


def glob_escaped(name: str) -> str:
    """A key name as an ACL key pattern matching it alone."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", name)


def key_patterns(stream: str, dead_letter: str | None = None) -> dict[str, str]:
    """Each key role's pattern for one stream (or a STREAM_NAME pattern, kept a glob): every group's
    cursor, lease, last refusal and heartbeat, the stream's dead letters, and every tweet."""
    exact = (lambda name: name) if is_pattern(stream) else glob_escaped
    tag = exact(hash_tag_of(stream))
    return {
        "stream": exact(stream),
        "dead_letter": glob_escaped(dead_letter) if dead_letter else tag + DEAD_LETTER_SUFFIX,
        "cursor": tag + ":cursor:*",
        "lease": tag + ":lease:*",
        "last_refusal": tag + ":last-refusal:*",
        "last_cycle": tag + ":last-cycle:*",
        "tweet": TWEET_KEY_PREFIX.decode() + "*",
    }


def _ordered(tokens: set[str], calls: list[Call]) -> list[str]:
    order = {call.token: index for index, call in reversed(list(enumerate(calls)))}
    return sorted(tokens, key=lambda name: order[name])


def _patterns(roles: set[str], streams: list[dict[str, str]]) -> list[str]:
    return list(
        dict.fromkeys("~" + patterns[role] for role in KEY_ROLES if role in roles for patterns in streams)
    )


def selector_rule(calls: list[Call], streams: list[dict[str, str]]) -> str:
    """Redis 7.0+: each command confined to the keys it is sent with, by selectors `(~keys +commands)`. A
    command sent with several keys at once (EVAL) gets one selector holding every key it is sent with."""
    keyless = {call.token for call in calls if not call.roles}
    together = {call.token for call in calls if len(call.roles) > 1}
    by_keys: dict[frozenset[str], set[str]] = {}
    for name in together:
        roles = frozenset(role for call in calls if call.token == name for role in call.roles)
        by_keys.setdefault(roles, set()).add(name)
    for call in calls:
        if len(call.roles) == 1 and call.token not in together:
            by_keys.setdefault(frozenset(call.roles), set()).add(call.token)
    ordered = sorted(by_keys.items(), key=lambda item: min(KEY_ROLES.index(role) for role in item[0]))
    selectors = [
        "(" + " ".join([*_patterns(set(roles), streams), *_ordered(tokens, calls)]) + ")"
        for roles, tokens in sorted(ordered, key=lambda item: len(item[0]))
    ]
    return " ".join(["-@all", *_ordered(keyless, calls), *selectors])


def flat_rule(calls: list[Call], streams: list[dict[str, str]]) -> str:
    """Redis 6.x (no selectors): every command on every key of the rule."""
    roles = {role for call in calls for role in call.roles}
    tokens = {call.token for call in calls}
    return " ".join(["-@all", *_ordered(tokens, calls), *_patterns(roles, streams)])


PASSWORD_PLACEHOLDER = "<password>"  # noqa: S105  (what the docs show in its place)


def setuser(user: str, rule: str, password: str = PASSWORD_PLACEHOLDER) -> str:
    """The command an administrator runs: `reset` first, so that running it again gives the same user."""
    return f"ACL SETUSER {user} reset on >{password} {rule}"


def access_policy(calls: list[Call], streams: list[dict[str, str]]) -> str:
    """Azure's data access policy or custom access string: commands and keys, nothing else (no selectors)."""
    return flat_rule(calls, streams).removeprefix("-@all ")


DOCUMENTED_STREAM = "tweets_stream"  # the stream the documented rules name (docs/security.md)
DOCUMENTED_SITUATION = {"detect"}  # the defaults: one stream, REDIS_CLUSTER=detect, nothing opted into


def documented_rules() -> dict[str, str]:
    """Every rule text docs/security.md shows, by what it is for (tests/test_acl_rules.py holds the docs to
    it): each user's rule with selectors (7.0+) and without (6.x), what each setting adds to the monitor's,
    and Azure's access policy."""
    streams = [key_patterns(DOCUMENTED_STREAM)]
    rules = {}
    for user, calls in (("monitor", MONITOR_CALLS), ("operator", OPERATOR_CALLS)):
        base = needed(calls, DOCUMENTED_SITUATION)
        rules[f"{user} 7"] = setuser(user, selector_rule(base, streams))
        rules[f"{user} 6"] = setuser(user, flat_rule(base, streams))
    for when in WHEN:
        extra = [call for call in MONITOR_CALLS if call.when == when and when not in DOCUMENTED_SITUATION]
        if when and extra:
            rules[f"monitor {when} 7"] = selector_rule(extra, streams).removeprefix("-@all ")
            rules[f"monitor {when} 6"] = " ".join(_ordered({call.token for call in extra}, extra))
    rules["operator search"] = " ".join(sorted({c.token for c in OPERATOR_CALLS if c.when == "search"}))
    rules["access policy"] = access_policy(needed(MONITOR_CALLS, DOCUMENTED_SITUATION), streams)
    return rules
