"""Summarise metrics.csv as Markdown.

A `py:` stage (`py: src.report:summarise`: pivotbuild calls `summarise`
with the stage's context), and a script too: report.py --metric rmse
REPORTS_DIR SUMMARY_MD.
"""

import argparse
import csv
import os
import statistics


def summarise(ctx):
    """The `report` stage: its dep is the reports directory, its out the summary."""
    write_summary(ctx.params["report"]["metric"], ctx.deps[0], ctx.outs[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metric", choices=["rmse", "mae"], required=True)
    ap.add_argument("reports_dir")
    ap.add_argument("summary")
    args = ap.parse_args()
    write_summary(args.metric, args.reports_dir, args.summary)


def write_summary(metric, reports_dir, summary):
    with open(os.path.join(reports_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(float(r[metric]))
    best = min(rows, key=lambda r: (float(r[metric]), r["model"]))

    lines = [
        "# Model report",
        "",
        f"Best model by {metric}: **{best['model']}** ({metric} {best[metric]})",
        "",
        f"| kind | runs | mean {metric} | stdev |",
        "|---|---|---|---|",
    ]
    for kind in sorted(by_kind):
        vals = by_kind[kind]
        stdev = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {kind} | {len(vals)} | {statistics.mean(vals):.4f} | {stdev:.4f} |")
    os.makedirs(os.path.dirname(summary) or ".", exist_ok=True)
    with open(summary, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
