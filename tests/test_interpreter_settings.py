"""The interpreter's settings during a sweep (handler/reclaim/interpreter_settings.py): the collector paused
and the GIL switch interval lowered while pages are handled, and the process's own settings back afterwards,
whatever happened."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator

import pytest

from handler.reclaim.interpreter_settings import SWITCH_INTERVAL_SEC, settings_for_sweeping
from tests.pipeline import tweet
from tests.world import World

PROCESS_SWITCH_INTERVAL = 0.004  # not CPython's default, so a restore to the default would show


@pytest.fixture(autouse=True)
def process_settings() -> Iterator[None]:
    saved, enabled = sys.getswitchinterval(), gc.isenabled()
    sys.setswitchinterval(PROCESS_SWITCH_INTERVAL)
    gc.enable()
    yield
    sys.setswitchinterval(saved)
    (gc.enable if enabled else gc.disable)()


def observed_during(action: object) -> set[tuple[bool, float]]:
    """(collector enabled, switch interval) as another thread saw them while `action()` ran."""
    seen: set[tuple[bool, float]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.add((gc.isenabled(), sys.getswitchinterval()))
            done.wait(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        action()  # type: ignore[operator]
    finally:
        done.set()
        watcher.join()
    return seen


def test_a_real_sweep_pauses_the_collector_and_restores_the_process_settings(world8: World) -> None:
    world8.abandon([tweet(n) for n in range(6000)])
    summary = None

    def sweep() -> None:
        nonlocal summary
        summary = world8.run(RECLAIM_PAGE_SIZE=100)

    seen = observed_during(sweep)
    assert summary is not None and summary.counts.processed == 6000
    assert (False, SWITCH_INTERVAL_SEC) in seen, seen
    assert (gc.isenabled(), sys.getswitchinterval()) == (True, PROCESS_SWITCH_INTERVAL)


def test_a_sweep_that_fails_restores_the_settings() -> None:
    with pytest.raises(RuntimeError, match="the sweep failed"), settings_for_sweeping():
        assert (gc.isenabled(), sys.getswitchinterval()) == (False, SWITCH_INTERVAL_SEC)
        raise RuntimeError("the sweep failed")
    assert (gc.isenabled(), sys.getswitchinterval()) == (True, PROCESS_SWITCH_INTERVAL)


def test_overlapping_sweeps_restore_the_settings_only_when_the_last_one_ends() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    during_second: list[tuple[bool, float]] = []

    def first() -> None:
        with settings_for_sweeping():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with settings_for_sweeping():
            second_in.set()
            first_out.wait(10)  # the first sweep has ended: this one still runs with the hot settings
            during_second.append((gc.isenabled(), sys.getswitchinterval()))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert during_second == [(False, SWITCH_INTERVAL_SEC)]
    assert (gc.isenabled(), sys.getswitchinterval()) == (True, PROCESS_SWITCH_INTERVAL)


def test_a_collector_the_process_disabled_itself_stays_disabled() -> None:
    gc.disable()
    with settings_for_sweeping():
        pass
    assert (gc.isenabled(), sys.getswitchinterval()) == (False, PROCESS_SWITCH_INTERVAL)


def test_an_interrupt_while_the_settings_change_leaves_the_process_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KeyboardInterrupt lands between two of settings_for_sweeping's own steps (here: as the collector is
    disabled, after the switch interval changed): nothing stays changed, and the next sweep works as usual."""
    real_disable = gc.disable

    def interrupted() -> None:
        real_disable()
        raise KeyboardInterrupt

    monkeypatch.setattr(gc, "disable", interrupted)
    with pytest.raises(KeyboardInterrupt), settings_for_sweeping():
        pytest.fail("the sweep must not start")
    assert (gc.isenabled(), sys.getswitchinterval()) == (True, PROCESS_SWITCH_INTERVAL)
    monkeypatch.setattr(gc, "disable", real_disable)
    with settings_for_sweeping():
        assert (gc.isenabled(), sys.getswitchinterval()) == (False, SWITCH_INTERVAL_SEC)
    assert (gc.isenabled(), sys.getswitchinterval()) == (True, PROCESS_SWITCH_INTERVAL)
