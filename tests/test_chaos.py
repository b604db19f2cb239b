"""The randomized checker (tests/chaos.py) on a fixed set of seeds: every promise holds after every step, and
those seeds inject every kind of fault at least once. ./scripts/chaos runs it longer."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos import FAULTS, Outcome, plan, run_steps

SEEDS = {"8.2": [11, 12, 13, 14, 15, 16], "6.2": [21], "6.0": [31]}
STEPS = 50
CASES = [(version, seed) for version, seeds in SEEDS.items() for seed in seeds]
RUNS: dict[tuple[str, int], Outcome] = {}  # what the seeds' runs did, for the coverage test below


def run(version: str, seed: int) -> Outcome:
    if (version, seed) not in RUNS:
        RUNS[version, seed] = run_steps(plan(seed, STEPS), version)
    return RUNS[version, seed]


@pytest.mark.parametrize(("version", "seed"), CASES, ids=[f"redis-{v}-seed-{s}" for v, s in CASES])
def test_every_promise_holds_after_every_step(version: str, seed: int) -> None:
    outcome = run(version, seed)
    where = f"seed {seed} on Redis {version}, step {outcome.failed_at}"
    assert outcome.violation is None, f"{where}: {outcome.violation}"
    assert STEPS == outcome.stats.checks


def test_the_fixed_seeds_inject_every_kind_of_fault() -> None:
    injected: Counter[str] = Counter()
    for version, seed in CASES:
        injected.update(run(version, seed).stats.faults)
    assert [] == [kind for kind in FAULTS if not injected[kind]], injected
