"""`python -m handler run`: the same cycle on the same NCRONTAB schedule as monitor/function.json, as a
plain process, a cron job or a Kubernetes Job.

NCRONTAB has six fields with seconds first (croniter reads seconds last unless told otherwise). Times are
UTC unless WEBSITE_TIME_ZONE names another zone, as in Azure. Cycles never overlap: the next one is
scheduled after the current one ends, and occurrences missed meanwhile are skipped, as the host skips them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from croniter import croniter

from handler.errors import SettingsError
from handler.reclaim.summary import CycleSummary
from handler.settings import shape

log = logging.getLogger(__name__)
NCRONTAB_FIELDS, CRON_FIELDS = 6, 5  # NCRONTAB puts seconds first; a 5-field cron line starts at minute 0
MAX_OCCURRENCES_SKIPPED = 10_000  # a fall-back hour of a schedule every second repeats 3,600 occurrences


def schedule_zone(website_time_zone: str) -> tzinfo:
    return ZoneInfo(website_time_zone) if website_time_zone else ZoneInfo("UTC")


def next_run(schedule: str, after: datetime) -> datetime:
    """The next occurrence strictly after `after` (an aware datetime) of an NCRONTAB schedule."""
    fields = schedule.split()
    if len(fields) not in (CRON_FIELDS, NCRONTAB_FIELDS):
        raise ValueError(f"{schedule!r} is not an NCRONTAB schedule (6 fields, seconds first; or 5)")
    expression = schedule if len(fields) == NCRONTAB_FIELDS else "0 " + schedule
    result: datetime = croniter(expression, after, second_at_beginning=True).get_next(datetime)
    return result


def next_due(schedule: str, zone: tzinfo, now: datetime) -> datetime:
    """The next occurrence in `zone` strictly after the instant `now`, as an instant in UTC.

    Python subtracts two datetimes of the same zone as wall-clock times, which is wrong across a
    daylight-saving change (an hour too long at spring forward, negative at fall back): every comparison and
    wait here is made between UTC instants. In the hour that comes twice at fall back, a schedule with a
    fixed hour (a daily run at 01:30) runs once, as cron does; one that runs every hour runs in both."""
    local = now.astimezone(zone)
    after = local
    for _ in range(MAX_OCCURRENCES_SKIPPED):
        due = next_run(schedule, after).astimezone(UTC)
        again = due.astimezone(zone).fold == 1 and _hour_is_fixed(schedule)
        if due > now and not again:
            return due
        after = (due + timedelta(seconds=1)).astimezone(zone)
    raise ValueError(f"{schedule!r} has no occurrence after {local.isoformat()}")


def _hour_is_fixed(schedule: str) -> bool:
    fields = schedule.split()
    hour = fields[2] if len(fields) == NCRONTAB_FIELDS else fields[1]
    return not hour.startswith(
        "*"
    )  # `*` and `*/2` run every hour or every other: both hours count, as in cron


def checked_schedule(schedule: str, written: str | None = None) -> str:
    """The schedule, or SettingsError (exit 2) when it is not NCRONTAB or never comes. `written` is the
    schedule before its %NAME% app settings were put in: then the message names that, never their values."""
    try:
        next_due(schedule, ZoneInfo("UTC"), datetime.now(UTC))
    except (ValueError, KeyError, IndexError, TypeError) as exc:  # croniter's errors are ValueErrors
        if written is not None and written != schedule:
            raise SettingsError(
                f"the schedule {written!r}, its app settings put in, is not an NCRONTAB expression (6 "
                f"fields, seconds first, e.g. */20 * * * * *); {shape(schedule)}"
            ) from None
        raise SettingsError(
            f"the schedule {schedule!r} is not an NCRONTAB expression (6 fields, seconds first, e.g. "
            f"*/20 * * * * *): {exc}"
        ) from None
    return schedule


def run_on_schedule(
    schedule: str,
    zone: tzinfo,
    cycle: Callable[[], CycleSummary | None],
    stop: threading.Event,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Run `cycle` at each occurrence until `stop` is set; a cycle's failure is logged, not fatal.
    `now` gives the current instant as an aware datetime (UTC); the waits are UTC differences."""
    while not stop.is_set():
        due = next_due(schedule, zone, now())
        log.info("next reclaim cycle at %s", due.astimezone(zone).isoformat())
        if stop.wait(max(0.0, (due - now()).total_seconds())):
            return
        cycle()
