"""What the CLI shows people: rich tables on a terminal, progress bars only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from handler.ops.dead_letter_tools import DeadLetterEntry
from handler.ops.dry_run import DryRunReport
from handler.ops.status import GroupStatus

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _seconds(ms: int | None) -> str:
    return "—" if ms is None else f"{ms / 1000:,.1f} s"


def status_table(status: GroupStatus) -> None:
    out.print(f"[bold]{status.stream}[/] / [bold]{status.group}[/]: {status.pending:,} pending")
    table = Table("consumer", "pending", "oldest idle*", "most deliveries*", "last seen")
    for consumer in status.consumers:
        table.add_row(
            consumer.name,
            f"{consumer.pending:,}",
            _seconds(consumer.oldest_pending_idle_ms),
            str(consumer.highest_deliveries or "—"),
            _seconds(consumer.idle_ms) + " ago",
        )
    out.print(table)
    out.print(f"* over each consumer's {status.sample_per_consumer:,} oldest pending entries")
    if status.idle_consumers_without_pending:
        out.print(f"consumers with nothing pending: {len(status.idle_consumers_without_pending)}")
    bound = f" (of about {status.dead_letter_maxlen:,})" if status.dead_letter_maxlen else ""
    out.print(f"dead letters in {status.dead_letter_stream}: {status.dead_letter_length:,}{bound}")
    out.print(
        f"lag (entries not yet delivered): {'unknown before Redis 7.0' if status.lag is None else status.lag}"
    )
    age = status.last_cycle_age_sec
    out.print(f"last completed cycle: {'none recorded' if age is None else f'{age:,.0f} s ago'}")
    documents = status.search_documents
    out.print(
        f"search index tweets-index: {'not found' if documents is None else f'{documents:,} documents'}"
    )
    for warning in status.warnings:
        err.print(f"[yellow]warning:[/] {warning}")


DEAD_LETTER_COLUMNS = ("dead letter", "original id", "reason", "deliveries", "when (UTC)", "detail")
MIN_DETAIL_WIDTH = 10


def dead_letter_rows(entries: list[DeadLetterEntry]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        meta = {
            k.decode().removeprefix("dlq:"): v.decode(errors="replace") for k, v in entry.metadata.items()
        }
        when = datetime.fromtimestamp(int(meta.get("time-ms", "0")) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((
            entry.entry_id.decode(), meta.get("original-id", "?"), meta.get("reason", "?"),
            meta.get("deliveries", "?"), when, " ".join(meta.get("detail", "").split()),
        ))  # fmt: skip
    return rows


def dead_letter_table(entries: list[DeadLetterEntry], terminal: bool) -> None:
    """Whole IDs always, so they can be pasted into `show` and `replay`. On a terminal: aligned columns,
    only the detail cut to the width left; piped: one tab-separated row per line, nothing cut."""
    rows = [DEAD_LETTER_COLUMNS, *dead_letter_rows(entries)]
    if not terminal:
        for row in rows:
            print("\t".join(row))
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(DEAD_LETTER_COLUMNS) - 1)]
    room = max(MIN_DETAIL_WIDTH, out.width - sum(widths) - 2 * len(widths))
    for row in rows:
        detail = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), detail]))


def dead_letter_detail(entry: DeadLetterEntry) -> None:
    table = Table("field", "value", title=f"dead letter {entry.entry_id.decode()}")
    for name, value in entry.metadata.items():
        table.add_row(name.decode(errors="replace"), value.decode(errors="replace"))
    for name, value in zip(entry.original[::2], entry.original[1::2], strict=True):
        table.add_row(name.decode(errors="replace"), value.decode(errors="replace"))
    out.print(table)


def dry_run_report(report: DryRunReport) -> None:
    out.print(f"{report.pending:,} pending; a cycle now would (changing nothing here):")
    out.print(f"  claim {report.would_claim:,}, write {report.would_write:,} tweets and acknowledge them")
    for reason, count in report.would_dead_letter.items():
        out.print(f"  dead-letter {count:,} ({reason})")
    out.print(f"  acknowledge {report.would_acknowledge_deleted:,} entries deleted from the stream")
    out.print(f"  leave {report.not_idle_long_enough:,} entries not idle long enough with their owners")
    for example in report.examples:
        out.print(f"    {example['id']}: {example['action']}")


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal; silent otherwise (scripts, cron, CI)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not sys.stderr.isatty(),
        transient=True,
    )
    with bar:
        bar.add_task(description, total=total)
        yield bar
