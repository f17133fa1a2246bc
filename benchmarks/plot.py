"""Charts from the JSON results, for the documentation.

- `throughput_chart`: msgs/s per candidate, the median as a bar, min-max as error bars,
  each bar labelled with its ratio to raw aio-pika → `docs/benchmarks/throughput.png`.
- `memory_chart`: the consumer's RSS while it drains a backlog, with the queue depth
  → `docs/benchmarks/memory_backlog.png`.

Usage:
    python -m benchmarks.plot [--throughput FILE] [--memory FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _support as s

LABELS = {
    "raw_aiopika": "raw aio-pika",
    "raw_aiopika_multi": "raw aio-pika\n(multiple acks)",
    "raw_aiopika_otel": "raw aio-pika\n(+ telemetry)",
    "foxwork_bare": "foxwork\n(bare pool)",
    "foxwork_full": "foxwork\n(full chain)",
    "faststream_sub": "FastStream\n(no access log)",
    "faststream_logged": "FastStream\n(default logging)",
}
COLOURS = {
    "raw_aiopika": "#8c8c8c",
    "raw_aiopika_multi": "#a6a6a6",
    "raw_aiopika_otel": "#666666",
    "foxwork_bare": "#e8743b",
    "foxwork_full": "#c4501b",
    "faststream_sub": "#3b7dd8",
    "faststream_logged": "#7aa6e6",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:,.0f}")


def throughput_chart(source: Path, target: Path | None = None) -> Path:
    """Draw the throughput bar chart from a `throughput.json`; returns the PNG path."""
    plt = _pyplot()
    data = json.loads(source.read_text())
    meta, summary = data["meta"], data["summary"]
    names = [n for n in meta["candidates"] if summary[n]["runs"]]
    medians = [summary[n]["msgs_per_s"]["median"] for n in names]
    lows = [m - summary[n]["msgs_per_s"]["min"] for n, m in zip(names, medians, strict=True)]
    highs = [summary[n]["msgs_per_s"]["max"] - m for n, m in zip(names, medians, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    bars = ax.bar(
        [LABELS.get(n, n) for n in names],
        medians,
        yerr=[lows, highs],
        capsize=6,
        color=[COLOURS.get(n, "#999999") for n in names],
    )
    for bar, name in zip(bars, names, strict=True):
        ratio = summary[name]["ratio_to_baseline"]["median"]
        label = f"{bar.get_height():,.0f}/s"
        if ratio == ratio and name != meta["baseline"]:  # not NaN
            label += f"\nx{ratio:.2f}"
        ax.annotate(
            label,
            # Above the error bar's top, so that the whisker never runs through the label.
            (bar.get_x() + bar.get_width() / 2, summary[name]["msgs_per_s"]["max"]),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("messages per second (median; bars: min-max)")
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_ylim(0, max(summary[n]["msgs_per_s"]["max"] for n in names) * 1.25)
    machine = meta["machine_before"]
    ax.set_title(
        f"Consume → JSON decode → ack, {meta['messages']:,} persistent messages, "
        f"prefetch {meta['prefetch']}, {meta['rounds']} round(s)\n"
        f"RabbitMQ {meta['rabbitmq']} on the same {machine['cpus']}-CPU machine, "
        f"Python {meta['versions']['python']}, {machine['date'][:10]}",
        fontsize=9,
    )
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    target = target or s.CHARTS / "throughput.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return target


def memory_chart(source: Path, target: Path | None = None) -> Path:
    """Draw RSS (and queue depth) over time from a `memory_backlog.json`."""
    plt = _pyplot()
    data = json.loads(source.read_text())
    meta, samples = data["meta"], data["samples"]
    times = [x["t"] for x in samples]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(times, [x["rss_kib"] / 1024 for x in samples], color="#c4501b", label="RSS")
    ax.set_xlabel("seconds since the consumer started")
    ax.set_ylabel("consumer RSS, MiB")
    ax.set_ylim(bottom=0)
    depth = [(x["t"], x["ready"]) for x in samples if x.get("ready") is not None]
    if depth:
        ax2 = ax.twinx()
        ax2.plot(*zip(*depth, strict=True), color="#8c8c8c", linestyle="--", label="queue")
        ax2.set_ylabel("messages ready in the queue")
        ax2.yaxis.set_major_formatter(_thousands())
        ax2.set_ylim(bottom=0)
    summary = data["summary"]
    ax.set_title(
        f"{meta['candidate']} draining a backlog of {meta['messages']:,} messages "
        f"(prefetch {meta['prefetch']})\nRSS at first message "
        f"{summary['rss_start_mib']:.1f} MiB, peak {summary['rss_peak_mib']:.1f} MiB, "
        f"growth {summary['rss_growth_mib']:+.1f} MiB, {meta['machine']['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    target = target or s.CHARTS / "memory_backlog.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--throughput", type=Path, default=s.RESULTS / "throughput.json")
    parser.add_argument("--memory", type=Path, default=s.RESULTS / "memory_backlog.json")
    args = parser.parse_args(argv)
    drawn = 0
    for source, draw in ((args.throughput, throughput_chart), (args.memory, memory_chart)):
        if source.exists():
            print(draw(source))
            drawn += 1
        else:
            print(f"skipped: {source} does not exist (run the benchmark first)", file=sys.stderr)
    return 0 if drawn else 1


if __name__ == "__main__":
    sys.exit(main())
