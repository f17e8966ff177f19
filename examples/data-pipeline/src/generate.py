"""Write a synthetic regression data set: y = 3*x1 - 2*x2 + 0.5*x3 + 4 + noise."""

import argparse
import csv
import os
import random

COEFS = (3.0, -2.0, 0.5)
INTERCEPT = 4.0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--noise", type=float, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["x1", "x2", "x3", "y"])
        for _ in range(args.rows):
            xs = [rng.uniform(-5.0, 5.0) for _ in COEFS]
            y = INTERCEPT + sum(c * x for c, x in zip(COEFS, xs)) + rng.gauss(0.0, args.noise)
            w.writerow([f"{v:.6f}" for v in (*xs, y)])


if __name__ == "__main__":
    main()
