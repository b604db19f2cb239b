"""The command line: runs a step list in the world it names, reduces a failing list, picks seeds for the
time given and prints the table of faults injected and entries' fates."""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from handler.dev.redis_binaries import BINARIES
from tests import chaos
from tests.chaos.cluster import ClusterRun
from tests.chaos.kinds import (
    CLUSTER_VERSIONS,
    FAULTS,
    WORLDS,
    Step,
    ViolationError,
    World,
    plan,
    world_for,
)
from tests.chaos.model import Stats
from tests.chaos.node import NodeRun


@dataclass
class Outcome:
    stats: Stats
    violation: str | None = None
    failed_at: int | None = None


def run_steps(steps: list[Step], version: str, world: World | None = None) -> Outcome:
    world = world or World()
    workdir = Path(tempfile.mkdtemp(prefix="tweets-monitor-chaos-"))
    run = (ClusterRun if world.cluster else NodeRun)(version, workdir, world)
    try:
        for index, step in enumerate(steps):
            try:
                run.step(step)
                run.check()
            except ViolationError as exc:
                return Outcome(run.stats, str(exc), index)
        return Outcome(run.stats)
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)


def reduce(
    steps: list[Step], version: str, world: World | None = None, reruns: int = 3
) -> tuple[list[Step], int, int]:
    """Drop steps while the violation still shows: halves of the list first, then quarters, and so on down
    to single steps (a cluster's run is slow, so few runs matter), each single step's removal tried up to
    `reruns` times since threads and real servers are not deterministic."""
    current, tried, reproduced = list(steps), 0, 0
    size = max(1, len(current) // 2)
    while True:
        index = 0
        while index < len(current):
            candidate = current[:index] + current[index + size :]
            for _ in range(reruns if size == 1 else 1):
                tried += 1
                if candidate and run_steps(candidate, version, world).violation is not None:
                    reproduced += 1
                    current = candidate
                    break
            else:
                index += size
        if size == 1:
            return current, tried, reproduced
        size //= 2


def seeds_for(minutes: float, seed: int | None) -> Iterator[int]:
    deadline = time.monotonic() + minutes * 60
    next_seed = seed if seed is not None else random.randrange(1 << 30)
    while True:
        yield next_seed
        if seed is not None or time.monotonic() > deadline:
            return
        next_seed = random.randrange(1 << 30)


def table(totals: Stats, runs: int, violations: int, worlds: Counter[str], possible: set[str]) -> list[str]:
    """The run's numbers; a fault no world that ran could inject (a failover without a cluster) is n/a."""
    lines = [
        f"runs {runs}, steps {totals.steps}, invariant checks {totals.checks}, violations {violations}",
        "worlds: " + ", ".join(f"{name} {count}" for name, count in sorted(worlds.items())),
        "| fault | injected |",
        "| --- | ---: |",
    ]
    lines += [f"| {kind} | {totals.faults[kind] if kind in possible else 'n/a'} |" for kind in FAULTS]
    lines += ["| entries by fate | count |", "| --- | ---: |"]
    lines += [f"| {fate} | {count} |" for fate, count in sorted(totals.fates.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=chaos.__doc__.splitlines()[0] if chaos.__doc__ else None
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, help="run this seed once")
    parser.add_argument("--steps", type=int, default=60, help="steps per seed")
    parser.add_argument("--version", default="8.2", choices=sorted(BINARIES))
    parser.add_argument(
        "--world",
        default="from-seed",
        choices=["from-seed", *WORLDS],
        help="one node or a cluster (8.2), one stream or two; by default each seed chooses",
    )
    args = parser.parse_args(argv)
    if args.world.startswith("cluster") and args.version not in CLUSTER_VERSIONS:
        parser.error(f"a cluster needs Redis {', '.join(sorted(CLUSTER_VERSIONS))}")
    totals, runs, violations = Stats(), 0, 0
    worlds: Counter[str] = Counter()
    possible: set[str] = set()
    for seed in seeds_for(args.minutes, args.seed):
        world = world_for(seed, args.version) if args.world == "from-seed" else WORLDS[args.world]
        steps = plan(seed, args.steps, world)
        outcome = run_steps(steps, args.version, world)
        runs += 1
        worlds[str(world)] += 1
        possible |= set(world.kinds)
        totals.steps += outcome.stats.steps
        totals.checks += outcome.stats.checks
        totals.faults.update(outcome.stats.faults)
        totals.fates.update(outcome.stats.fates)  # each run's fates at its last check
        if outcome.violation is not None:
            violations += 1
            print(f"seed {seed} ({world}): {outcome.violation} (at step {outcome.failed_at})", flush=True)
            reduced, tried, reproduced = reduce(steps[: (outcome.failed_at or 0) + 1], args.version, world)
            print(
                f"  reduced to {len(reduced)} steps ({reproduced} of {tried} re-runs reproduced it): "
                + " ".join(map(str, reduced)),
                flush=True,
            )
            break
    print("\n".join(table(totals, runs, violations, worlds, possible)))
    missing = [kind for kind in FAULTS if kind in possible and not totals.faults[kind]]
    if missing and not violations:
        print(f"no fault of kind {', '.join(missing)} was injected: run longer")
        return 1
    return 1 if violations else 0
