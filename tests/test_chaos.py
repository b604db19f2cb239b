"""The randomized checker (tests/chaos/) on a fixed set of seeds: every promise holds after every step, and
those seeds inject every kind of fault at least once, in every kind of world (one node and a cluster, one
stream and two). ./scripts/chaos runs it longer."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos import FAULTS, Outcome, World, plan, run_steps, world_for

# Each seed chooses its world (world_for): 8.2's 24913 is a cluster with two streams (both kinds of failover,
# and cut, stall, restart, demotion and LOADING on one of its nodes), 26 one node with one stream, the others
# one node with two streams; every one-node seed makes Redis answer LOADING.
SEEDS = {"8.2": [24913, 18, 26, 29], "6.2": [1], "6.0": [13]}
STEPS = 38
CLUSTER_STEPS = 16  # most of a cluster's steps are faults, of seconds each
CASES = [(version, seed) for version, seeds in SEEDS.items() for seed in seeds]
RUNS: dict[tuple[str, int], Outcome] = {}  # what the seeds' runs did, for the coverage test below


def world(version: str, seed: int) -> World:
    return world_for(seed, version)


def steps(version: str, seed: int) -> int:
    return CLUSTER_STEPS if world(version, seed).cluster else STEPS


def run(version: str, seed: int) -> Outcome:
    if (version, seed) not in RUNS:
        RUNS[version, seed] = run_steps(
            plan(seed, steps(version, seed), world(version, seed)), version, world(version, seed)
        )
    return RUNS[version, seed]


@pytest.mark.parametrize(
    ("version", "seed"),
    CASES,
    ids=[f"redis-{v}-seed-{s}-{world(v, s)}".replace(", ", "-").replace(" ", "-") for v, s in CASES],
)
def test_every_promise_holds_after_every_step(version: str, seed: int) -> None:
    outcome = run(version, seed)
    where = f"seed {seed} on Redis {version} ({world(version, seed)}), step {outcome.failed_at}"
    assert outcome.violation is None, f"{where}: {outcome.violation}"
    assert steps(version, seed) == outcome.stats.checks


def test_the_fixed_seeds_inject_every_kind_of_fault() -> None:
    injected: Counter[str] = Counter()
    for version, seed in CASES:
        injected.update(run(version, seed).stats.faults)
    assert [] == [kind for kind in FAULTS if not injected[kind]], injected


def test_the_fixed_seeds_cover_every_kind_of_world() -> None:
    worlds = [world(version, seed) for version, seed in CASES]
    assert any(w.cluster for w in worlds), worlds
    assert {1, 2} <= {len(w.streams) for w in worlds if not w.cluster}, worlds
