"""Summarise metrics.csv as Markdown: report.py --metric rmse REPORTS_DIR SUMMARY_MD."""

import argparse
import csv
import os
import statistics


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metric", choices=["rmse", "mae"], required=True)
    ap.add_argument("reports_dir")
    ap.add_argument("summary")
    args = ap.parse_args()

    with open(os.path.join(args.reports_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(float(r[args.metric]))
    best = min(rows, key=lambda r: (float(r[args.metric]), r["model"]))

    lines = [
        "# Model report",
        "",
        f"Best model by {args.metric}: **{best['model']}** ({args.metric} {best[args.metric]})",
        "",
        f"| kind | runs | mean {args.metric} | stdev |",
        "|---|---|---|---|",
    ]
    for kind in sorted(by_kind):
        vals = by_kind[kind]
        stdev = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {kind} | {len(vals)} | {statistics.mean(vals):.4f} | {stdev:.4f} |")
    os.makedirs(os.path.dirname(args.summary) or ".", exist_ok=True)
    with open(args.summary, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
