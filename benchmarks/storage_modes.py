#!/usr/bin/env python3
"""compare.py's protocol for pivotbuild's storage modes beside ninja, in one run.

    .venv/bin/python benchmarks/storage_modes.py [reverse]

For each of pivotbuild's default (copy into the cache), `checkout = "hardlink"`
and `--no-cache`, and for ninja: the lattice of compare.py (50 x 20 stages, big
outputs), a clean build, the median of 5 no-ops, and the median of 5
incremental builds after compare.py's edit.  `reverse` runs the tools in the
opposite order: on these machines the order matters (see docs/performance.md).
Prints seconds and each variant's ratio to ninja.
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import tempfile

import compare  # benchmarks/compare.py, beside this script

WIDTH, DEPTH, RUNS = 50, 20, 5
VARIANTS: dict[str, tuple[list[str], str | None]] = {
    "pivotbuild (copy, default)": (["pivotbuild", "-j", "2", "-s"], None),
    "pivotbuild checkout=hardlink": (["pivotbuild", "-j", "2", "-s"], '[core]\ncheckout = "hardlink"\n'),
    "pivotbuild --no-cache": (["pivotbuild", "-j", "2", "-s", "--no-cache"], None),
    "ninja": (["ninja", "-j", "2"], None),
}


def main() -> None:
    items = list(VARIANTS.items())
    if sys.argv[1:] == ["reverse"]:
        items.reverse()
    results: dict[str, tuple[float, float, float]] = {}
    stages = compare.lattice(WIDTH, DEPTH)
    with tempfile.TemporaryDirectory(prefix="pvmodes-") as tmp:
        for i, (name, (words, config)) in enumerate(items):
            root = pathlib.Path(tmp) / str(i)
            compare.generate(root, stages, words[0], "big")
            if config:
                (root / ".pivot" / "config.toml").write_text(config)
            program = compare.find(words[0])
            if program is None:
                raise SystemExit(f"storage_modes.py: {words[0]} is not on PATH")
            command = [program, *words[1:]]
            full = compare.timed(command, root)
            compare.check_outputs(root, stages, "big", name)
            noop = [compare.timed(command, root) for _ in range(RUNS)]
            incr = []
            for run in range(RUNS):
                compare.edit(root, WIDTH, DEPTH, run)
                incr.append(compare.timed(command, root))
            results[name] = (full, statistics.median(noop), statistics.median(incr))
    ninja = results["ninja"]
    print(f"{'variant':32}{'clean':>8}{'no-op':>8}{'incr':>8}   x ninja (clean / no-op / incr)")
    for name, (full, noop, incr) in results.items():
        ratios = f"{full / ninja[0]:.2f} / {noop / ninja[1]:.1f} / {incr / ninja[2]:.2f}"
        print(f"{name:32}{full:8.2f}{noop:8.3f}{incr:8.3f}   {ratios}")


if __name__ == "__main__":
    main()
