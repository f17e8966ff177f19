"""Benchmarks of loading and saving a 10,000-stage lockfile (pivotbuild.state.lockfile)
whose records look like a real build's: 3 deps, 1 out, XXH3-128 hex hashes, the
three fingerprint facets; the stages of ../shared/bench/gen.py at width 100 x depth 100."""

from __future__ import annotations

from pathlib import Path

import pytest
import xxhash
from pytest_benchmark.fixture import BenchmarkFixture

from pivotbuild.state import lockfile
from pivotbuild.state.records import FileRecord, LockData, StageRecord

WIDTH, DEPTH = 100, 100


def h(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode())


def lock_data(width: int, depth: int) -> LockData:
    records = {}
    for layer in range(depth):
        for k in range(width):
            name = f"s{layer}_{k}"
            up = (layer - 1) % depth  # every record has 3 deps, layer 0 too: the lockfile cares not
            deps = [f"src/{layer}_{k}.txt", f"out/{up}_{k}.txt", f"out/{up}_{(k + 1) % width}.txt"]
            out = f"out/{layer}_{k}.txt"
            records[name] = StageRecord(
                name=name,
                fingerprint=h(f"fingerprint {name}"),
                command=f"cat {' '.join(deps)} > {out}",
                deps=tuple(FileRecord(d, "file", h(d)) for d in deps),
                outs=(FileRecord(out, "file", h(out)),),
                params=(),
                facets=(("shell", h("shell")), ("env", h(f"env {name}")), ("outs", h(out))),
            )
    return LockData.of(records)


@pytest.fixture(scope="module")
def data() -> LockData:
    return lock_data(WIDTH, DEPTH)


def test_lockfile_save_10k(benchmark: BenchmarkFixture, data: LockData, tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"

    def fresh() -> None:
        path.unlink(missing_ok=True)  # write() skips a file that already holds these bytes

    assert benchmark.pedantic(lockfile.write, (path, data), setup=fresh, rounds=10) is True
    assert len(data.stages) == WIDTH * DEPTH
    assert lockfile.decode(path.read_bytes()) == data
    assert lockfile.write(path, data) is False  # deterministic: the same bytes again


def test_lockfile_load_10k(benchmark: BenchmarkFixture, data: LockData, tmp_path: Path) -> None:
    path = tmp_path / "Pivotfile.lock"
    assert lockfile.write(path, data)
    loaded = benchmark(lockfile.read, path)
    assert loaded == data
    assert loaded.by_name()["s99_99"].deps[2].path == "out/98_0.txt"
    assert lockfile.encode(loaded) == path.read_bytes()


def test_lockfile_open_10k(benchmark: BenchmarkFixture, data: LockData, tmp_path: Path) -> None:
    """What a build pays: `lockfile.read_records`, records decoded only as asked for."""
    path = tmp_path / "Pivotfile.lock"
    assert lockfile.write(path, data)
    records = benchmark(lockfile.read_records, path)
    assert len(records) == WIDTH * DEPTH
    assert records.get("s99_99") == data.by_name()["s99_99"]
    assert lockfile.encode(records) == path.read_bytes()  # untouched records write back byte for byte
