"""Operating on the dead-letter stream: list, show, replay into the main stream, purge."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from handler.keys import StreamKeys
from handler.reclaim.dead_letter import METADATA_FIELD_COUNT, REPLAY_LUA, split_dead_letter
from handler.reclaim.rules import next_id
from handler.transport.client import Client, command

REPLAY_BATCH = 100  # dead letters moved per atomic script call


@dataclass(frozen=True)
class DeadLetterEntry:
    entry_id: bytes
    metadata: dict[bytes, bytes]
    original: list[bytes]

    def row(self) -> dict[str, Any]:
        """A JSON-friendly summary line."""
        meta = {k.decode().removeprefix("dlq:"): v.decode(errors="replace") for k, v in self.metadata.items()}
        return {"id": self.entry_id.decode(), **meta, "fields": len(self.original) // 2}


def _parse(entries: Sequence[Any]) -> list[DeadLetterEntry]:
    parsed = []
    for entry_id, fields in entries:
        metadata, original = split_dead_letter(list(fields))
        parsed.append(DeadLetterEntry(entry_id, metadata, original))
    return parsed


def list_dead_letters(
    client: Client, keys: StreamKeys, count: int, newest_first: bool
) -> list[DeadLetterEntry]:
    scan = (
        ("XREVRANGE", keys.dead_letter, "+", "-") if newest_first else ("XRANGE", keys.dead_letter, "-", "+")
    )
    return _parse(command(client, *scan, "COUNT", count))


def show_dead_letter(client: Client, keys: StreamKeys, entry_id: str) -> DeadLetterEntry | None:
    entries = _parse(command(client, "XRANGE", keys.dead_letter, entry_id, entry_id))
    return entries[0] if entries else None


def all_ids(client: Client, keys: StreamKeys, batch: int = 1000) -> Iterator[list[bytes]]:
    """Every dead letter's ID, a batch at a time, oldest first."""
    start: bytes | str = "-"
    while True:
        entries = command(client, "XRANGE", keys.dead_letter, start, "+", "COUNT", batch)
        if not entries:
            return
        ids = [entry_id for entry_id, _ in entries]
        yield ids
        start = next_id(ids[-1])


def replay(
    client: Client,
    keys: StreamKeys,
    ids: Sequence[bytes | str],
    progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Move dead letters back to the main stream, REPLAY_BATCH per atomic step; returns how many moved."""
    moved = 0
    for start in range(0, len(ids), REPLAY_BATCH):
        batch = list(ids[start : start + REPLAY_BATCH])
        moved += int(
            command(
                client, "EVAL", REPLAY_LUA, 2, keys.dead_letter, keys.stream, METADATA_FIELD_COUNT, *batch
            )
        )
        progress(len(batch))
    return moved


def purge(client: Client, keys: StreamKeys, ids: Sequence[bytes | str]) -> int:
    removed = 0
    for start in range(0, len(ids), 1000):
        removed += int(client.xdel(keys.dead_letter, *ids[start : start + 1000]))
    return removed
