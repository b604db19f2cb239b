"""`reclaim --dry-run`: what a cycle would claim, write, dead-letter and acknowledge, changing nothing.

It walks the same pages from the same cursor as the cycle, with the same pure decisions (reclaim/rules.py),
but only reads: XPENDING for the pages, XRANGE for the entries, TYPE for the tweet keys it would write.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from handler.keys import StreamKeys
from handler.reclaim.cursor import read_cursor
from handler.reclaim.rate import ClaimPacer
from handler.reclaim.rules import END, DeadLetter, DeadLetterReason, claimable_ids, decide, parse_pending_rows
from handler.reclaim.walk import Walk
from handler.settings import MonitorSettings
from handler.transport.client import Client, command


@dataclass
class DryRunReport:
    pending: int = 0
    would_claim: int = 0
    would_write: int = 0
    would_dead_letter: dict[str, int] = field(default_factory=dict)
    would_acknowledge_deleted: int = 0
    not_idle_long_enough: int = 0
    pages: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)  # the first few decisions, for people

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dry_run(client: Client, settings: MonitorSettings, examples: int = 10) -> DryRunReport:
    keys = StreamKeys.from_settings(settings)
    report = DryRunReport(pending=int(command(client, "XPENDING", keys.stream, keys.group)[0]))
    if not report.pending:
        return report
    deadline = time.monotonic() + settings.CYCLE_TIME_BUDGET_SEC
    page_size = ClaimPacer(settings.RECLAIM_MAX_RATE).page_size(settings.RECLAIM_PAGE_SIZE)
    dead: Counter[str] = Counter()
    walk = Walk(read_cursor(client, keys.cursor), settings.CYCLE_MAX_MESSAGES)
    page_seconds = 0.0  # the longest page so far, as the cycle judges its budget (here: reading it)
    while not walk.reason_to_stop(time.monotonic(), page_seconds, deadline):
        count = walk.next_count(page_size)
        if count <= 0:
            break
        began = time.monotonic()
        rows = parse_pending_rows(
            command(client, "XPENDING", keys.stream, keys.group, walk.start, END, count)
        )
        _judge_page(client, keys, settings, rows, report, dead, examples)
        page_seconds = max(page_seconds, time.monotonic() - began)
        if walk.advance(rows, count):
            break
    report.pages = walk.pages
    report.would_dead_letter = dict(dead)
    return report


def _judge_page(
    client: Client,
    keys: StreamKeys,
    settings: MonitorSettings,
    rows: list[Any],
    report: DryRunReport,
    dead: Counter[str],
    examples: int,
) -> None:
    ids = claimable_ids(rows, settings.min_idle_ms)
    report.not_idle_long_enough += len(rows) - len(ids)
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(keys.stream, entry_id, entry_id)
    entries = pipe.execute()
    deliveries = {row.entry_id: row.deliveries for row in rows}
    decisions: list[tuple[bytes, bytes | DeadLetter]] = []
    for entry_id, found in zip(ids, entries, strict=True):
        if not found:
            report.would_acknowledge_deleted += 1
            continue
        report.would_claim += 1
        decisions.append((entry_id, decide(list(found[0][1]), deliveries[entry_id], settings.MAX_DELIVERIES)))
    keys_to_write = [d for _, d in decisions if isinstance(d, bytes)]
    pipe = client.pipeline(transaction=False)
    for key in keys_to_write:
        pipe.type(key)
    types = dict(zip(keys_to_write, pipe.execute(), strict=True))
    for entry_id, planned in decisions:
        decision = planned
        if isinstance(planned, bytes) and types[planned] not in (b"hash", b"none", "hash", "none"):
            decision = DeadLetter(DeadLetterReason.WRITE_FAILED, f"{planned!r} holds a {types[planned]!r}")
        if isinstance(decision, bytes):
            report.would_write += 1
            what = f"HSET {decision.decode(errors='replace')}"
        else:
            dead[decision.reason.value] += 1
            what = f"dead-letter ({decision.reason.value}): {decision.detail}"
        if len(report.examples) < examples:
            report.examples.append({"id": entry_id.decode(), "action": what})
