"""Shuffle the raw data with a fixed seed and split it: split.py RAW TRAIN TEST."""

import csv
import os
import random
import sys

from common import read_params


def main():
    raw, train_out, test_out = sys.argv[1:4]
    p = read_params("split")
    with open(raw, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    random.Random(p["seed"]).shuffle(body)
    n_test = round(len(body) * p["test_fraction"])
    for path, part in ((test_out, body[:n_test]), (train_out, body[n_test:])):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(part)


if __name__ == "__main__":
    main()
