"""Settings: the original Go monitor's names and meanings, defaults, and one clear message naming every bad
variable."""

from __future__ import annotations

import os

import pytest

from handler.dev.local_redis import LocalRedis, free_port
from handler.dev.samples import PIPELINE_NAMES
from handler.errors import SettingsError
from handler.keys import TWEET_KEY_PREFIX, StreamKeys, hash_tag_of
from handler.settings import MAX_DEAD_LETTER_MAXLEN, MonitorSettings, load_settings, split_host_port
from tests.cli import cli, env_for
from tests.pipeline import dead_letters, tweet
from tests.world import World

REQUIRED = {
    "REDIS_HOST": "myredis:10000",
    "STREAM_NAME": "tweets_stream",
    "STREAM_CONSUMER_GROUP_NAME": "redisearch_app_group",
    "MONITORING_CONSUMER_NAME": "monitoring_app",
    "MIN_IDLE_TIME_SEC": "10",
}
ALL_NAMES = [*REQUIRED, *MonitorSettings.model_fields]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_defaults_follow_the_original_go_monitor(env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert ("myredis", 10000) == settings.redis_address
    assert (
        settings.REDIS_TLS is True
    )  # the Go monitor always connected with TLS, as Azure Cache for Redis needs
    assert "" == settings.REDIS_PASSWORD.get_secret_value()
    assert 10 == settings.MAX_DELIVERIES
    assert 10_000 == settings.min_idle_ms
    assert 8080 == settings.FUNCTIONS_CUSTOMHANDLER_PORT
    assert settings.CYCLE_TIME_BUDGET_SEC < 20
    assert "INFO" == settings.LOG_LEVEL


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("myredis:10000", ("myredis", 10000)),
        ("myredis", ("myredis", 6379)),  # a missing port means 6379
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("[::1]:6380", ("::1", 6380)),
        ("[::1]", ("::1", 6379)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert expected == split_host_port(text)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("REDIS_HOST", "", "at least 1 character"),
        ("REDIS_HOST", "myredis:", "port after ':' is empty"),
        ("REDIS_HOST", "myredis:port", "not a number"),
        ("REDIS_HOST", "myredis:70000", "not a number from 1 to 65535"),
        ("REDIS_HOST", "::1:6379", "needs brackets"),
        ("REDIS_HOST", ":6379", "host part is empty"),
        ("REDIS_HOST", "my redis:6379", "without spaces"),
        ("STREAM_NAME", "", "at least 1 character"),
        ("STREAM_CONSUMER_GROUP_NAME", "", "at least 1 character"),
        ("MONITORING_CONSUMER_NAME", "", "at least 1 character"),
        ("MIN_IDLE_TIME_SEC", "", "valid integer"),
        ("MIN_IDLE_TIME_SEC", "ten", "valid integer"),
        ("MIN_IDLE_TIME_SEC", "-1", "greater than or equal to 0"),
        ("MIN_IDLE_TIME_SEC", "1.5", "valid integer"),
        ("MAX_DELIVERIES", "-3", "greater than or equal to 0"),
        ("REDIS_TLS", "maybe", "valid boolean"),
        ("RECLAIM_PAGE_SIZE", "0", "greater than or equal to 1"),
        ("RECLAIM_PAGE_SIZE", "1000000", "less than or equal to 10000"),
        ("CYCLE_TIME_BUDGET_SEC", "0", "greater than 0"),
        ("CYCLE_MAX_MESSAGES", "0", "greater than or equal to 1"),
        ("LOG_LEVEL", "LOUD", "Input should be"),
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "0", "greater than or equal to 1"),
        ("DEAD_LETTER_STREAM", "elsewhere", "must hash to the stream's slot"),
    ],
)
def test_a_bad_value_is_refused_with_its_name_and_why(
    env: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert name in message or name == "DEAD_LETTER_STREAM"
    assert reason in message


@pytest.mark.parametrize("name", list(REQUIRED))
def test_a_missing_required_variable_is_named(env: pytest.MonkeyPatch, name: str) -> None:
    env.delenv(name)
    with pytest.raises(SettingsError, match=f"{name}: is required but not set"):
        load_settings()


def test_every_bad_variable_is_named_in_one_message(env: pytest.MonkeyPatch) -> None:
    env.delenv("REDIS_HOST")
    env.setenv("MIN_IDLE_TIME_SEC", "-5")
    env.setenv("MAX_DELIVERIES", "x")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    for name in ("REDIS_HOST", "MIN_IDLE_TIME_SEC", "MAX_DELIVERIES"):
        assert name in str(refused.value)


def test_the_password_is_never_echoed(env: pytest.MonkeyPatch) -> None:
    env.setenv("REDIS_PASSWORD", "s3cret-Pa55")
    env.setenv("MIN_IDLE_TIME_SEC", "s3cret-Pa55")  # even when it lands in the wrong variable
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "s3cret-Pa55" not in str(refused.value)
    env.setenv("MIN_IDLE_TIME_SEC", "10")
    assert "s3cret-Pa55" not in repr(load_settings())


@pytest.mark.parametrize(
    ("stream", "tag"),
    [
        ("tweets_stream", "{tweets_stream}"),
        ("{tweets}:stream", "{tweets}:stream"),  # already tagged: keep its tag
        ("a{b}c", "a{b}c"),
        ("odd{}name", "{odd{}name}"),  # an empty {} is not a hash tag
    ],
)
def test_added_keys_share_the_streams_hash_tag(stream: str, tag: str) -> None:
    assert tag == hash_tag_of(stream)


def test_key_names(env: pytest.MonkeyPatch) -> None:
    keys = StreamKeys.from_settings(load_settings())
    assert "{tweets_stream}:dead-letter" == keys.dead_letter
    assert keys.cursor.startswith("{tweets_stream}:")
    assert b"tweet:" == TWEET_KEY_PREFIX  # the processor's key prefix
    env.setenv("DEAD_LETTER_STREAM", "{tweets_stream}:poison")
    assert "{tweets_stream}:poison" == StreamKeys.from_settings(load_settings()).dead_letter


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("DEAD_LETTER_STREAM", "{stream}"),
        ("DEAD_LETTER_MAXLEN", "9223372036854775807"),
        ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem"),
        ("REDIS_TIMEOUT_SEC", "nan"),
        ("CYCLE_TIME_BUDGET_SEC", "inf"),
        ("DELETE_IDLE_CONSUMERS_AFTER_SEC", "inf"),
        ("DELETE_IDLE_CONSUMERS_AFTER_SEC", "nan"),
        ("LEASE_TTL_SEC", "nan"),
        ("MAX_DELIVERIES", "-1"),
        ("CYCLE_MAX_MESSAGES", "99999999999999999999"),
        ("MIN_IDLE_TIME_SEC", "99999999999999"),
    ],
)
def test_settings_that_cannot_work_exit_2_naming_the_setting(
    redis_8: LocalRedis, names: dict[str, str], setting: str, value: str
) -> None:
    value = value.replace("{stream}", names["STREAM_NAME"])
    done = cli(
        env_for(
            redis_8,
            names,
            REDIS_TLS="true" if setting == "REDIS_TLS_CA_FILE" else "false",
            **{setting: value},
        ),
        "reclaim",
    )
    assert 2 == done.returncode, done.stdout + done.stderr
    assert setting in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_dead_letter_maxlen_at_its_bound_still_dead_letters(world8: World) -> None:
    world8.abandon([tweet(n, id="") for n in range(2)])
    summary = world8.run(DEAD_LETTER_MAXLEN=MAX_DEAD_LETTER_MAXLEN)
    assert 2 == summary.counts.dead_lettered
    assert 2 == len(dead_letters(world8.client, world8.keys.dead_letter))


