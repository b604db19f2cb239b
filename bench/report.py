"""docs/performance.md's tables and docs/performance-chart.png, from one benchmark results file.

    python -m bench.report bench/results/<file>.json            # print the tables, write the docs and chart
    python -m bench.report <file> --print-only                  # print them only
    python -m bench.report <file> --docs /tmp/p.md --chart /tmp/p.png

In the document, each generated section sits between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->` (NAME: meta, loopback, azure, cap); only the sections the results file has
numbers for are replaced, so a partial run (`--only cap`) leaves the others as they were.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.results import APP_ROOT, load

DOCS = APP_ROOT / "docs" / "performance.md"
CHART = APP_ROOT / "docs" / "performance-chart.png"
ORDER = [
    "server limit",
    "server limit (no proxy)",
    "project (CLI)",
    "project (HTTP)",
    "redis-py pipeline",
    "original algorithm",
]
LIMIT, SEED, CLI, HTTP = "server limit", "original algorithm", "project (CLI)", "project (HTTP)"
LOOPBACK_TARGET, AZURE_TARGET, AZURE_SEED_TARGET, RSS_TARGET_MB = 0.7, 0.6, 20.0, 100.0


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


class Cell:
    """The runs of one approach at one size (and one round trip)."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs
        first = runs[0]
        self.approach: str = first["approach"]
        self.size: int = first["size"]
        self.group: int = first.get("group_size") or first["size"]  # the N of the rows it is tabled with
        self.rtt_ms: float | None = first["rtt_ms"]
        self.rate: float = statistics.median(run["rate"] for run in runs)

    def median_of(self, key: str) -> float | None:
        return median(run[key] for run in self.runs)

    def peak_rss(self) -> float | None:
        values = [run["rss_mb"] for run in self.runs if run["rss_mb"] is not None]
        return max(values) if values else None


def cells(data: dict[str, Any], part: str) -> list[Cell]:
    groups: dict[tuple[str, int, int, float | None], list[dict[str, Any]]] = defaultdict(list)
    for run in data["runs"]:
        if run["part"] == part:
            group = run.get("group_size") or run["size"]
            groups[(run["approach"], run["size"], group, run["rtt_ms"])].append(run)
    return [Cell(runs) for runs in groups.values()]


def rank(approach: str) -> int:
    return ORDER.index(approach) if approach in ORDER else len(ORDER)


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def megabytes(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} MB"


def ratio(value: float, against: Cell | None, percent: bool) -> str:
    if against is None:
        return "—"
    return f"{value / against.rate:.0%}" if percent else f"{value / against.rate:.1f}x"


