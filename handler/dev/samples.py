"""The pipeline's names, a sample tweet and the host's timer request, shared by the demo, the tests and the
benchmarks so that each says them once."""

from __future__ import annotations

from typing import Any

STREAM, GROUP, MONITOR = "tweets_stream", "redisearch_app_group", "monitoring_app"
# The settings that name them, as the pipeline's own deployment sets them.
PIPELINE_NAMES = {
    "STREAM_NAME": STREAM,
    "STREAM_CONSUMER_GROUP_NAME": GROUP,
    "MONITORING_CONSUMER_NAME": MONITOR,
}
FIRST_TWEET_ID = 1_394_000_000_000_000_000  # a 2021 tweet id: 19 digits, as Twitter's are
USERS = ["john", "joanna", "priya", "arjun", "maria", "li"]
PLACES = ["India", "Mumbai, India", "London", "Berlin", "São Paulo", "Tokyo"]
TAGS = ["Medicine", "hello,world", "", "MedTech", "covid19,Medicine"]


def tweet_id(number: int) -> bytes:
    return b"%d" % (FIRST_TWEET_ID + number)


def sample_tweet(number: int, **changes: str) -> dict[str, str]:
    """A tweet as the producer writes it: string values, fields in alphabetical order (`id` second);
    `changes` replace values in place (or add fields at the end)."""
    return {
        "hashtags": TAGS[number % len(TAGS)],
        "id": tweet_id(number).decode(),
        "location": PLACES[number % len(PLACES)],
        "text": f"hello world, tweet number {number}",
        "user": USERS[number % len(USERS)],
        **changes,
    }


def tweet(number: int, **changes: str) -> list[bytes]:
    """The same as the flat field list XADD takes: `id` is the fourth item, its value the fourth."""
    return [part.encode() for pair in sample_tweet(number, **changes).items() for part in pair]


def timer(schedule_status: Any = None, is_past_due: bool = False) -> dict[str, Any]:
    """The `req` timer binding's value in the host's request."""
    return {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": schedule_status, "IsPastDue": is_past_due}


def timer_envelope(timer_value: Any = None, **metadata: Any) -> dict[str, Any]:
    """The host's invocation request for the `req` timer binding of monitor/function.json."""
    sys_metadata = {
        "MethodName": "monitor",
        "UtcNow": "2024-11-30T14:43:50.46239Z",
        "RandGuid": "fa3b2fbc-26ed-4fcb-be75-82db8773b519",
    }
    return {
        "Data": {"req": timer() if timer_value is None else timer_value},
        "Metadata": {"sys": sys_metadata, **metadata},
    }