def test_an_ipv6_host_is_printed_in_brackets(names: dict[str, str]) -> None:
    port = free_port()
    env = dict(
        os.environ,
        REDIS_HOST=f"[::1]:{port}",
        REDIS_TLS="false",
        REDIS_TIMEOUT_SEC="0.5",
        MIN_IDLE_TIME_SEC="10",
        **names,
    )
    done = cli(env, "reclaim")
    assert 1 == done.returncode
    assert f"[::1]:{port}" in done.stderr, done.stderr
    checked = cli(env, "check")
    assert f"[::1]:{port}" in checked.stdout, checked.stdout


def test_dead_letter_stream_in_the_pattern_is_refused(redis_8: LocalRedis, names: dict[str, str]) -> None:
    stream = names["STREAM_NAME"]
    taken = cli(env_for(redis_8, names, DEAD_LETTER_STREAM=stream), "reclaim")
    assert 2 == taken.returncode and "DEAD_LETTER_STREAM" in taken.stderr, taken.stderr


def test_a_connection_string_in_redis_host_is_named_and_its_key_never_echoed(redis_8: LocalRedis) -> None:
    key = "Zm9vYmFyc2VjcmV0a2V5MTIzNDU2Nzg5MA=="
    pasted = f"mycache.redis.cache.windows.net:6380,password={key},ssl=True,abortConnect=False"
    done = cli(redis_8, "reclaim", REDIS_HOST=pasted)
    assert 2 == done.returncode
    assert key not in done.stdout + done.stderr
    assert "password=" not in done.stderr
    assert "connection string" in done.stderr
    for setting in ("REDIS_HOST=mycache.redis.cache.windows.net:6380", "REDIS_PASSWORD", "REDIS_TLS"):
        assert setting in done.stderr


@pytest.mark.parametrize(
    "pasted",
    [
        "mycache.redis.cache.windows.net:6380,password={key},ssl=True,abortConnect=False",
        "rediss://:{key}@mycache.redis.cache.windows.net:6380/0?ssl_cert_reqs=required",
        "monitor:{key}@mycache.redis.cache.windows.net:6380",
    ],
)
def test_no_form_of_a_pasted_key_is_echoed(pasted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the operator reads at start (load_settings' message), for a connection string and two URLs."""
    key = "Zm9vYmFyc2VjcmV0a2V5MTIzNDU2Nzg5MA=="
    for name, value in {
        **PIPELINE_NAMES,
        "MIN_IDLE_TIME_SEC": "10",
        "REDIS_HOST": pasted.format(key=key),
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "REDIS_PASSWORD" in str(refused.value)
    assert key[:12] not in str(refused.value)
