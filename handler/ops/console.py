"""What the CLI shows people: rich tables on a terminal, progress bars only when stderr is a terminal.

Whatever comes from Redis (consumer names, tweets, dead letters, ids, key names, the last refusal) is shown
as text, on every path (terminal or pipe, table or plain): handed to Rich as Text, never as markup, and with
control characters made visible (keys.visible), so that no value can crash a command, set a window title,
clear the screen, overwrite a line or become a link.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from handler.keys import visible
from handler.ops.dead_letter_tools import DeadLetterEntry
from handler.ops.dry_run import DryRunReport
from handler.ops.status import GroupStatus

out = Console(highlight=False, emoji=False)
# soft_wrap: a warning stays one line when stderr is piped (Rich would otherwise cut it at 80 columns).
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)


def _line(*parts: str | tuple[str, str]) -> Text:
    """One line of text: plain strings and (text, style) pairs, the text never read as markup."""
    return Text.assemble(*parts)


def _seconds(ms: int | None) -> str:
    return "—" if ms is None else f"{ms / 1000:,.1f} s"


def status_table(status: GroupStatus) -> None:
    out.print(
        _line(
            (visible(status.stream), "bold"),
            " / ",
            (visible(status.group), "bold"),
            f": {status.pending:,} pending",
        )
    )
    table = Table(
        Column("consumer", overflow="fold"), "pending", "oldest idle*", "most deliveries*", "last seen"
    )
    for consumer in status.consumers:
        table.add_row(
            Text(visible(consumer.name)),
            f"{consumer.pending:,}",
            _seconds(consumer.oldest_pending_idle_ms),
            str(consumer.highest_deliveries or "—"),
            _seconds(consumer.idle_ms) + " ago",
        )
    out.print(table)
    out.print(_line(f"* over each consumer's {status.sample_per_consumer:,} oldest pending entries"))
    if status.idle_consumers_without_pending:
        out.print(_line(f"consumers with nothing pending: {len(status.idle_consumers_without_pending)}"))
    bound = f" (of about {status.dead_letter_maxlen:,})" if status.dead_letter_maxlen else ""
    out.print(
        _line(f"dead letters in {visible(status.dead_letter_stream)}: {status.dead_letter_length:,}{bound}")
    )
    lag = "unknown before Redis 7.0" if status.lag is None else str(status.lag)
    out.print(_line(f"lag (entries not yet delivered): {lag}"))
    age = status.last_cycle_age_sec
    out.print(_line(f"last completed cycle: {'none recorded' if age is None else f'{age:,.0f} s ago'}"))
    if status.search_documents is not None:  # only where the search module and the index exist
        out.print(_line(f"search index tweets-index: {status.search_documents:,} documents"))
    for warning in status.warnings:
        err.print(_line(("warning:", "yellow"), " ", visible(warning)))


DEAD_LETTER_COLUMNS = ("dead letter", "original id", "reason", "deliveries", "when (UTC)", "detail")
MIN_DETAIL_WIDTH = 10


def dead_letter_rows(entries: list[DeadLetterEntry]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        meta = {
            k.decode(errors="replace").removeprefix("dlq:"): v.decode(errors="replace")
            for k, v in entry.metadata.items()
        }
        rows.append(
            tuple(
                visible(cell)
                for cell in (
                    entry.entry_id.decode(),
                    meta.get("original-id", "?"),
                    meta.get("reason", "?"),
                    meta.get("deliveries", "?"),
                    _when(meta.get("time-ms", "0")),
                    " ".join(meta.get("detail", "").split()),
                )
            )
        )
    return rows


def _when(time_ms: str) -> str:
    try:
        return datetime.fromtimestamp(int(time_ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # not a time the monitor wrote
        return "?"


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
    # Folded, never cut: `show` is where every field is read whole.
    table = Table(
        Column("field", overflow="fold"),
        Column("value", overflow="fold"),
        title=Text(f"dead letter {visible(entry.entry_id)}"),
    )
    for name, value in entry.metadata.items():
        table.add_row(Text(visible(name)), Text(visible(value)))
    for name, value in zip(entry.original[::2], entry.original[1::2], strict=True):
        table.add_row(Text(visible(name)), Text(visible(value)))
    out.print(table)


def dry_run_report(report: DryRunReport) -> None:
    out.print(_line(f"{report.pending:,} pending; a cycle now would (changing nothing here):"))
    out.print(
        _line(f"  claim {report.would_claim:,}, write {report.would_write:,} tweets and acknowledge them")
    )
    for reason, count in report.would_dead_letter.items():
        out.print(_line(f"  dead-letter {count:,} ({visible(reason)})"))
    out.print(_line(f"  acknowledge {report.would_acknowledge_deleted:,} entries deleted from the stream"))
    out.print(
        _line(f"  leave {report.not_idle_long_enough:,} entries not idle long enough with their owners")
    )
    for example in report.examples:
        out.print(_line(f"    {visible(example['id'])}: {visible(example['action'])}"))


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
