"""The group at a glance: the XPENDING view an operator would type by hand, made useful (`status`).

Fast on a pending list of millions: XPENDING's summary gives the per-consumer counts; each consumer's oldest
idle time and highest delivery count are read from a sample, its SAMPLE_PER_CONSUMER oldest pending entries
(one bounded XPENDING per consumer), never from the whole list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from handler.errors import StreamOrGroupMissingError
from handler.keys import StreamKeys
from handler.ops.rights import needs
from handler.reclaim import heartbeat
from handler.transport.client import Client, command, server_holding, text

SAMPLE_PER_CONSUMER = 1000
SEARCH_INDEX = "tweets-index"
DEAD_LETTER_WARNING_RATIO = 0.9  # of DEAD_LETTER_MAXLEN, when a cap is set


@dataclass
class ConsumerStatus:
    name: str
    pending: int
    idle_ms: int  # since the consumer last read or claimed (XINFO CONSUMERS)
    oldest_pending_idle_ms: int | None = None  # the longest idle among the sampled oldest entries
    highest_deliveries: int | None = None  # the highest delivery count among them


@dataclass
class GroupStatus:
    stream: str
    group: str
    pending: int
    consumers: list[ConsumerStatus]
    idle_consumers_without_pending: list[str]
    dead_letter_stream: str
    dead_letter_length: int
    dead_letter_maxlen: int
    lag: int | None  # entries not yet delivered to the group (Redis 7.0+), None where unknown
    search_documents: int | None  # documents in tweets-index, None without the search module or index
    last_refusal: str | None = None  # the monitor's latest refused attempt (kept for a day), if any
    last_cycle_age_sec: float | None = None  # since the last scheduled cycle completed; None: none recorded
    sample_per_consumer: int = SAMPLE_PER_CONSUMER
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return {text(k): v for k, v in zip(flat[::2], flat[1::2], strict=False)}


def find_group(client: Client, keys: StreamKeys) -> dict[str, Any] | None:
    """The group's XINFO GROUPS row, None when the stream has no such group (ResponseError: no stream)."""
    with needs("XINFO", "GROUPS", key=keys.stream):
        groups = client.xinfo_groups(keys.stream)
    for group in groups:
        if text(group["name"]) == keys.group:
            return dict(group)
    return None


