"""Score models on the test set.

evaluate.py --test TEST_CSV --out-dir DIR MODEL_JSON...
writes DIR/<model>.txt for each model and DIR/metrics.csv with one row per model.
"""

import argparse
import json
import math
import os

from common import predict, read_rows, write_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()

    _, xs, ys = read_rows(args.test)
    os.makedirs(args.out_dir, exist_ok=True)
    table = []
    for path in args.models:
        with open(path) as f:
            model = json.load(f)
        name = os.path.splitext(os.path.basename(path))[0]
        errors = [predict(model, x) - y for x, y in zip(xs, ys)]
        rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
        mae = sum(abs(e) for e in errors) / len(errors)
        table.append([name, model["kind"], model["seed"], f"{rmse:.4f}", f"{mae:.4f}"])
        with open(os.path.join(args.out_dir, f"{name}.txt"), "w") as f:
            f.write(f"model      {name}\n")
            f.write(f"kind       {model['kind']}\n")
            f.write(f"intercept  {model['intercept']:.4f}\n")
            f.write("coefs      " + " ".join(f"{c:.4f}" for c in model["coefs"]) + "\n")
            f.write(f"test rows  {len(ys)}\n")
            f.write(f"rmse       {rmse:.4f}\n")
            f.write(f"mae        {mae:.4f}\n")
    table.sort()
    write_rows(os.path.join(args.out_dir, "metrics.csv"), ["model", "kind", "seed", "rmse", "mae"], table)


if __name__ == "__main__":
    main()
