"""The lattice of stages the reliability campaigns build (the shape of
benchmarks/compare.py, small): stage (l, k) reads its source src/l_k.txt and,
below the first layer, the outputs of stages (l-1, k) and (l-1, (k+1) % width).

Each stage logs `start NAME PID` and `end NAME` to a file outside the project,
writes its deps, sleeps a little (a seeded choice), then appends its name, so a
kill mid-stage leaves a half-written output behind. With `gate`, a stage first
waits (up to 30 s) for that file to exist.
"""

from __future__ import annotations

import random
from pathlib import Path

from conftest import Project


def deps_of(layer: int, k: int, width: int) -> list[str]:
    deps = [f"src/{layer}_{k}.txt"]
    if layer:
        deps += [f"out/{layer - 1}_{k}.txt", f"out/{layer - 1}_{(k + 1) % width}.txt"]
    return deps


def write_lattice(
    project: Project, width: int, depth: int, log: Path, rng: random.Random, *, gate: Path | None = None
) -> None:
    """The Pivotfile and the sources."""
    wait = f"        for i in $(seq 3000); do [ -e {gate} ] && break; sleep 0.01; done\n" if gate else ""
    parts = []
    for layer in range(depth):
        for k in range(width):
            name = f"s{layer}_{k}"
            nap = rng.choice(["0.02", "0.03", "0.05", "0.08"])
            parts.append(
                f"stage {name}:\n"
                f"    deps: {' '.join(deps_of(layer, k, width))}\n"
                f"    outs: out/{layer}_{k}.txt\n"
                f"    run:\n"
                f"{wait}"
                f"        echo start {name} $$$$ >> {log}\n"
                f"        cat $^ > $@\n"
                f"        sleep {nap}\n"
                f"        echo {name} >> $@\n"
                f"        echo end {name} >> {log}\n"
            )
            project.write(f"src/{layer}_{k}.txt", f"source {layer} {k}\n")
    project.write("Pivotfile", "\n".join(parts))


def expected(root: Path, width: int, depth: int) -> dict[str, bytes]:
    """What every output must hold, computed from the sources as they are now."""
    out: dict[str, bytes] = {}
    for layer in range(depth):
        for k in range(width):
            deps = deps_of(layer, k, width)
            data = (root / deps[0]).read_bytes() + b"".join(out[d] for d in deps[1:])
            out[f"out/{layer}_{k}.txt"] = data + f"s{layer}_{k}\n".encode()
    return out


def edit_sources(root: Path, width: int, depth: int, rng: random.Random, tag: str) -> list[str]:
    """Append a line to one to four random sources; return them."""
    edited = []
    for _ in range(rng.randint(1, 4)):
        rel = f"src/{rng.randrange(depth)}_{rng.randrange(width)}.txt"
        path = root / rel
        path.write_text(path.read_text() + f"edit {tag}\n")
        edited.append(rel)
    return edited


def assert_outputs(root: Path, width: int, depth: int, where: str = "") -> None:
    for rel, data in expected(root, width, depth).items():
        assert (root / rel).read_bytes() == data, f"{where}: {rel} is wrong".lstrip(": ")
