"""`run` across daylight-saving changes: waits are computed in UTC, so spring forward does not wait an hour
and fall back does not run cycles back to back. A settable clock drives the scheduler through each change,
and a real `run` process is started under libfaketime at the moment of the change."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.provision import ensure_debian_tool
from handler.runner import run_on_schedule
from tests.pipeline import create_group

APP_ROOT = Path(__file__).resolve().parents[1]


class SettableClock:
    """The scheduler's clock and its stop event: a wait moves the clock on instead of sleeping."""

    def __init__(self, start: datetime, cycles: int) -> None:
        self.now = start
        self.waits: list[float] = []
        self.cycle_times: list[datetime] = []
        self._cycles = cycles

    def utc_now(self, zone: tzinfo | None = None) -> datetime:
        return self.now if zone is None else self.now.astimezone(zone)

    def is_set(self) -> bool:
        return len(self.cycle_times) >= self._cycles

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += timedelta(seconds=seconds)
        return False

    def cycle(self) -> None:
        self.cycle_times.append(self.now)
        self.now += timedelta(seconds=1)  # a cycle takes a second


def run_clock(schedule: str, zone: str, start: datetime, cycles: int) -> SettableClock:
    clock = SettableClock(start, cycles)
    run_on_schedule(schedule, ZoneInfo(zone), clock.cycle, clock, now=clock.utc_now)  # type: ignore[arg-type]
    return clock


def test_spring_forward_waits_seconds_not_an_hour() -> None:
    # Europe/London, 2026-03-29: 01:00 GMT becomes 02:00 BST.
    clock = run_clock("*/20 * * * * *", "Europe/London", datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC), 6)
    assert max(clock.waits) <= 20, clock.waits
    gaps = [(b - a).total_seconds() for a, b in zip(clock.cycle_times, clock.cycle_times[1:], strict=False)]
    assert all(gap == 20 for gap in gaps), (clock.cycle_times, gaps)


def test_fall_back_never_runs_cycles_back_to_back() -> None:
    # Europe/London, 2026-10-25: 02:00 BST becomes 01:00 GMT; the hour 01:00-02:00 comes twice.
    clock = run_clock("*/20 * * * * *", "Europe/London", datetime(2026, 10, 25, 0, 59, 30, tzinfo=UTC), 200)
    assert min(clock.waits) >= 0, min(clock.waits)
    gaps = [(b - a).total_seconds() for a, b in zip(clock.cycle_times, clock.cycle_times[1:], strict=False)]
    assert all(gap == 20 for gap in gaps), sorted(set(gaps))


def test_a_daily_schedule_in_new_york_runs_once_a_day_across_the_change() -> None:
    # America/New_York, 2026-11-01: 02:00 EDT becomes 01:00 EST.
    clock = run_clock("0 30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, 0, tzinfo=UTC), 3)
    days = [t.astimezone(ZoneInfo("America/New_York")).date().isoformat() for t in clock.cycle_times]
    assert len(set(days)) == 3, clock.cycle_times  # never twice on the day the clocks go back
    assert all(wait >= 0 for wait in clock.waits)


def libfaketime() -> Path:
    """Debian's libfaketime, preloaded straight into the process (the `faketime` wrapper forks, and a
    signal to it would not reach the monitor)."""
    ensure_debian_tool("faketime", "faketime")
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    assert found, "the faketime package installed no libfaketime.so.1"
    return found[0]


def _run_under_faketime(
    redis_8: LocalRedis, names: dict[str, str], moment: str, seconds: float
) -> tuple[list[str], str]:
    """`run` started at `moment` (UTC) under libfaketime, for `seconds` of real time: the cycle times it
    logged and its stderr. Monotonic clocks are left real, so its waits take real time."""
    library = libfaketime()
    create_group(redis_8.client(), names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"])
    env = environment_for(
        redis_8,
        **names,
        MIN_IDLE_TIME_SEC="10",
        WEBSITE_TIME_ZONE="Europe/London",
        METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
        LOG_LEVEL="INFO",
        TZ="UTC",
        LD_PRELOAD=str(library),
        FAKETIME=f"@{moment}",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        PYTHONPATH=str(APP_ROOT),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "handler", "run", "--schedule", "*/5 * * * * *"],
        env=env,
        cwd=APP_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(seconds)
    process.terminate()
    _, stderr = process.communicate(timeout=30)
    cycles = [line for line in stderr.splitlines() if "next reclaim cycle at" in line]
    return cycles, stderr


def test_a_real_run_at_spring_forward_keeps_its_schedule(redis_8: LocalRedis, names: dict[str, str]) -> None:
    """Started 2 s before 01:00 GMT on the day London springs forward, with a cycle every 5 s: within 9 s
    it has scheduled at least two cycles, not one an hour away."""
    cycles, stderr = _run_under_faketime(redis_8, names, "2026-03-29 00:59:58", 9)
    assert len(cycles) >= 2, stderr
    assert "Traceback" not in stderr


def test_a_real_run_at_fall_back_does_not_loop(redis_8: LocalRedis, names: dict[str, str]) -> None:
    """Started 2 s before 02:00 BST on the day London falls back: 9 s of real time hold at most three cycles
    at 5 s, not thousands back to back."""
    cycles, stderr = _run_under_faketime(redis_8, names, "2026-10-25 00:59:58", 9)
    assert 1 <= len(cycles) <= 4, f"{len(cycles)} cycles scheduled\n{stderr[-2000:]}"
