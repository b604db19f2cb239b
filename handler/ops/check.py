"""`python -m handler check`: the first thing to run after deploying. One line per check, each passing or
failing with what to do; the command exits 0 only when every check passes.

Permissions are checked with ACL DRYRUN (Redis 7.0+) for every command the monitor sends, with its real
keys. Before 7.0 there is no dry run: the check then reads the user's rules (ACL GETUSER) and passes only
for a user allowed every command and key, the default on Azure Cache for Redis.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from handler.errors import MonitorError
from handler.functions.host_files import budget_warning, function_timeout
from handler.keys import TWEET_KEY_PREFIX, StreamKeys, display_name, visible
from handler.ops import rights
from handler.reclaim import heartbeat
from handler.reclaim.consumers import prune_idle_consumers
from handler.reclaim.rules import parse_pending_count
from handler.reclaim.streams import TooManyStreamsError, find_streams
from handler.settings import MonitorSettings, is_loopback
from handler.transport.client import Client, command, server_holding, text
from handler.transport.connect import connect, tls_hint
from handler.transport.failures import LOST_CONNECTION, REDIS_FAILURES, FailureKind, kind_of
from handler.transport.topology import server_address

# What the monitor can promise about replicas, said plainly (reclaim/page.py: WAIT on a cluster).
# One sentence each; docs/azure-managed-redis.md says the rest.
REPLICA_PROMISE_CLUSTER = (
    "an entry is acknowledged once a replica of its tweet's node has the write (WAIT): a failover loses none"
)
REPLICA_PROMISE_ONE_ENDPOINT = (
    "writes reach the one endpoint before their acknowledgements; behind an Enterprise-policy proxy a shard "
    "failover can lose the last writes (docs/azure-managed-redis.md)"
)
ONE_ENDPOINT = (
    "one endpoint (a single node, or Azure Managed Redis' Enterprise or Non-clustered policy: shards not "
    "visible)"
)
PRUNE_PROBE_CONSUMER = "tweets-monitor-check-probe"
UNKNOWN = "unknown"  # the server's version, when INFO is not allowed
# ARGV: each command as its word count, then its words. Which the signed-in user may not run (their
# positions, from 1), asked of Redis 7.0+ without a right of its own (redis.acl_check_cmd, which logs no
# denial): how `check` verifies the user it signs in as, the monitor's own, without an administrator.
MAY_I_LUA = """
local refused, i, n = {}, 1, 0
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  n = n + 1
  local words = {}
  for j = 1, count do
    words[j] = ARGV[i + j]
  end
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(words))
  if not ok or not allowed then
    refused[#refused + 1] = n
  end
  i = i + count + 1
end
return refused
"""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    skipped: bool = False  # could not be checked with this user's rights: neither a pass nor a failure
    warning: bool = False  # works, but an operator should know: does not fail the command

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "WARN" if self.warning else "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        """For a terminal: what Redis answered (names, errors) shown as text, its escapes made visible."""
        return f"{self.verdict}  {self.name}: {visible(self.detail)}"

    def as_dict(self) -> dict[str, str]:
        return {"verdict": self.verdict, "check": self.name, "detail": self.detail}

    @property
    def failed(self) -> bool:
        return not (self.passed or self.skipped or self.warning)


def run_checks(settings: MonitorSettings, user: str | None = None) -> Iterator[Check]:
    """Settings were loaded already (or the command exited 2); the rest stops at the first Redis failure.
    With several streams (STREAM_NAME lists them or a pattern), each stream is checked. `user` names the
    user whose rights are verified (ACL DRYRUN), when it is not the one signed in (an administrator).
    Whatever Redis answers ends in a line with a verdict, never a traceback."""
    where = settings.redis_shown
    group = settings.STREAM_CONSUMER_GROUP_NAME
    yield Check("settings", True, f"Redis {where}, stream '{settings.STREAM_NAME}', group '{group}'")
    yield from _settings_warnings(settings)
    try:
        client = connect(settings)
    except redis.exceptions.AuthenticationError as exc:
        yield Check("authentication", False, f"{exc} (check REDIS_USERNAME and REDIS_PASSWORD)")
        return
    except (*REDIS_FAILURES, MonitorError, ssl.SSLError) as exc:
        yield Check("connectivity", False, f"cannot reach {where}: {exc}")
        return
    try:
        yield from _checks_on(client, settings, user)
    except (*REDIS_FAILURES, MonitorError, ssl.SSLError) as exc:
        yield Check("check", False, f"stopped: Redis answered {type(exc).__name__}: {exc}")
    finally:
        client.close()


def _settings_warnings(settings: MonitorSettings) -> Iterator[Check]:
    timeout = function_timeout()
    if timeout.seconds < settings.CYCLE_TIME_BUDGET_SEC:
        yield Check(
            "time budget", False, budget_warning(settings.CYCLE_TIME_BUDGET_SEC, timeout), warning=True
        )


def _checks_on(client: Client, settings: MonitorSettings, user: str | None) -> Iterator[Check]:
    try:
        streams = find_streams(client, settings)
    except (*LOST_CONNECTION, ssl.SSLError) as exc:
        yield Check("connectivity", False, f"cannot list the streams: {exc}")
        return
    except TooManyStreamsError as exc:
        yield Check("stream and group", False, str(exc))
        return
    except redis.exceptions.ResponseError as exc:  # NOPERM: a pattern needs SCAN
        yield Check(
            "stream and group",
            False,
            f"cannot find the streams matching '{settings.STREAM_NAME}' with SCAN: {exc} (add +scan to the "
            "user's rule)",
        )
        return
    if not streams:
        yield Check("stream and group", False, f"no stream matches '{settings.STREAM_NAME}'")
        return
    stream_node = server_holding(client, streams[0])
    try:
        stream_node.ping()
    except redis.exceptions.AuthenticationError as exc:
        yield Check("authentication", False, f"{exc} (check REDIS_USERNAME and REDIS_PASSWORD)")
        return
    except (*LOST_CONNECTION, ssl.SSLError) as exc:
        hint = tls_hint(settings, exc)
        yield Check("connectivity", False, f"cannot reach {server_address(stream_node)}: {exc}{hint}")
        return
    cluster = isinstance(client, RedisCluster)
    mode = (
        f"OSS cluster ({len(client.get_primaries())} masters)"  # type: ignore[union-attr]
        if cluster
        else ONE_ENDPOINT
    )
    yield _connectivity(client, settings, mode)
    yield Check("replicas", True, REPLICA_PROMISE_CLUSTER if cluster else REPLICA_PROMISE_ONE_ENDPOINT)
    who = _whoami(stream_node, settings)
    verified = user or who
    also = f"; verifying the rights of '{user}'" if user else ""
    yield Check("authentication", True, f"as user '{who}'{also}")
    try:
        version = str(stream_node.info("server").get("redis_version", UNKNOWN))
    except redis.exceptions.ResponseError as exc:  # NOPERM: the monitor needs INFO only to detect a cluster
        yield Check(
            "server version",
            False,
            f"not read: '{who}' may not run INFO ({exc}); only REDIS_CLUSTER=detect needs it",
            skipped=True,
        )
        version = UNKNOWN
    else:
        yield Check("server version", _at_least(version, (6, 0)), f"Redis {version} (6.0 or newer needed)")
    needed = rights.needed(rights.MONITOR_CALLS, rights.situation(settings, cluster=cluster))
    for stream in streams:
        keys = StreamKeys.from_settings(settings, stream)
        yield _stream_and_group(client, keys)
        yield _dead_letter_stream(client, keys)
        yield _last_cycle(client, keys, settings.SWEEP_STALE_AFTER_SEC)
        yield _permissions(server_holding(client, stream), keys, verified, version, needed, asked=bool(user))
        if settings.DELETE_IDLE_CONSUMERS_AFTER_SEC and user is None:
            yield _pruning(client, keys, settings.DELETE_IDLE_CONSUMERS_AFTER_SEC)


def _connectivity(client: Client, settings: MonitorSettings, mode: str) -> Check:
    """PING answered; without TLS beyond this machine (a cluster's announced nodes included), a warning."""
    if settings.REDIS_TLS:
        return Check("connectivity", True, f"PING answered over TLS, certificate verified; {mode}")
    hosts = {settings.redis_address[0]}
    if isinstance(client, RedisCluster):
        hosts |= {str(node.host) for node in client.get_nodes()}  # type: ignore[no-untyped-call]
    beyond = sorted(host for host in hosts if not is_loopback(host))
    if not beyond:
        return Check(
            "connectivity", True, f"PING answered without TLS (REDIS_TLS=false, this machine); {mode}"
        )
    return Check(
        "connectivity",
        False,
        f"PING answered without TLS from {', '.join(beyond)}, beyond this machine: the password and every "
        f"tweet cross the network in cleartext (REDIS_TLS=false, REDIS_ALLOW_PLAINTEXT=true); {mode}",
        warning=True,
    )


def _last_cycle(client: Client, keys: StreamKeys, stale_after_sec: float) -> Check:
    """The heartbeat: a timer that stopped looks like a monitor with nothing to do, except here."""
    try:
        age = heartbeat.seconds_since(client, keys.last_cycle)
    except redis.exceptions.ResponseError as exc:
        return Check("last completed cycle", False, f"cannot read {display_name(keys.last_cycle)}: {exc}")
    if age is None:
        return Check(
            "last completed cycle",
            False,
            "none recorded yet: the timer (or `run`) records each cycle it completes; if it has been "
            "deployed for more than a minute, look at the Function App's invocations",
            warning=True,
        )
    if age > stale_after_sec:
        return Check(
            "last completed cycle",
            False,
            f"{age:,.0f} s ago, longer than SWEEP_STALE_AFTER_SEC={stale_after_sec:g}: the timer may have "
            "stopped (after a deploy, or when its singleton lease moved): restart the Function App; or the "
            "invocations do not reach this stream (more streams than they serve: docs/scale.md)",
        )
    return Check("last completed cycle", True, f"{age:,.0f} s ago")


def _pruning(client: Client, keys: StreamKeys, idle_sec: float) -> Check:
    """DELETE_IDLE_CONSUMERS_AFTER_SEC is on: its Lua script run as a dry run (it changes nothing)."""
    try:
        would_remove = prune_idle_consumers(client, keys.stream, keys.group, idle_sec, [keys.consumer], True)
        # The dry run never deletes: ask for the deletion too, of a consumer that does not exist (a no-op
        # that answers 0, or NOPERM).
        command(client, "XGROUP", "DELCONSUMER", keys.stream, keys.group, PRUNE_PROBE_CONSUMER)
    except redis.exceptions.ResponseError as exc:
        return Check(
            "consumer pruning",
            False,
            f"DELETE_IDLE_CONSUMERS_AFTER_SEC is set, but pruning was refused ({exc}): allow "
            "+xinfo|consumers +xgroup|delconsumer (XINFO CONSUMERS, XGROUP DELCONSUMER), or unset it",
        )
    return Check("consumer pruning", True, f"allowed; {len(would_remove)} consumers would be removed now")


def _whoami(client: Client, settings: MonitorSettings) -> str:
    try:
        name = command(client, "ACL", "WHOAMI")
    except redis.exceptions.ResponseError:  # before 6.0.? or not allowed by a least-privilege rule
        return settings.REDIS_USERNAME or "default"
    return text(name)


def _at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def _stream_and_group(client: Client, keys: StreamKeys) -> Check:
    """With XPENDING, which the monitor's own rule allows (XINFO may not be)."""
    stream = display_name(keys.stream)  # for people: a name that is not UTF-8 shown escaped
    try:
        pending = parse_pending_count(command(client, "XPENDING", keys.stream, keys.group))
    except redis.exceptions.ResponseError as exc:
        if kind_of(exc) == FailureKind.NO_GROUP:
            return Check("stream and group", False, f"no group '{keys.group}' on stream '{stream}'")
        return Check("stream and group", False, f"stream '{stream}': {exc}")
    detail = f"stream '{stream}' has group '{keys.group}' ({pending:,} pending)"
    return Check("stream and group", True, detail)


def _dead_letter_stream(client: Client, keys: StreamKeys) -> Check:
    """A dead-letter key of another type refuses every dead letter: they would stay pending for ever."""
    dead_letter = display_name(keys.dead_letter)  # for people: a name that is not UTF-8 shown escaped
    try:
        kind = text(command(client, "TYPE", keys.dead_letter))
    except redis.exceptions.ResponseError as exc:
        return Check("dead-letter stream", False, f"cannot read the type of '{dead_letter}': {exc}")
    if kind in ("stream", "none"):
        what = "exists" if kind == "stream" else "will be made by the first dead letter"
        return Check("dead-letter stream", True, f"'{dead_letter}' {what}")
    return Check(
        "dead-letter stream",
        False,
        f"'{dead_letter}' holds a {kind}, not a stream: every dead letter is refused and its entry "
        "stays pending; rename or delete that key, or set DEAD_LETTER_STREAM",
    )


def _permissions(
    client: Client, keys: StreamKeys, user: str, version: str, calls: list[rights.Call], asked: bool = False
) -> Check:
    """Every call the monitor makes, with its real keys: asked of ACL DRYRUN for another user (`check
    --user`, an administrator signed in), of redis.acl_check_cmd for the signed-in one (7.0+), of ACL
    GETUSER before 7.0. With `asked`, not being able to verify is a failure: verifying was the point."""
    values = {
        "stream": keys.stream,
        "group": keys.group,
        "consumer": keys.consumer,
        "dead_letter": keys.dead_letter,
        "cursor": keys.cursor,
        "lease": keys.lease,
        "last_refusal": keys.last_refusal,
        "last_cycle": keys.last_cycle,
        "tweet": TWEET_KEY_PREFIX.decode() + "1",
    }
    sent = [[part.format(**values) for part in call.words] for call in calls]
    if version != UNKNOWN and not _at_least(version, (7, 0)):
        return _permissions_before_dryrun(client, user, asked)
    refused: list[tuple[rights.Call, str]] = []
    if not asked:
        try:
            refused = [(calls[n - 1], "") for n in command(client, "EVAL", MAY_I_LUA, 0, *_flattened(sent))]
        except redis.exceptions.ResponseError as exc:
            if kind_of(exc) == FailureKind.NOT_PERMITTED:
                return Check(
                    "permissions",
                    False,
                    f"not verified: '{user}' may not run EVAL without keys ({exc}); to verify it, run "
                    f"`check --user {user}` with an administrator's REDIS_USERNAME and REDIS_PASSWORD",
                    skipped=True,
                )
            return _permissions_before_dryrun(client, user, asked)  # no acl_check_cmd: before 7.0
    else:
        for call, args in zip(calls, sent, strict=True):
            try:
                answer = command(client, "ACL", "DRYRUN", user, *args)
            except redis.exceptions.NoPermissionError as exc:
                return Check(
                    "permissions",
                    False,
                    f"not verified: the signed-in user may not run ACL DRYRUN ({exc}); sign in as an "
                    f"administrator (REDIS_USERNAME, REDIS_PASSWORD) to verify '{user}'",
                )
            except redis.exceptions.ResponseError as exc:
                if "unknown" in str(exc).lower() and "dryrun" in str(exc).lower():  # before 7.0
                    return _permissions_before_dryrun(client, user, asked)
                if "no such user" in str(exc).lower() or "not found" in str(exc).lower():
                    return Check("permissions", False, f"there is no user '{user}' ({exc})")
                refused.append((call, str(exc)))
                continue
            if answer not in (b"OK", "OK", True):
                refused.append((call, text(answer)))
    if refused:
        return Check("permissions", False, _missing(user, refused, values))
    return Check("permissions", True, f"'{user}' may run all {len(calls)} commands the monitor sends")


def _flattened(sent: list[list[str]]) -> list[str]:
    return [word for words in sent for word in (str(len(words)), *words)]


def _missing(user: str, refused: list[tuple[rights.Call, str]], values: dict[str, str]) -> str:
    """What to add, once each: the command on its keys, the right that allows it, what needs it."""
    wanted: dict[str, str] = {}
    for call, why in refused:
        keys = " ".join(f"'{display_name(values[role])}'" for role in call.roles)
        name = " ".join(call.words[:2]) if call.token.count("|") else call.words[0]
        sent = f"{name} on {keys}" if keys else name
        wanted.setdefault(sent, f"add {call.token}: {call.why}{' (' + why + ')' if why else ''}")
    listed = "; ".join(f"{sent} ({what})" for sent, what in wanted.items())
    return (
        f"'{user}' is not allowed: {listed}. {rights.MONITOR.capitalize()} in {rights.SECURITY_DOC} has them"
    )


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, bytes | str):
        return list(text(value).split())
    return list(value) if isinstance(value, list | tuple | set) else [value]


def _permissions_before_dryrun(client: Client, user: str, asked: bool) -> Check:
    try:
        rules: Any = client.acl_getuser(user) or {}
    except redis.exceptions.ResponseError as exc:  # the monitor's own rule does not grant ACL GETUSER
        return Check(
            "permissions",
            False,
            f"not verified: Redis < 7.0 tells a user's rights only to an administrator ({exc}); to verify "
            f"'{user}', run `check --user {user}` signed in as one",
            skipped=not asked,
        )
    # Decided from the flags (redis-py reports `+@all` under categories, not commands): every command and
    # every key, and no `-` rule taking any back (`+@all -hset` still reports categories ['+@all']).
    flags = {text(flag) for flag in rules.get("flags", [])}
    rule_words = [text(word) for field in ("commands", "categories") for word in _as_list(rules.get(field))]
    taken_back = [word for word in rule_words if word.startswith("-")]
    if {"allcommands", "allkeys"} <= flags and not taken_back:
        return Check("permissions", True, f"'{user}' may run every command on every key")
    return Check(
        "permissions",
        False,
        f"'{user}' is restricted and Redis < 7.0 has no ACL DRYRUN to verify it: compare its rules with "
        f"{rights.MONITOR} in {rights.SECURITY_DOC}",
    )
