"""`check`: every line a verdict (PASS, FAIL, WARN, SKIP), never a traceback, whatever Redis answers; the
rights of the monitor's user, or of another user verified by an administrator (`--user`)."""

from __future__ import annotations

import subprocess

import pytest
import redis

from handler.dev.local_redis import LocalRedis, free_port
from handler.dev.redis_binaries import BINARIES
from handler.dev.samples import GROUP, STREAM
from tests.acl import add_user, readme_rule_for, user_without_scan
from tests.cli import cli, env_for
from tests.pipeline import (
    command,
    create_group,
)

VERDICTS = ("PASS ", "FAIL ", "WARN ", "SKIP ")


def _assert_every_line_has_a_verdict(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and all(line.startswith(VERDICTS) for line in lines), done.stdout


def test_check_verifies_pruning_commands_when_pruning_is_on(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "readme2-" + stream[-6:], readme_rule_for(stream))
    off = cli(env_for(redis_8, names, **login), "check")
    on = cli(env_for(redis_8, names, DELETE_IDLE_CONSUMERS_AFTER_SEC="60", **login), "check")
    assert 0 == off.returncode, off.stdout + off.stderr
    assert 1 == on.returncode, on.stdout + on.stderr
    assert "XINFO" in on.stdout and "DELETE_IDLE_CONSUMERS_AFTER_SEC" in on.stdout, on.stdout


def test_check_without_scan_for_a_pattern_reports_it(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    login = user_without_scan(client8, names, "cnoscan-")
    done = cli(env_for(redis_8, {**names, "STREAM_NAME": stream + ":*"}, **login), "check")
    _assert_every_line_has_a_verdict(done)
    assert 1 == done.returncode
    assert any(line.startswith("FAIL") and "SCAN" in line for line in done.stdout.splitlines()), done.stdout


def test_check_without_info_and_cluster_off_reports_it(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "cnoinfo-" + stream[-6:], readme_rule_for(stream).replace(" +info", ""))
    done = cli(env_for(redis_8, names, REDIS_CLUSTER="off", **login), "check")
    _assert_every_line_has_a_verdict(done)
    reported = [line for line in done.stdout.splitlines() if line.startswith(("FAIL", "WARN", "SKIP"))]
    assert any("INFO" in line for line in reported), done.stdout


def test_check_user_verifies_another_user_with_an_administrators_login(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    good = "good-" + stream[-6:]
    add_user(client8, good, readme_rule_for(stream))
    bad = "bad-" + stream[-6:]
    add_user(client8, bad, readme_rule_for(stream).replace(" +xclaim", ""))
    as_admin = env_for(redis_8, names)
    for user, verdict in ((good, "PASS"), (bad, "FAIL")):
        done = cli(as_admin, "check", "--user", user)
        _assert_every_line_has_a_verdict(done)
        permissions = [line for line in done.stdout.splitlines() if "permissions" in line]
        assert permissions and permissions[0].startswith(verdict) and f"'{user}'" in permissions[0], (
            done.stdout
        )
    assert "XCLAIM" in cli(as_admin, "check", "--user", bad).stdout


def test_check_never_advises_running_itself_as_an_administrator(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "nodry-" + stream[-6:], readme_rule_for(stream))
    done = cli(env_for(redis_8, names, **login), "check")
    _assert_every_line_has_a_verdict(done)
    assert "PASS  permissions" in done.stdout, done.stdout  # verified itself, no administrator asked for


def test_check_user_fails_when_it_cannot_verify_or_the_user_does_not_exist(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    missing = cli(env_for(redis_8, names), "check", "--user", "nobody-" + stream[-6:])
    _assert_every_line_has_a_verdict(missing)
    line = next(x for x in missing.stdout.splitlines() if "permissions" in x)
    assert line.startswith("FAIL") and "there is no user" in line and 1 == missing.returncode, missing.stdout
    login = add_user(client8, "notadmin-" + stream[-6:], readme_rule_for(stream))
    unverified = cli(env_for(redis_8, names, **login), "check", "--user", login["REDIS_USERNAME"])
    line = next(x for x in unverified.stdout.splitlines() if "permissions" in x)
    assert line.startswith("FAIL") and 1 == unverified.returncode, unverified.stdout


def test_check_fails_pruning_when_the_deletion_is_not_allowed(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str]
) -> None:
    stream = names["STREAM_NAME"]
    create_group(client8, stream, names["STREAM_CONSUMER_GROUP_NAME"])
    login = add_user(client8, "noprune-" + stream[-6:], readme_rule_for(stream) + " +xinfo|consumers")
    done = cli(env_for(redis_8, names, DELETE_IDLE_CONSUMERS_AFTER_SEC="60", **login), "check")
    line = next(x for x in done.stdout.splitlines() if "consumer pruning" in x)
    assert line.startswith("FAIL") and "DELCONSUMER" in line, done.stdout


@pytest.mark.parametrize("version", ["6.0", "6.2"])
def test_check_passes_a_user_with_every_right_on_redis_6(version: str) -> None:
    server = LocalRedis(BINARIES[version]())
    server.start()
    try:
        with server.client() as client:
            create_group(client, STREAM, GROUP)
            command(client, "ACL", "SETUSER", "almost", "on", ">pw", "~*", "+@all", "-hset")
        everything = cli(server, "check")
        assert 0 == everything.returncode, everything.stdout
        assert "PASS  permissions" in everything.stdout
        almost = cli(server, "check", REDIS_USERNAME="almost", REDIS_PASSWORD="pw")
        assert 1 == almost.returncode, almost.stdout
        assert "FAIL  permissions" in almost.stdout
    finally:
        server.cleanup()


def test_check_passes_on_a_ready_deployment_and_names_what_fails(
    redis_8: LocalRedis, group: redis.Redis
) -> None:
    done = cli(redis_8, "check")
    assert 0 == done.returncode, done.stdout
    # settings, connectivity, replicas, authentication, server version, stream and group, dead-letter
    # stream, permissions; and a WARN: no scheduled cycle recorded yet (the heartbeat)
    assert 8 == done.stdout.count("PASS"), done.stdout
    assert 1 == done.stdout.count("WARN  last completed cycle"), done.stdout
    missing = cli(redis_8, "check", STREAM_CONSUMER_GROUP_NAME="no_such_group")
    assert 1 == missing.returncode
    assert "FAIL  stream and group: no group 'no_such_group'" in missing.stdout
    unreachable = cli(redis_8, "check", REDIS_HOST=f"127.0.0.1:{free_port()}", REDIS_TIMEOUT_SEC="1")
    assert 1 == unreachable.returncode
    assert "FAIL  connectivity" in unreachable.stdout
    command(group, "ACL", "SETUSER", "narrow", "on", ">pw", "~*", "+@all", "-hset")
    narrow = cli(redis_8, "check", REDIS_USERNAME="narrow", REDIS_PASSWORD="pw")
    assert 1 == narrow.returncode
    assert "FAIL  permissions: 'narrow' is not allowed: HSET" in narrow.stdout
