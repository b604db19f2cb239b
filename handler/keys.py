"""Every Redis key name the monitor uses, derived in one place from the settings.

Keys the monitor adds live in the stream's hash slot (same hash tag), so a Lua script or MULTI can change
them together with the stream even on Redis Cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from handler.settings import MonitorSettings

TWEET_KEY_PREFIX = b"tweet:"  # the processor's key: this, then the id field's bytes unchanged
DEAD_LETTER_SUFFIX = ":dead-letter"  # after the stream's hash tag: {tweets_stream}:dead-letter


def hash_tag_of(stream: str) -> str:
    """`{stream}`, or the stream name itself when it already carries a `{…}` hash tag."""
    start = stream.find("{")
    if start != -1:
        end = stream.find("}", start + 1)
        if end > start + 1:  # Redis ignores an empty tag "{}"
            return stream
    return "{" + stream + "}"


def key_name(raw: bytes) -> str:
    """A key name read from Redis, as str; bytes that are not UTF-8 survive (surrogateescape), so the name
    goes back to Redis as the same key."""
    return raw.decode("utf-8", "surrogateescape")


def raw_name(name: str) -> bytes:
    """The key's own bytes, for redis-py, whose hiredis packer encodes str strictly as UTF-8."""
    return name.encode("utf-8", "surrogateescape")


def display_name(name: str) -> str:
    """A key name for people, logs, summaries and metric labels: bytes that are not UTF-8 shown as \\xff."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# C0 and C1 control characters and DEL, the invisible marks that reorder a line (bidirectional overrides,
# isolates and marks), and the Unicode line and paragraph separators: never sent to a terminal as they are.
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
LATIN_1_END = 0x100  # below it an escape is \xNN, from it \uNNNN


def visible(value: str | bytes) -> str:
    """A value from Redis as text for people: bytes that are not UTF-8 and control characters shown as
    escapes (`\\xff`, `\\x1b`, `\\u202e`), so the terminal shows them instead of obeying them."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")  # key_name
    return _INVISIBLE.sub(_escape, raw.decode("utf-8", "backslashreplace"))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < LATIN_1_END else f"\\u{code:04x}"


def is_dead_letter_stream(name: str) -> bool:
    """`{tweets_stream:0}:dead-letter`, the monitor's own stream, which a broad pattern would also match."""
    if not name.endswith(DEAD_LETTER_SUFFIX):
        return False
    source = name.removesuffix(DEAD_LETTER_SUFFIX)
    return source.startswith("{") and hash_tag_of(source) == source


@dataclass(frozen=True)
class StreamKeys:
    stream: str
    group: str
    consumer: str
    dead_letter: str
    cursor: str
    lease: str
    last_refusal: str
    last_cycle: str  # the heartbeat (reclaim/heartbeat.py)

    @classmethod
    def from_settings(cls, settings: MonitorSettings, stream: str | None = None) -> StreamKeys:
        """The keys of `stream`, or of the one stream STREAM_NAME names (SettingsError if it lists more)."""
        stream = stream or settings.single_stream
        tag = hash_tag_of(stream)
        return cls(
            stream=stream,
            group=settings.STREAM_CONSUMER_GROUP_NAME,
            consumer=settings.MONITORING_CONSUMER_NAME,
            dead_letter=settings.DEAD_LETTER_STREAM or tag + DEAD_LETTER_SUFFIX,
            cursor=f"{tag}:cursor:{settings.STREAM_CONSUMER_GROUP_NAME}",
            lease=f"{tag}:lease:{settings.STREAM_CONSUMER_GROUP_NAME}",
            last_refusal=f"{tag}:last-refusal:{settings.STREAM_CONSUMER_GROUP_NAME}",
            last_cycle=f"{tag}:last-cycle:{settings.STREAM_CONSUMER_GROUP_NAME}",
        )