def repeats(group: list[Cell]) -> str:
    counts = sorted({len(cell.runs) for cell in group})
    return "/".join(str(count) for count in counts)


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def meets(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def paired(cell: Cell, limit: Cell) -> str:
    """Each run against the server limit of its own repetition (run next to it, so the machine's drift
    affects both alike): the median and the range of those ratios, beside the ratio of the medians that
    the target is judged on."""
    limits = {run["repetition"]: run["rate"] for run in limit.runs}
    shares = sorted(
        run["rate"] / limits[run["repetition"]] for run in cell.runs if run["repetition"] in limits
    )
    if len(shares) < 2:  # one run: nothing to add to the ratio of medians
        return ""
    middle = statistics.median(shares)
    return f"; each run against its repetition's limit: median {middle:.2f}, {shares[0]:.2f}-{shares[-1]:.2f}"


def loopback_section(data: dict[str, Any]) -> str | None:
    found = cells(data, "loopback")
    if not found:
        return None
    server = data["meta"]["servers"].get("loopback", {})
    lines = [
        f"Redis {server.get('redis_version', '?')} on loopback, no TLS. Messages/s over each contender's own "
        "time (the cycle's `duration_ms` for the project); *wall* is what a caller waits (process start to "
        "exit; the POST for HTTP), and *wall - own* is the start-up a run with work really pays.",
        "",
        row(
            "N",
            "approach",
            "messages/s",
            "vs server limit",
            "vs original",
            "peak RSS",
            "own",
            "wall",
            "wall - own",
            "runs",
        ),
        row("---:", "---", *["---:"] * 8),
    ]
    sizes = sorted({cell.size for cell in found})
    checks = []
    for size in sizes:
        group = sorted((cell for cell in found if cell.size == size), key=lambda cell: rank(cell.approach))
        by = {cell.approach: cell for cell in group}
        for cell in group:
            own, wall = cell.median_of("seconds"), cell.median_of("wall_s")
            overhead = median(
                run["wall_s"] - run["seconds"] for run in cell.runs if run["wall_s"] is not None
            )
            lines.append(
                row(
                    f"{size:,}",
                    cell.approach,
                    f"{cell.rate:,.0f}",
                    ratio(cell.rate, by.get(LIMIT), True),
                    ratio(cell.rate, by.get(SEED), False),
                    megabytes(cell.peak_rss()),
                    seconds(own),
                    seconds(wall),
                    seconds(overhead),
                    str(len(cell.runs)),
                )
            )
        for name in (CLI, HTTP):
            if name in by and LIMIT in by:
                share = by[name].rate / by[LIMIT].rate
                checks.append(
                    f"{name} at N={size:,}: {share:.2f} of the server limit "
                    f"({meets(share >= LOOPBACK_TARGET)} the {LOOPBACK_TARGET} target"
                    f"{paired(by[name], by[LIMIT])})"
                )
    http_start = median(
        run["startup_s"] for run in data["runs"] if run["part"] == "loopback" and run["approach"] == HTTP
    )
    if http_start is not None:
        checks.append(
            f"`serve` takes {http_start:.2f} s from process start to ready (once per host instance, not per "
            "invocation: the HTTP row's wall - own is the POST's own overhead)"
        )
    for name in (CLI, HTTP):
        memory = {cell.size: cell.peak_rss() for cell in found if cell.approach == name}
        known = {size: rss for size, rss in memory.items() if rss is not None}
        if known:
            low, high = known[min(known)], known[max(known)]
            flat = high <= low * 1.15
            checks.append(
                f"{name} peak RSS {low:.0f} MB at N={min(known):,} → {high:.0f} MB at N={max(known):,} "
                f"({meets(max(known.values()) <= RSS_TARGET_MB)} ≤ {RSS_TARGET_MB:.0f} MB; "
                f"{'flat' if flat else 'NOT flat'} in N)"
            )
    extras = data.get("extras", {})
    if "default_budget" in extras:
        tick = extras["default_budget"]
        summary = tick["summary"]
        checks.append(
            f"One invocation with the default 10 s budget and {tick['size']:,} pending processed "
            f"{summary['processed']:,} in {summary['duration_ms']:,} ms "
            f"(stopped by `{summary['stopped_by']}`), "
            f"peak RSS {tick['rss_mb']:.0f} MB"
        )
    if "empty_invocation" in extras:
        empty = extras["empty_invocation"]
        checks.append(
            f"An invocation with nothing pending answers in {empty['median_ms']:.2f} ms "
            f"(median over 300, loopback HTTP; p95 {empty['p95_ms']:.2f} ms)"
        )
    lines += ["", *(f"- {check}" for check in checks)]
    return "\n".join(lines)


def measured_rtt(data: dict[str, Any], part: str, rtt: float | None) -> dict[str, Any] | None:
    return next((m for m in data["round_trips"] if m["part"] == part and m["rtt_ms"] == rtt), None)


def azure_section(data: dict[str, Any]) -> str | None:
    found = cells(data, "azure")
    if not found:
        return None
    server = data["meta"]["servers"].get("azure", {})
    direct = measured_rtt(data, "azure", None)
    lines = [
        f"Debian Redis {server.get('redis_version', '?')} with TLS (certificate verified), every row through "
        "handler/dev/latency_proxy.py adding the set round trip, except the server limit without the proxy. "
        "*PING* is the measured round trip through the proxy (median of 200 sequential PINGs, TLS)"
        + (f"; without the proxy it is {direct['median_ms']:.3f} ms." if direct else ".")
        + " *proxy CPU* is the proxy process's own CPU during the run, as a share of the run's wall time.",
        "",
        row(
            "round trip",
            "PING",
            "N",
            "approach",
            "messages/s",
            "vs server limit",
            "vs original",
            "peak RSS",
            "proxy CPU",
        ),
        row("---:", "---:", "---:", "---", *["---:"] * 5),
    ]
    sizes = sorted({cell.group for cell in found})
    rtts = sorted({cell.rtt_ms for cell in found if cell.rtt_ms is not None})
    order: list[float | None] = [*rtts[:1], None, *rtts[1:]]  # the no-proxy row beside the lowest
    checks = []
    for size in sizes:
        for rtt in order:
            group = [cell for cell in found if cell.rtt_ms == rtt and cell.group == size]
            group.sort(key=lambda cell: rank(cell.approach))
            by = {cell.approach: cell for cell in group}
            ping = measured_rtt(data, "azure", rtt)
            for cell in group:
                cpu = median(run["proxy_cpu_s"] for run in cell.runs)
                wall = median(run["wall_s"] or run["seconds"] for run in cell.runs)
                cpu_text = f"{cpu:.2f} s ({cpu / wall:.0%})" if cpu is not None and wall else "—"
                rtt_text = f"{rtt:g} ms" if rtt is not None else "no proxy"
                ping_text = f"{ping['median_ms']:.3f} ms" if ping else "—"
                lines.append(
                    row(
                        rtt_text,
                        ping_text,
                        f"{cell.size:,}",
                        cell.approach,
                        f"{cell.rate:,.0f}",
                        ratio(cell.rate, by.get(LIMIT), True),
                        ratio(cell.rate, by.get(SEED), False),
                        megabytes(cell.peak_rss()),
                        cpu_text,
                    )
                )
            if rtt is not None:
                for name in (CLI, HTTP):
                    if name in by and LIMIT in by:
                        share = by[name].rate / by[LIMIT].rate
                        versus = by[name].rate / by[SEED].rate if SEED in by else None
                        seed_text = (
                            f", {versus:.1f}x the original algorithm ({meets(versus >= AZURE_SEED_TARGET)} "
                            f"the {AZURE_SEED_TARGET:.0f}x target)"
                            if versus is not None
                            else ""
                        )
                        checks.append(
                            f"TLS at {rtt:g} ms, N={size:,}: {name} {share:.2f} of the server limit "
                            f"({meets(share >= AZURE_TARGET)} the {AZURE_TARGET} target"
                            f"{paired(by[name], by[LIMIT])}){seed_text}"
                        )
        limit_0 = next(
            (c for c in found if c.approach == LIMIT and c.rtt_ms == min(rtts) and c.group == size), None
        )
        no_proxy = next((c for c in found if c.approach.endswith("(no proxy)") and c.group == size), None)
        if limit_0 and no_proxy:
            checks.append(
                f"The server limit through the proxy at {limit_0.rtt_ms:g} ms is "
                f"{limit_0.rate / no_proxy.rate:.0%}"
                f" of the same without the proxy (N={size:,}): the proxy is "
                f"{'not ' if limit_0.rate >= 0.9 * no_proxy.rate else ''}what limits it"
            )
    smaller = sorted({(cell.size, cell.group) for cell in found if cell.size != cell.group})
    for seed_size, size in smaller:
        checks.append(
            f"The original algorithm ran at N={seed_size:,} beside the N={size:,} rows "
            "(its messages/s compare across N)"
        )
    lines += ["", *(f"- {check}" for check in checks)]
    return "\n".join(lines)


def cap_section(data: dict[str, Any]) -> str | None:
    drains = data.get("cap") or []
    if not drains:
        return None
    first = drains[0]
    lines = [
        f"A backlog of {first['size']:,} drained by one `reclaim` invocation while a producer adds "
        f"{first['producer_rate']:,.0f} tweets/s and a live processor reads them "
        "(XREADGROUP `>`, HSET, XACK); "
        "claims counted on the server every 0.2 s (the crashed consumer's pending count), per 10-s window "
        "sliding by 1 s.",
        "",
        row(
            "RECLAIM_MAX_RATE",
            "drained",
            "drain",
            "claims/s (whole drain)",
            "claims/s per 10-s window (min - max)",
            "live p50 / p99 before",
            "live p50 / p99 during",
        ),
        row("---", *["---:"] * 6),
    ]
    checks = []
    for drain in drains:
        windows = drain["windows_per_s"]
        spread = f"{min(windows):,.0f} - {max(windows):,.0f}" if windows else "— (under 10 s)"
        whole = drain["claims_per_s"]
        before, during = drain["latency_before"], drain["latency_during"]
        label = f"{drain['cap']:,.0f}" if drain["cap"] else "0 (no cap)"
        lines.append(
            row(
                label,
                f"{drain['monitor']['summary']['processed']:,}",
                f"{drain['drain_s']:.1f} s",
                f"{whole:,.0f}",
                spread,
                latency(before),
                latency(during),
            )
        )
        achieved = drain.get("producer_achieved_rate")
        if achieved is not None:
            name = f"RECLAIM_MAX_RATE={drain['cap']:,.0f}" if drain["cap"] else "No cap"
            checks.append(
                f"{name}: the producer kept {achieved:,.0f} of {drain['producer_rate']:,.0f} tweets/s; "
                f"the monitor's peak RSS {drain['monitor']['rss_mb']:.0f} MB"
            )
        if drain["cap"] and windows:
            cap = drain["cap"]
            holds = max(windows) <= 1.1 * cap
            checks.append(
                f"At RECLAIM_MAX_RATE={cap:,.0f}, every 10-s window claimed {min(windows) / cap:.0%}-"
                f"{max(windows) / cap:.0%} of the cap ({meets(holds)} ≤ 110 %)"
            )
    lines += ["", *(f"- {check}" for check in checks)]
    return "\n".join(lines)


def latency(measured: dict[str, Any]) -> str:
    if not measured.get("count"):
        return "—"
    return f"{measured['p50_ms']:.1f} / {measured['p99_ms']:.1f} ms"


def meta_section(data: dict[str, Any], results: Path, chart_link: str | None) -> str:
    meta = data["meta"]
    libraries = ", ".join(f"{name} {version}" for name, version in meta["libraries"].items())
    servers = ", ".join(
        f"{role}: Redis {info.get('redis_version')}" for role, info in meta["servers"].items()
    )
    dirty = " (with uncommitted changes)" if meta["git_dirty"] else ""
    try:
        shown = results.resolve().relative_to(APP_ROOT)
    except ValueError:
        shown = results
    total = meta["total_seconds"] or 0
    return (
        f"Measured {meta['started_at']} on commit `{meta['git_commit'][:10]}`{dirty}, "
        f"{meta['machine']['cpus']} cores ({meta['machine']['platform']}), Python {meta['python']}; "
        f"{libraries}; "
        f"{servers}. The whole benchmark took {total / 60:.1f} min. Every number below is in `{shown}`."
    ) + (f"\n\n![The benchmark's chart]({chart_link})" if chart_link else "")


def sections(data: dict[str, Any], results: Path, chart_link: str | None = None) -> dict[str, str]:
    found = {"meta": meta_section(data, results, chart_link)}
    builders: dict[str, Callable[[dict[str, Any]], str | None]] = {
        "loopback": loopback_section,
        "azure": azure_section,
        "cap": cap_section,
    }
    for name, build in builders.items():
        text = build(data)
        if text is not None:
            found[name] = text
    return found


def update_docs(path: Path, found: dict[str, str]) -> list[str]:
    """Replace each generated section in the document; the names of those replaced."""
    text = path.read_text()
    replaced = []
    for name, body in found.items():
        pattern = re.compile(rf"(<!-- bench:{name}:start -->\n).*?(\n<!-- bench:{name}:end -->)", re.DOTALL)
        match = pattern.search(text)
        if match is not None:
            text = text[: match.start()] + match.group(1) + body + match.group(2) + text[match.end() :]
            replaced.append(name)
    path.write_text(text)
    return replaced


def color(approach: str) -> str:
    """One colour per contender in every panel."""
    return f"C{rank(approach)}"


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415  (only the report needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: PLC0415

    figure, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    rate_axis, memory_axis, rtt_axis, cap_axis = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    thousands = FuncFormatter(lambda value, _: f"{value:,.0f}")
    loopback = cells(data, "loopback")
    sizes = sorted({cell.size for cell in loopback})
    for approach in sorted({cell.approach for cell in loopback}, key=rank):
        line = sorted((cell for cell in loopback if cell.approach == approach), key=lambda cell: cell.size)
        style = {"marker": "o", "label": approach, "color": color(approach)}
        rate_axis.plot([cell.size for cell in line], [cell.rate for cell in line], **style)
        memory = [(cell.size, rss) for cell in line if (rss := cell.peak_rss()) is not None]
        if memory:
            memory_axis.plot([m[0] for m in memory], [m[1] for m in memory], **style)
    decorate(
        rate_axis,
        "Loopback (Redis 8.2, no TLS): throughput",
        "N (entries pending)",
        "messages/s",
        bool(loopback),
    )
    decorate(memory_axis, "Loopback: peak RSS of each process", "N (entries pending)", "MB", bool(loopback))
    if loopback:
        memory_axis.set_ylim(0, max(RSS_TARGET_MB * 1.15, memory_axis.get_ylim()[1]))
        memory_axis.axhline(RSS_TARGET_MB, color="grey", linestyle=":", linewidth=1)
        memory_axis.text(sizes[0], RSS_TARGET_MB, " target: 100 MB", va="bottom", fontsize=8, color="grey")
        for axis in (rate_axis, memory_axis):
            axis.set_xscale("log")
            axis.xaxis.set_minor_locator(NullLocator())
            axis.set_xticks(sizes, [f"{size:,}" for size in sizes])
    azure = [cell for cell in cells(data, "azure") if cell.rtt_ms is not None]
    largest = max((cell.group for cell in azure), default=0)
    for approach in sorted({cell.approach for cell in azure}, key=rank):
        line = sorted(
            (c for c in azure if c.approach == approach and c.group == largest),
            key=lambda cell: cell.rtt_ms or 0.0,
        )
        label = approach if all(c.size == largest for c in line) else f"{approach} (N={line[0].size:,})"
        measured = [measured_rtt(data, "azure", c.rtt_ms) for c in line]
        x = [m["median_ms"] if m else c.rtt_ms for m, c in zip(measured, line, strict=True)]
        rtt_axis.plot(x, [c.rate for c in line], marker="o", label=label, color=color(approach))
    decorate(
        rtt_axis,
        f"TLS through the latency proxy (N={largest:,}): throughput",
        "round trip: PING through the proxy, TLS, median (ms)",
        "messages/s",
        bool(azure),
    )
    for drain in data.get("cap") or []:
        points = drain["per_second"]
        label = f"RECLAIM_MAX_RATE={drain['cap']:,.0f}" if drain["cap"] else "no cap"
        marker = "o" if len(points) < 5 else None
        cap_axis.plot([p[0] for p in points], [p[1] for p in points], label=label, marker=marker)
        if drain["cap"]:
            cap_axis.axhline(drain["cap"], color="grey", linestyle=":", linewidth=1)
    decorate(
        cap_axis,
        "A drain beside live traffic: claims per second (server-side)",
        "seconds into the drain",
        "claims/s",
        bool(data.get("cap")),
    )
    for axis in (rate_axis, memory_axis, rtt_axis, cap_axis):
        axis.yaxis.set_major_formatter(thousands)
    meta = data["meta"]
    figure.suptitle(f"tweets-monitor benchmark, {meta['started_at']}, commit {meta['git_commit'][:10]}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def decorate(axis: Any, title: str, x: str, y: str, has_data: bool) -> None:
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    if not has_data:
        axis.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=axis.transAxes)
        return
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)


def report(results: Path, docs: Path | None, chart_path: Path | None) -> None:
    data = load(results)
    link = os.path.relpath(chart_path, docs.parent) if docs is not None and chart_path is not None else None
    found = sections(data, results, link)
    for name, text in found.items():
        print(f"\n## {name}\n\n{text}")
    if chart_path is not None:
        chart(data, chart_path)
        print(f"\nChart written to {chart_path}")
    if docs is not None:
        replaced = update_docs(docs, found)
        print(f"{docs}: sections {', '.join(replaced) or 'none'} updated")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="a bench/results/*.json file")
    parser.add_argument("--docs", type=Path, default=DOCS, help=f"the document to update (default {DOCS})")
    parser.add_argument("--chart", type=Path, default=CHART, help=f"the PNG to write (default {CHART})")
    parser.add_argument("--print-only", action="store_true", help="print the tables; write nothing")
    args = parser.parse_args(argv)
    if args.print_only:
        report(args.results, None, None)
    else:
        report(args.results, args.docs, args.chart)


if __name__ == "__main__":
    main()
