"""The suite's report: Markdown tables, the targets of the issue, and PNG plots.

``markdown()`` renders the results; ``write_docs()`` puts that text into
``docs/benchmarks.md`` between the markers ``BEGIN`` and ``END`` and writes the plots
next to it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lookups
import matplotlib
import scaling
import zipf

matplotlib.use("Agg")
from matplotlib import pyplot as plt

BEGIN = "<!-- benchmark suite results: begin (written by benchmarks/suite.py) -->"
END = "<!-- benchmark suite results: end -->"

PLOTS = {
    "lookups": "bench-lookups.png",
    "batches": "bench-batches.png",
    "commits": "bench-commits.png",
    "zipf": "bench-zipf.png",
    "scaling": "bench-scaling.png",
}

Target = tuple[str, str, str, bool]


def _x(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _us(us: float) -> str:
    if us >= 10_000:
        return f"{us / 1000:,.1f} ms"
    return f"{us:,.0f} µs" if us >= 100 else f"{us:.1f} µs"


def _plural(count: str, word: str) -> str:
    return f"{int(count):,} {word}{'' if count == '1' else 'es' if word.endswith('s') else 's'}"


# -- targets ---------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[Target]:
    """``(target, measured, goal, met)`` for every target of the issue that was run."""
    rows: list[Target] = []

    def at_least(name: str, ratio: float, goal: float) -> None:
        shown = _x(ratio)
        if ratio < goal <= float(shown[:-1]):
            shown = f"{math.floor(ratio * 100) / 100:.2f}x"  # a miss never rounds up onto it
        rows.append((name, shown, f"≥ {goal:g}x", ratio >= goal))

    def at_most(name: str, ratio: float, goal: float) -> None:
        shown = _x(ratio)
        if ratio > goal >= float(shown[:-1]):
            shown = f"{math.ceil(ratio * 100) / 100:.2f}x"  # a miss never rounds down onto it
        rows.append((name, shown, f"≤ {goal:g}x", ratio <= goal))

    redis_layers = (
        (lookups.REDIS_ONLY, "chain [Redis, db]"),
        (lookups.REDIS, "chain [memory, Redis, db], filling memory"),
    )
    single = results.get("lookups", {}).get("single", {}).get("primary key")
    if single:
        at_least(
            "memory-layer lookup vs `Session.get` (PostgreSQL)",
            single[lookups.MEMORY]["faster"],
            30,
        )
        for name, label in redis_layers:
            at_least(f"Redis-layer lookup, {label}, vs `Session.get`", single[name]["faster"], 4)
        dogpile = single[lookups.DOGPILE]["us"]
        for name, label in redis_layers:
            at_least(
                f"Redis-layer lookup, {label}, vs dogpile.cache (ratio of the medians)",
                dogpile / single[name]["us"],
                2,
            )
    batches = results.get("lookups", {}).get("batch", {})
    fresh = results.get("lookups", {}).get("fresh", {})
    for when, batch in (("fresh process", fresh), ("after warm-up", batches.get("1000"))):
        if not batch:
            continue
        for name, label, goal in (
            (lookups.REDIS_ONLY, "from Redis, chain [Redis, db]", 2),
            (lookups.REDIS, "from Redis, chain [memory, Redis, db], filling memory", 1.5),
            (lookups.MEMCACHED, "from memcached, [memory, memcached, db], filling memory", 1.5),
            (lookups.MEMORY, "from the memory layer", 3),
        ):
            at_least(
                f"`batch_get(1,000)` {label}, vs one `IN` query ({when})",
                batch[name]["faster"],
                goal,
            )
    if fresh and batches.get("1000"):
        drift = max(
            (abs(batches["1000"][name]["faster"] / figures["faster"] - 1), name)
            for name, figures in fresh.items()
            if name in batches["1000"]
        )
        rows.append(
            (
                "`batch_get(1,000)` after warm-up vs in a fresh process, each case's ratio to"
                f" the `IN` query (the furthest apart: {drift[1]})",
                f"{drift[0]:.0%} apart",
                "within 10%",
                drift[0] <= 0.10,
            )
        )
    if batches:
        slowest = min(
            (figures["faster"], size, name)
            for size, cases in batches.items()
            for name, figures in cases.items()
            if name.startswith("sa_stockpyle")
        )
        at_least(
            f"every chain's `batch_get` at {', '.join(f'{int(n):,}' for n in batches)} keys vs"
            f" one `IN` query (the slowest: {slowest[2].removeprefix('sa_stockpyle: ')},"
            f" {int(slowest[1]):,} keys)",
            slowest[0],
            1,
        )
    signing = results.get("lookups", {}).get("signing", {})
    for table, label in (
        ("primary key", "lookup by `id`"),
        ("alternate key", "lookup by `email`"),
        ("1000", "`batch_get(1,000)`"),
    ):
        if table in signing:
            at_most(
                f"Redis-layer {label}, chain [Redis, db]: with a `signing_key` / without",
                signing[table],
                1.05,
            )
    memory = results.get("scaling", {}).get("count", {}).get("memory", {}).get("1000000")
    if memory and "p50_us" in memory:
        at_most(
            "memory layer holding 1,000,000 objects: p99 of `get` / its p50",
            memory["p99_us"] / memory["p50_us"],
            5,
        )
    for kind, by_rows in results.get("commits", {}).items():
        for count, figures in by_rows.items():
            ratio = figures["ratio"]
            rows.append(
                (
                    f"commit of {_plural(count, 'row')}, {kind}: attached / plain",
                    _x(ratio),
                    "≤ 1.25x",
                    ratio <= 1.25,
                )
            )
    for count, figures in results.get("zipf", {}).get(zipf.CACHED, {}).items():
        sql = figures["sql_per_1000_lookups"]
        rows.append(
            (
                f"Zipf workload, {_plural(count, 'process')}, {zipf.CACHED}: "
                "SQL per 1,000 lookups",
                f"{sql:.1f}",
                "≤ 10",
                sql <= 10,
            )
        )
    return rows


# -- Markdown --------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _lookups(results: dict[str, Any]) -> str:
    single = results["single"]
    by_pk, by_alt = single["primary key"], single["alternate key"]
    rows = []
    for name, figures in by_pk.items():
        alt = by_alt.get(name)
        rows.append(
            [
                name,
                _us(figures["us"]),
                _x(figures["faster"]),
                _us(alt["us"]) if alt else "",
                _x(alt["faster"]) if alt else "",
            ]
        )
    text = _table(
        ["lookup of one user", "by `id`", "vs PostgreSQL", "by `email`", "vs PostgreSQL"], rows
    )
    batch = results["batch"]
    sizes = list(batch)
    rows = []
    for name in batch[sizes[0]]:
        rows.append(
            [name]
            + [f"{_us(batch[s][name]['us'])} ({_x(batch[s][name]['faster'])})" for s in sizes]
        )
    text += "\n\n### 2. Batches\n\n" + (
        "Each cell: the time of the whole batch, and in brackets how many times faster than "
        "the `IN` query of the same keys in the same rounds.\n\n"
    )
    text += _table(["keys", *(f"{int(s):,}" for s in sizes)], rows)
    fresh, size = results.get("fresh"), str(lookups.FRESH_SIZE)
    if fresh and size in batch:
        warm = batch[size]
        text += (
            f"\n\nBatches of {int(size):,} keys in a fresh process that did nothing else, and"
            " in the suite's process after the single lookups and the smaller batches"
            " (the table above); each against the `IN` query timed beside it:\n\n"
        )
        text += _table(
            ["case", "fresh process", "after the other lookups", "after / fresh"],
            [
                [
                    name,
                    f"{_us(fresh[name]['us'])} ({_x(fresh[name]['faster'])})",
                    f"{_us(warm[name]['us'])} ({_x(warm[name]['faster'])})",
                    _x(warm[name]["faster"] / fresh[name]["faster"]),
                ]
                for name in fresh
                if name in warm
            ],
        )
    return text


def _commits(results: dict[str, Any]) -> str:
    kinds = list(results)
    rows = []
    for count in results[kinds[0]]:
        row = [f"{int(count):,}"]
        for kind in kinds:
            figures = results[kind][count]
            row += [
                f"{figures['plain_ms']:.2f}",
                f"{figures['attached_ms']:.2f}",
                _x(figures["ratio"]),
            ]
        rows.append(row)
    header = ["rows"]
    for kind in kinds:
        header += [f"{kind}: plain ms", "attached ms", "ratio"]
    return _table(header, rows)


def _zipf(results: dict[str, Any]) -> str:
    rows = []
    counts = list(next(iter(results.values())))
    for count in counts:
        for run, by_count in results.items():
            f = by_count[count]
            hits = f["hit_ratio"]
            rows.append(
                [
                    count,
                    run,
                    f"{f['throughput']:,.0f}",
                    f"{f['lookup_p50_ms']:.2f}",
                    f"{f['lookup_p99_ms']:.2f}",
                    f"{f['update_p50_ms']:.2f}",
                    f"{f['update_p99_ms']:.2f}",
                    f"{hits['memory']:.1%}" if "memory" in hits else "n/a",
                    f"{hits['Redis']:.1%}" if "Redis" in hits else "n/a",
                    f"{f['sql_per_1000_lookups']:.1f}",
                    f"{f['conflicts']:,}",
                    f"{f['broadcast'].get('flushes', 0):,}" if f["broadcast"] else "n/a",
                ]
            )
    return _table(
        [
            "processes",
            "run",
            "operations/s",
            "lookup p50 ms",
            "lookup p99 ms",
            "update p50 ms",
            "update p99 ms",
            "memory hit ratio",
            "Redis hit ratio",
            "SQL per 1,000 lookups",
            "update conflicts",
            "memory layers cleared (broadcast lost)",
        ],
        rows,
    )


def _scaling(results: dict[str, Any]) -> str:
    by_count = results["count"]
    sizes = sorted({int(s) for layer in by_count.values() for s in layer})
    rows = []
    for size in sizes:
        row = [f"{size:,}"]
        for layer in ("memory", "Redis"):
            figures = by_count[layer].get(str(size))
            row += [_us(figures["us"]), _x(figures["growth"])] if figures else ["n/a", "n/a"]
        rows.append(row)
    text = _table(
        ["objects cached", "memory `get`", "vs 1,000 cached", "Redis `get`", "vs 1,000 cached"],
        rows,
    )
    rows = [
        [
            f"{int(size):,}",
            _us(f["p50_us"]),
            _us(f["p99_us"]),
            _x(f["p99_us"] / f["p50_us"]),
            f"{f['collections']:,}",
            f"{f['longest_pause_ms']:.1f} ms",
            f"{f['full_collection_ms']:.1f} ms",
            f"{f['tracked']:,}",
        ]
        for size, f in by_count["memory"].items()
        if "p50_us" in f
    ]
    if rows:
        text += (
            f"\n\nThe memory `get` above, {scaling.LATENCY_CALLS:,} lookups timed one by one"
            " at each size, with the garbage collector's pauses among them, one full"
            " collection of the heap timed after them, and the objects the collector"
            " tracks:\n\n"
        )
        text += _table(
            [
                "objects cached",
                "p50",
                "p99",
                "p99 / p50",
                "collections during the lookups",
                "longest",
                "a full collection",
                "objects tracked",
            ],
            rows,
        )
    by_columns = results["columns"]
    names = list(next(iter(by_columns.values())))
    rows = []
    for columns, cases in by_columns.items():
        row = [columns]
        for name in names:
            figures = cases[name]
            cell = _us(figures["us"])
            if name != scaling.POSTGRES:
                cell += f" ({_x(figures['faster'])})"
            row.append(cell)
        rows.append(row)
    text += "\n\n" + _table(["columns", *names], rows)
    return text


def markdown(environment: dict[str, str], results: dict[str, Any], runtime: float) -> str:
    """The whole report, for the docs and for the terminal."""
    parts = [
        f"Measured on {environment['date']} on {environment['machine']} "
        f"({environment['os']}); sa_stockpyle at {environment['revision']}; "
        f"{environment['python']}; {environment['packages']}; "
        f"{environment.get('servers', '')}.  The whole command took {runtime / 60:.1f} "
        "minutes.",
    ]
    found = targets(results)
    if found:
        parts.append("### The targets")
        parts.append(
            _table(
                ["target", "measured", "goal", "met"],
                [
                    [name, value, goal, "yes" if met else "**no**"]
                    for name, value, goal, met in found
                ],
            )
        )
    if "lookups" in results:
        parts.append("### 1. Single-key lookups")
        parts.append(_lookups(results["lookups"]))
        parts.append(f"![Single lookups and batches]({PLOTS['lookups']})")
        parts.append(f"![Batches]({PLOTS['batches']})")
    if "commits" in results:
        parts.append("### 3. Commit overhead of `attach()`")
        parts.append(_commits(results["commits"]))
        parts.append(f"![Commit overhead]({PLOTS['commits']})")
    if "zipf" in results:
        parts.append("### 4. Zipf workload")
        parts.append(_zipf(results["zipf"]))
        parts.append(f"![Zipf workload]({PLOTS['zipf']})")
    if "scaling" in results:
        parts.append("### 5. Scaling")
        parts.append(_scaling(results["scaling"]))
        parts.append(f"![Scaling]({PLOTS['scaling']})")
    return "\n\n".join(parts) + "\n"


# -- plots -----------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.replace("sa_stockpyle: ", "").replace(" (FromCache, merge_frozen_result)", "")


def plot_lookups(results: dict[str, Any], path: Path) -> None:
    single = results["single"]
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    names = list(single["primary key"])
    for axis, (kind, table) in zip(axes, single.items(), strict=True):
        values = [table[name]["us"] if name in table else 0 for name in names]
        colours = ["#888888" if "sa_stockpyle" not in n else "#1f77b4" for n in names]
        bars = axis.barh(range(len(names)), values, color=colours)
        for bar, name in zip(bars, names, strict=True):
            if name in table:
                axis.text(
                    bar.get_width(),
                    bar.get_y() + bar.get_height() / 2,
                    f" {_x(table[name]['faster'])}",
                    va="center",
                    fontsize=9,
                )
        axis.set_xscale("log")
        axis.set_xlabel("µs per lookup (log scale); label: times faster than PostgreSQL")
        axis.set_title(f"one lookup by {kind}")
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), [_short(n) for n in names], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_batches(results: dict[str, Any], path: Path) -> None:
    batch = results["batch"]
    sizes = [int(s) for s in batch]
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name in batch[str(sizes[0])]:
        per_key = [batch[str(s)][name]["us"] / s for s in sizes]
        faster = [batch[str(s)][name]["faster"] for s in sizes]
        style = "--" if name == lookups.IN_QUERY else "-"
        axes[0].plot(sizes, per_key, style, marker="o", label=_short(name))
        axes[1].plot(sizes, faster, style, marker="o", label=_short(name))
    axes[0].set(xscale="log", yscale="log", xlabel="keys per batch", ylabel="µs per key")
    axes[0].set_title("batch_get: time per key")
    axes[1].axhline(
        2.5, color="red", linewidth=0.8, linestyle=":", label="target for Redis, 1,000 keys"
    )
    axes[1].set(xscale="log", xlabel="keys per batch", ylabel="x faster than the IN query")
    axes[1].set_title("batch_get against one IN query")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_commits(results: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for kind, by_rows in results.items():
        rows = [int(r) for r in by_rows]
        axis.plot(rows, [by_rows[str(r)]["ratio"] for r in rows], marker="o", label=kind)
    axis.axhline(1.25, color="red", linewidth=0.8, linestyle=":", label="target: 1.25x")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set(xscale="log", xlabel="rows changed in the commit", ylabel="attached / plain commit")
    axis.set_title("commit time with attach() against without")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_zipf(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for run, by_count in results.items():
        counts = [int(c) for c in by_count]
        figures = [by_count[str(c)] for c in counts]
        axes[0].plot(counts, [f["throughput"] for f in figures], marker="o", label=run)
        axes[1].plot(counts, [f["lookup_p99_ms"] for f in figures], marker="o", label=run)
        axes[2].plot(counts, [f["sql_per_1000_lookups"] for f in figures], marker="o", label=run)
    axes[0].set(xlabel="processes", ylabel="operations per second", title="throughput")
    axes[1].set(xlabel="processes", ylabel="ms", title="lookup latency, p99", yscale="log")
    axes[2].axhline(10, color="red", linewidth=0.8, linestyle=":", label="target: 10")
    axes[2].set_yscale("symlog", linthresh=1)
    axes[2].set_ylim(bottom=0, top=3000)
    axes[2].set(xlabel="processes", ylabel="statements", title="SQL per 1,000 lookups")
    for axis in axes:
        axis.set_xticks([int(c) for c in next(iter(results.values()))])
        axis.grid(alpha=0.3)
    handles, labels = axes[2].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_scaling(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for layer, by_size in results["count"].items():
        sizes = [int(s) for s in by_size]
        axes[0].plot(sizes, [by_size[str(s)]["us"] for s in sizes], marker="o", label=layer)
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="objects cached",
        ylabel="µs per store.get",
        title="lookup cost against objects cached",
    )
    by_columns = results["columns"]
    columns = [int(c) for c in by_columns]
    for name in next(iter(by_columns.values())):
        style = "--" if name == scaling.POSTGRES else "-"
        values = [by_columns[str(c)][name]["us"] for c in columns]
        axes[1].plot(columns, values, style, marker="o", label=name)
    axes[1].set(
        yscale="log",
        xlabel="columns per object",
        ylabel="µs per lookup (fresh session)",
        title="lookup cost against object size",
    )
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center right")
    axes[1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_plots(results: dict[str, Any], folder: Path) -> None:
    """Write a PNG of every part that ran into ``folder``."""
    if "lookups" in results:
        plot_lookups(results["lookups"], folder / PLOTS["lookups"])
        plot_batches(results["lookups"], folder / PLOTS["batches"])
    if "commits" in results:
        plot_commits(results["commits"], folder / PLOTS["commits"])
    if "zipf" in results:
        plot_zipf(results["zipf"], folder / PLOTS["zipf"])
    if "scaling" in results:
        plot_scaling(results["scaling"], folder / PLOTS["scaling"])


def write_docs(text: str, results: dict[str, Any], page: Path) -> None:
    """Replace the generated part of ``page`` with ``text``; write the plots beside it."""
    content = page.read_text()
    start, end = content.find(BEGIN), content.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{page} has no {BEGIN!r} ... {END!r} section to replace")
    page.write_text(content[: start + len(BEGIN)] + "\n\n" + text + "\n" + content[end:])
    write_plots(results, page.parent)
