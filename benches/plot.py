#!/usr/bin/env python3
"""Plots `uidflow bench --json` reports: throughput and p99 end-to-end latency against backlog size.

    python3 benches/plot.py docs/bench/block-n*.json -o docs/bench/backlog.png

Each report is one point (its `applications` is the backlog size in backlog mode). Needs
matplotlib (`pip install matplotlib`).
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="JSON files written by uidflow bench --json")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = parser.parse_args()

    points = []
    for path in args.reports:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        if report.get("mode", "backlog") != "backlog":
            print(f"{path}: not a backlog run; left out", file=sys.stderr)
            continue
        points.append(
            (
                report["applications"],
                report["applications_per_second"],
                report["latency_ms"]["end_to_end"]["p99"] / 1000.0,
                # uidflow's own process with --separate, else the bench process.
                (report.get("uidflow_process") or {}).get("peak_rss_mib", report.get("peak_rss_mib")),
                report["mix"],
            )
        )
    if not points:
        print("no backlog reports to plot", file=sys.stderr)
        return 1
    points.sort()
    sizes = [p[0] for p in points]
    mixes = sorted({p[4] for p in points})

    fig, throughput = plt.subplots(figsize=(8, 4.5))
    throughput.plot(sizes, [p[1] for p in points], "o-", color="tab:blue", label="applications/s")
    throughput.set_xscale("log")
    throughput.set_xlabel("backlog (applications queued before the start)")
    throughput.set_ylabel("applications/s end to end", color="tab:blue")
    throughput.set_ylim(0, max(p[1] for p in points) * 1.2)
    latency = throughput.twinx()
    latency.plot(sizes, [p[2] for p in points], "s--", color="tab:red", label="p99 end to end")
    latency.set_ylabel("p99 end-to-end latency (s)", color="tab:red")
    latency.set_ylim(bottom=0)
    for size, rate, _, rss, _ in points:
        if rss:
            throughput.annotate(f"{rss:.0f} MiB", (size, rate), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    throughput.set_title(f"uidflow bench, {', '.join(mixes)} mix, backlog mode (labels: peak RSS of uidflow)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output} ({len(points)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
