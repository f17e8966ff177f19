"""Fit one model on a bootstrap sample of the training data and save it as JSON.

Models: `mean` predicts the mean target; `linear` is ridge regression solved
with the normal equations.  train.py --model KIND --seed N TRAIN_CSV MODEL_JSON
"""

import argparse
import json
import os
import random

from common import read_params, read_rows


def solve(a, b):
    """Solve a x = b by Gaussian elimination with partial pivoting."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def fit_linear(xs, ys, ridge):
    rows = [[1.0, *x] for x in xs]  # a leading 1 for the intercept
    k = len(rows[0])
    xtx = [[sum(r[i] * r[j] for r in rows) for j in range(k)] for i in range(k)]
    for i in range(1, k):  # do not penalise the intercept
        xtx[i][i] += ridge * len(rows)
    xty = [sum(r[i] * y for r, y in zip(rows, ys)) for i in range(k)]
    w = solve(xtx, xty)
    return w[0], w[1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=["mean", "linear"], required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("train_csv")
    ap.add_argument("model_json")
    args = ap.parse_args()
    p = read_params("train")

    _, xs, ys = read_rows(args.train_csv)
    rng = random.Random(args.seed)
    n = max(1, round(len(ys) * p["sample_fraction"]))
    picks = [rng.randrange(len(ys)) for _ in range(n)]
    xs, ys = [xs[i] for i in picks], [ys[i] for i in picks]

    if args.model == "mean":
        intercept, coefs = sum(ys) / len(ys), [0.0] * len(xs[0])
    else:
        intercept, coefs = fit_linear(xs, ys, p["ridge"])

    model = {
        "kind": args.model,
        "seed": args.seed,
        "rows": n,
        "intercept": round(intercept, 6),
        "coefs": [round(c, 6) for c in coefs],
    }
    os.makedirs(os.path.dirname(args.model_json) or ".", exist_ok=True)
    with open(args.model_json, "w") as f:
        json.dump(model, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
