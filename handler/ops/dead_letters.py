"""Operating on the dead-letter stream: list, show, replay into the main stream, purge.

Both layouts of a dead letter (reclaim/dead_letter.py) are read here: a continued one is shown, replayed and
purged together with its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from handler.errors import MonitorError
from handler.keys import StreamKeys
from handler.reclaim.dead_letter import (
    CONTINUED,
    FIELD_COUNT,
    INLINE,
    PARTS,
    is_part,
    join_parts,
    split_dead_letter,
)
from handler.reclaim.rules import next_id
from handler.transport.client import Client, command, server_holding, text

REPLAY_ATTEMPTS = 100  # a replay that keeps meeting concurrent changes gives up with a message
PURGE_BATCH = 1000


@dataclass(frozen=True)
class DeadLetterEntry:
    entry_id: bytes
    metadata: dict[bytes, bytes]
    original: list[bytes]  # for a continued dead letter, filled in only when its parts were read
    part_ids: list[bytes] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """A JSON-friendly summary line."""
        meta = {
            k.decode().removeprefix("dlq:"): v.decode(errors="replace")
            for k, v in self.metadata.items()
            if k not in (PARTS, FIELD_COUNT)
        }
        return {"id": self.entry_id.decode(), **meta, "fields": self.field_count}

    @property
    def field_count(self) -> int:
        return int(self.metadata.get(FIELD_COUNT, len(self.original) // 2))


def _heads(entries: Sequence[Any]) -> list[DeadLetterEntry]:
    """Dead letters from XRANGE's entries, leaving out the parts of continued ones."""
    parsed = []
    for entry_id, fields in entries:
        values = list(fields)
        if not is_part(values):
            metadata, original = split_dead_letter(values)
            parsed.append(DeadLetterEntry(entry_id, metadata, original))
    return parsed


def list_dead_letters(
    client: Client, keys: StreamKeys, count: int, newest_first: bool
) -> list[DeadLetterEntry]:
    """Up to `count` dead letters, oldest (or newest) first."""
    found: list[DeadLetterEntry] = []
    verb, start, end = ("XREVRANGE", b"+", b"-") if newest_first else ("XRANGE", b"-", b"+")
    while len(found) < count:
        entries = command(client, verb, keys.dead_letter, start, end, "COUNT", count)
        if not entries:
            break
        found += _heads(entries)
        last = entries[-1][0]
        if newest_first:
            if last in (b"0-0", b"0-1"):
                break
            start = _previous(last)
        else:
            start = next_id(last)
    return found[:count]


def _previous(entry_id: bytes) -> bytes:
    ms, _, seq = entry_id.partition(b"-")
    return b"%d-%d" % (int(ms), int(seq) - 1) if int(seq) else b"%d-%d" % (int(ms) - 1, 2**64 - 1)


def show_dead_letter(client: Client, keys: StreamKeys, entry_id: str | bytes) -> DeadLetterEntry | None:
    """One dead letter with every original field (a continued one's parts joined); None if there is none."""
    entries = command(client, "XRANGE", keys.dead_letter, entry_id, entry_id)
    heads = _heads(entries)
    if not heads:
        return None
    head = heads[0]
    if head.metadata.get(b"dlq:version") != CONTINUED:
        return head
    parts = command(
        client, "XRANGE", keys.dead_letter, next_id(head.entry_id), "+", "COUNT", int(head.metadata[PARTS])
    )
    original = join_parts(head.entry_id, head.metadata, parts)
    return DeadLetterEntry(head.entry_id, head.metadata, original, [part_id for part_id, _ in parts])


def all_ids(
    client: Client, keys: StreamKeys, batch: int = 1000, heads_only: bool = False
) -> Iterator[list[bytes]]:
    """Every entry ID of the dead-letter stream (or only the dead letters' own, without parts), a batch at a
    time, oldest first."""
    start: bytes | str = "-"
    while True:
        entries = command(client, "XRANGE", keys.dead_letter, start, "+", "COUNT", batch)
        if not entries:
            return
        yield [entry_id for entry_id, fields in entries if not (heads_only and is_part(list(fields)))]
        start = next_id(entries[-1][0])


def replay(
    client: Client,
    keys: StreamKeys,
    ids: Sequence[bytes | str],
    progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Move dead letters back to the main stream, each with exactly its original fields, removed from the
    dead-letter stream in the same transaction; returns how many moved.

    A transaction rather than a Lua script, because a big entry's fields do not fit one Lua call. WATCH on
    both streams makes it all-or-nothing against a concurrent replay or purge (which change the dead-letter
    stream) and a main stream that changes type; a dead letter already replayed is skipped.
    """
    node = server_holding(client, keys.dead_letter)  # both streams share one slot, so one node
    moved = 0
    for entry_id in ids:
        moved += _replay_one(node, keys, entry_id.encode() if isinstance(entry_id, str) else entry_id)
        progress(1)
    return moved


def _replay_one(node: redis.Redis, keys: StreamKeys, entry_id: bytes) -> int:
    with node.pipeline(transaction=True) as pipe:
        for _ in range(REPLAY_ATTEMPTS):
            try:
                pipe.watch(keys.dead_letter, keys.stream)  # type: ignore[no-untyped-call]
                letter = show_dead_letter(pipe, keys, entry_id)  # after WATCH, commands run at once
                if letter is None or letter.metadata.get(b"dlq:version") not in (INLINE, CONTINUED):
                    pipe.unwatch()
                    return 0
                kind = text(pipe.type(keys.stream))
                if kind not in ("stream", "none"):
                    raise MonitorError(f"cannot replay into '{keys.stream}': it holds a {kind}, not a stream")
                pipe.multi()
                command(pipe, "XADD", keys.stream, "*", *letter.original)
                command(pipe, "XDEL", keys.dead_letter, letter.entry_id, *letter.part_ids)
                pipe.execute()
                return 1
            except redis.exceptions.WatchError:
                continue
            except ValueError as exc:  # a continued dead letter missing parts: left for a person to look at
                raise MonitorError(f"cannot replay {entry_id.decode()}: {exc}") from exc
    raise MonitorError(f"the dead-letter stream kept changing while replaying {entry_id.decode()}: try again")


def purge(client: Client, keys: StreamKeys, ids: Sequence[bytes | str]) -> int:
    """Delete dead letters for good, each with its parts; returns how many dead letters were removed."""
    removed = 0
    for start in range(0, len(ids), PURGE_BATCH):
        batch = list(ids[start : start + PURGE_BATCH])
        pipe = client.pipeline(transaction=False)
        for entry_id in batch:
            pipe.execute_command("XRANGE", keys.dead_letter, entry_id, entry_id)
        parts: list[bytes] = []
        for found in pipe.execute():
            for head in _heads(found):
                if head.metadata.get(b"dlq:version") == CONTINUED:
                    following = command(
                        client, "XRANGE", keys.dead_letter, next_id(head.entry_id), "+", "COUNT",
                        int(head.metadata[PARTS]),
                    )  # fmt: skip
                    parts += [
                        i for i, fields in following if is_part(list(fields)) and fields[1] == head.entry_id
                    ]
        removed += int(client.xdel(keys.dead_letter, *batch))
        if parts:
            client.xdel(keys.dead_letter, *parts)
    return removed
