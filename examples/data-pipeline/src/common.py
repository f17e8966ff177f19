"""Helpers shared by the pipeline's scripts (standard library only)."""

import csv
import tomllib


def read_params(section, path="params.toml"):
    """One table of params.toml (the stage lists it under `params:`)."""
    with open(path, "rb") as f:
        return tomllib.load(f)[section]


def read_rows(path):
    """A CSV of floats -> (feature rows, targets); the last column is the target."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [[float(v) for v in row] for row in reader]
    return header, [r[:-1] for r in rows], [r[-1] for r in rows]


def write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def predict(model, x):
    return model["intercept"] + sum(c * v for c, v in zip(model["coefs"], x))