def gather_status(
    client: Client,
    keys: StreamKeys,
    dead_letter_maxlen: int = 0,
    dead_letter_warn_at: int = 10_000,
    stale_after_sec: float = 300,
) -> GroupStatus:
    with needs("TYPE", key=keys.stream):
        kind = text(client.type(keys.stream))
    if kind == "none":  # XINFO GROUPS would answer only "no such key"
        raise StreamOrGroupMissingError(
            f"stream '{keys.stream}' does not exist: check STREAM_NAME, or create it with its group as the "
            "processor does (XGROUP CREATE … MKSTREAM)"
        )
    group = find_group(client, keys)
    if group is None:
        raise StreamOrGroupMissingError(
            f"stream '{keys.stream}' has no consumer group '{keys.group}': create it as the processor does "
            "(XGROUP CREATE … MKSTREAM)"
        )
    with needs("XPENDING", key=keys.stream):
        summary = command(client, "XPENDING", keys.stream, keys.group)
    consumers = []
    idle_empty = []
    with needs("XINFO", "CONSUMERS", key=keys.stream):
        infos = client.xinfo_consumers(keys.stream, keys.group)
    for info in infos:
        name = text(info["name"])
        status = ConsumerStatus(name, int(info["pending"]), int(info["idle"]))
        if status.pending:
            rows = command(client, "XPENDING", keys.stream, keys.group, "-", "+", SAMPLE_PER_CONSUMER, name)
            status.oldest_pending_idle_ms = max(row[2] for row in rows) if rows else None
            status.highest_deliveries = max(row[3] for row in rows) if rows else None
            consumers.append(status)
        else:
            idle_empty.append(name)
    consumers.sort(key=lambda c: -c.pending)
    warnings: list[str] = []
    with needs("TYPE", key=keys.dead_letter):
        dead_letter_kind = text(client.type(keys.dead_letter))
    with needs("XLEN", key=keys.dead_letter):
        dead = int(client.xlen(keys.dead_letter)) if dead_letter_kind == "stream" else 0
    if dead_letter_kind not in ("stream", "none"):
        warnings.append(
            f"'{keys.dead_letter}' holds a {dead_letter_kind}, not a stream: no entry can be dead-lettered "
            "(they stay pending); rename or delete that key"
        )
    lag = group.get("lag")
    result = GroupStatus(
        stream=keys.stream,
        group=keys.group,
        pending=int(summary[0]),
        consumers=consumers,
        idle_consumers_without_pending=idle_empty,
        dead_letter_stream=keys.dead_letter,
        dead_letter_length=dead,
        dead_letter_maxlen=dead_letter_maxlen,
        lag=int(lag) if lag is not None else None,
        search_documents=_search_documents(client),
        last_refusal=_last_refusal(client, keys),
        last_cycle_age_sec=_last_cycle_age(client, keys),
        warnings=warnings,
    )
    if result.last_cycle_age_sec is None:
        warnings.append("no scheduled cycle has been recorded yet (the timer, or `run`, records each one)")
    elif result.last_cycle_age_sec > stale_after_sec:
        warnings.append(
            f"the last scheduled cycle completed {result.last_cycle_age_sec:,.0f} s ago "
            f"(SWEEP_STALE_AFTER_SEC={stale_after_sec:g}): is the timer still running?"
        )
    warnings += _memory_warnings(server_holding(client, keys.stream))
    if result.last_refusal:
        warnings.append(f"the monitor's last refused attempt: {result.last_refusal}")
    if dead >= dead_letter_warn_at:
        warnings.append(
            f"the dead-letter stream holds {dead:,} dead letters (DEAD_LETTER_WARN_AT="
            f"{dead_letter_warn_at:,}): look at them with `dead-letter list`, then replay or purge them"
        )
    if dead_letter_maxlen and dead >= DEAD_LETTER_WARNING_RATIO * dead_letter_maxlen:
        result.warnings.append(
            f"the dead-letter stream holds {dead:,} of at most about {dead_letter_maxlen:,} entries "
            "(DEAD_LETTER_MAXLEN): the oldest are being trimmed; replay or purge them"
        )
    return result


def _last_refusal(client: Client, keys: StreamKeys) -> str | None:
    with needs("GET", key=keys.last_refusal):
        return _text_or_none(client.get(keys.last_refusal))


def _last_cycle_age(client: Client, keys: StreamKeys) -> float | None:
    with needs("EVAL", key=keys.last_cycle, inside=("TIME", "GET")):
        return heartbeat.seconds_since(client, keys.last_cycle)


def _text_or_none(value: object) -> str | None:
    return None if value is None else text(value)


def _memory_warnings(client: Client) -> list[str]:
    """Redis at its memory limit with nothing to evict refuses every write that needs memory (OOM)."""
    try:
        memory = dict(client.info("memory"))
    except redis.exceptions.ResponseError:  # INFO not allowed for this user
        return []
    limit, used = int(memory.get("maxmemory", 0)), int(memory.get("used_memory", 0))
    if limit and used >= limit and str(memory.get("maxmemory_policy", "")) == "noeviction":
        return [
            f"Redis is out of memory ({used:,} of maxmemory {limit:,} bytes, noeviction): it refuses "
            "writes (OOM), so reclaimed entries stay pending until memory is freed"
        ]
    return []


def _search_documents(client: Client) -> int | None:
    try:
        info = command(client, "FT.INFO", SEARCH_INDEX)
    except redis.exceptions.ResponseError:  # no search module, or no such index
        return None
    pairs = _pairs(list(info)) if isinstance(info, list) else {str(k): v for k, v in dict(info).items()}
    return int(pairs["num_docs"]) if "num_docs" in pairs else None
