"""Synthetic pipelines for the benchmarks: the layered DAG of ../shared/bench/gen.py."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_project(root: Path, width: int, depth: int) -> Path:
    """WIDTH x DEPTH stages; stage (l, k) cats its source and two outputs of layer l-1."""
    (root / ".pivot").mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    lines = []
    for layer in range(depth):
        for k in range(width):
            (root / f"src/{layer}_{k}.txt").write_text(f"source {layer} {k}\n")
            deps = [f"src/{layer}_{k}.txt"]
            if layer:
                deps += [f"out/{layer - 1}_{k}.txt", f"out/{layer - 1}_{(k + 1) % width}.txt"]
            lines += [f"stage s{layer}_{k}:", f"    deps: {' '.join(deps)}", f"    outs: out/{layer}_{k}.txt"]
            lines += ["    run: cat $^ > $@", ""]
    (root / "Pivotfile").write_text("\n".join(lines))
    return root


@pytest.fixture(scope="session")
def project_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("p1k"), 50, 20)
