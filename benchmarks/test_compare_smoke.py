"""compare.py, run small: pivotbuild, make and ninja build the same 3 x 2 lattice
and write the same bytes (no timings are asserted)."""

from __future__ import annotations

import os
from pathlib import Path

import compare
import pytest

TOOLS = ["pivotbuild", "make", "ninja"]


@pytest.mark.parametrize("shape", ["big", "small"])
def test_the_tools_write_identical_outputs(tmp_path: Path, shape: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--tools", ",".join(TOOLS), "--width", "3", "--depth", "2", "--runs", "1", "--shape", shape]
    assert compare.main([*args, "--dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"6 stages (3 x 2, {shape} outputs), -j2")
    assert [line.split()[0] for line in table.splitlines()[2:]] == TOOLS

    outs = sorted(p.relative_to(tmp_path / "make") for p in (tmp_path / "make" / "out").iterdir())
    assert len(outs) == 6
    for rel in outs:
        assert len({(tmp_path / tool / rel).read_bytes() for tool in TOOLS}) == 1, rel
    # The edits of the incremental build reached the outputs below the edited source.
    first = (tmp_path / "pivotbuild" / "out" / "1_0.txt").read_bytes()
    if shape == "big":
        assert first.startswith(b"source 1 0\nedit 0\n")
    else:
        assert first.count(b"\n") == 3


def test_a_tool_that_writes_a_wrong_output_is_caught(tmp_path: Path) -> None:
    stages = compare.lattice(2, 2)
    compare.generate(tmp_path, stages, "make", "big")
    compare.timed(["make", "-s"], tmp_path)
    (tmp_path / "out" / "1_1.txt").write_text("wrong\n")
    with pytest.raises(SystemExit, match=r"make wrote a wrong out/1_1.txt"):
        compare.check_outputs(tmp_path, stages, "big", "make")


def test_the_storage_references_build_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools = ["pivotbuild:hardlink", "ninja+cp"]
    args = ["--tools", ",".join(tools), "--width", "3", "--depth", "2", "--runs", "1", "--dir", str(tmp_path)]
    assert compare.main(args) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == tools
    assert '"hardlink"' in (tmp_path / "pivotbuild-hardlink" / ".pivot" / "config.toml").read_text()
    copied = tmp_path / "cpcache" / "out" / "1_0.txt"  # ninja+cp's copy of what ninja wrote
    assert copied.read_bytes() == (tmp_path / "ninja+cp" / "out" / "1_0.txt").read_bytes()


def test_tidy_removes_each_project_and_syncs_before_the_next_tools_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[str] = []
    timed = compare.timed

    def timing(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
        events.append(f"build {cwd.name}")
        return timed(cmd, cwd, env)

    def syncing() -> None:
        events.append("sync " + ",".join(sorted(p.name for p in tmp_path.iterdir())))

    monkeypatch.setattr(compare, "timed", timing)
    monkeypatch.setattr(os, "sync", syncing)
    tools = ["make", "ninja+cp"]
    args = ["--tools", ",".join(tools), "--width", "2", "--depth", "2", "--runs", "1", "--tidy", "--dir", str(tmp_path)]
    assert compare.main(args) == 0
    # (each tool: clean, no-op, incremental, then its project gone before the sync; ninja+cp's copies too)
    assert events == ["build make"] * 3 + ["sync "] + ["build ninja+cp"] * 3 + ["sync "]
    lines = capsys.readouterr().out.splitlines()
    assert ", each project removed and synced before the next tool's;" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == tools  # (the outputs were checked before the removal)


def test_warm_frees_its_memory_right_before_each_clean_and_incremental_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[str] = []
    release, timed = compare.warm, compare.timed

    def releasing(mb: int) -> None:
        events.append(f"released {mb << 20}")
        release(mb)

    def timing(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
        events.append("build")
        return timed(cmd, cwd, env)

    monkeypatch.setattr(compare, "warm", releasing)
    monkeypatch.setattr(compare, "timed", timing)
    args = ["--tools", "make", "--width", "2", "--depth", "2", "--runs", "2", "--warm", "3", "--dir", str(tmp_path)]
    assert compare.main(args) == 0
    warm = [f"released {3 << 20}", "build"]
    assert events == [*warm, "build", "build", *warm, *warm]  # clean, two no-ops (none before them), two incremental
    assert ", 3 MB freed before each clean and incremental build;" in capsys.readouterr().out.splitlines()[0]


def test_the_warmer_writes_its_memory_then_lets_it_go(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int]] = []
    write_out = compare.write_out

    def spying(fd: int, size: int) -> None:
        write_out(fd, size)
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size, fd))

    monkeypatch.setattr(compare, "write_out", spying)
    compare.warm(0)
    assert seen == []  # (no --warm: nothing written)
    compare.warm(2)
    [(what, size, fd)] = seen
    assert what.startswith("/memfd:pvcompare-warm") and size == 2 << 20  # in memory, never on disk
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: its memory freed


def test_orders_run_every_tool_again_in_reverse_and_give_the_medians(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cleans: list[str] = []  # (which tool's project each clean build ran in, in order)
    timed = compare.timed

    def timing(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
        timed(cmd, cwd, env)
        if not (cwd / ".first").exists():
            (cwd / ".first").touch()
            cleans.append(f"{cwd.parent.name}/{cwd.name}")
        return {"order0": 1.0, "order1": 3.0, "order2": 8.0}[cwd.parent.name]  # (medians: 3.0)

    monkeypatch.setattr(compare, "timed", timing)
    args = ["--tools", "make,ninja", "--width", "2", "--depth", "2", "--runs", "1", "--orders", "3"]
    assert compare.main([*args, "--dir", str(tmp_path)]) == 0
    assert cleans == ["order0/make", "order0/ninja", "order1/ninja", "order1/make", "order2/make", "order2/ninja"]
    lines = capsys.readouterr().out.splitlines()
    assert "medians of 3 runs of every tool (the order reversed every other run)" in lines[0]
    assert [line.split()[:4] for line in lines[2:]] == [[tool, "3.000", "3.000", "3.000"] for tool in ("make", "ninja")]


def test_settle_syncs_and_waits_before_each_incremental_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[float] = []
    monkeypatch.setattr(compare.os, "sync", lambda: synced.append(compare.time.monotonic()))
    args = ["--tools", "make,ninja", "--width", "2", "--depth", "2", "--runs", "2", "--settle", "0.05"]
    assert compare.main([*args, "--dir", str(tmp_path)]) == 0
    assert len(synced) == 4  # (two incremental builds a tool)
    assert "synced and 0.05 s of quiet before each incremental build" in capsys.readouterr().out
