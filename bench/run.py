"""The performance benchmark, every part in one command (./scripts/bench passes its arguments here).

    ./scripts/bench                                   # everything: about 30 minutes on a 2-core machine
    ./scripts/bench --only loopback --sizes 100000    # one part, one size
    ./scripts/bench --only azure --rtt-ms 0,0.5,1,5   # the round-trip part with a 5 ms row as well
    ./scripts/bench --sizes 5000 --repeat 1 --cap-size 5000 --cap-rate 400 --producer-rate 200 --no-docs

Parts (bench/reclaim_bench.py, bench/azure_bench.py, bench/cap_bench.py say what each measures):

- loopback: Redis 8.2 on 127.0.0.1 without TLS; server limit, project (CLI), project (HTTP), redis-py
  pipeline, original algorithm; N = 100,000 (medians of 5) and 1,000,000 (medians of 3; the original
  algorithm only up to --seed-max); then one invocation on the default 10 s budget and the latency of an
  invocation with nothing pending;
- azure: Debian Redis 7.0.15 with TLS through the latency proxy at each --rtt-ms, and the server limit
  without it; N = 100,000, medians of 3;
- cap: a 1,000,000-entry drain beside a live producer (2,000/s) and processor, without RECLAIM_MAX_RATE and
  with it (20,000/s): the processor's latency and the claims per 10-s window.

Every run is verified. The results go to bench/results/<UTC time>-<commit>.json (written after each part),
then bench/report.py prints the tables, updates docs/performance.md's generated sections and writes
docs/performance-chart.png (--no-docs: print only). The last line says how long the whole run took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import report
from bench.results import Recorder

PARTS = ("loopback", "azure", "cap")


def numbers(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help="parts to run, comma-separated: loopback, azure, cap (default: all three)",
    )
    parser.add_argument(
        "--sizes",
        type=numbers,
        default=None,
        help="N for the loopback and round-trip parts (default: 100000,1000000 loopback, 100000 round trips)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per cell in every part (default: 5 below N=1,000,000 and 3 from there "
        "on loopback, 3 in the round-trip part)",
    )
    parser.add_argument("--rtt-ms", default="0,0.5,1,5", help="round trips the latency proxy adds (ms)")
    parser.add_argument(
        "--seed-max",
        type=int,
        default=100_000,
        help="loopback: largest N for the original algorithm (slow, 5 GB at 1,000,000)",
    )
    parser.add_argument(
        "--seed-size",
        type=int,
        default=None,
        help="round trips: the original algorithm's N, when smaller than --sizes "
        "(it pays a round trip per command per entry)",
    )
    parser.add_argument("--cap-size", type=int, default=1_000_000, help="cap: the drained backlog's N")
    parser.add_argument(
        "--cap-rate", type=float, default=20_000, help="cap: RECLAIM_MAX_RATE of the capped drain"
    )
    parser.add_argument("--producer-rate", type=float, default=2_000, help="cap: live tweets per second")
    parser.add_argument(
        "--results", type=Path, default=None, help="the results file (default: bench/results/…)"
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="do not touch docs/performance.md or docs/performance-chart.png",
    )
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    args.rtts = [float(part) for part in args.rtt_ms.split(",") if part]
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    started = time.monotonic()
    recorder = Recorder({key: value for key, value in vars(args).items() if key != "results"})
    path = args.results or recorder.path
    print(f"Parts: {', '.join(args.parts)}; results in {path}", flush=True)
    if "loopback" in args.parts:
        from bench.reclaim_bench import run_loopback  # noqa: PLC0415  (each part imports what it needs)

        run_loopback(args.sizes or [100_000, 1_000_000], args.repeat, args.seed_max, recorder)
        recorder.save(path)
        print(f"  [loopback part done after {(time.monotonic() - started) / 60:.1f} min]\n", flush=True)
    if "azure" in args.parts:
        from bench.azure_bench import run_azure  # noqa: PLC0415

        run_azure(args.sizes or [100_000], args.rtts, args.repeat, args.seed_size, recorder)
        recorder.save(path)
        print(f"  [round-trip part done after {(time.monotonic() - started) / 60:.1f} min]\n", flush=True)
    if "cap" in args.parts:
        from bench.cap_bench import run_cap  # noqa: PLC0415

        run_cap(args.cap_size, args.cap_rate, args.producer_rate, recorder)
        recorder.save(path)
        print(f"  [cap part done after {(time.monotonic() - started) / 60:.1f} min]\n", flush=True)
    recorder.save(path)
    if args.no_docs:
        report.report(path, None, None)
    else:
        report.report(path, report.DOCS, report.CHART)
    elapsed = time.monotonic() - started
    print(f"\nResults: {path}\nThe whole benchmark took {elapsed / 60:.1f} min ({elapsed:,.0f} s).")


if __name__ == "__main__":
    main()
