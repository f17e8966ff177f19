"""A plan (-n, -q, status) is the build loop with nothing run: it writes no
state, restores nothing from the run cache, and does not refuse a stage the
machine could not run."""

from __future__ import annotations

from pathlib import Path

from conftest import Project

PIPELINE = """
stage a:
    deps: in.txt
    outs: build/a.txt
    run: cp $< $@

stage b:
    deps: build/a.txt
    outs: b.txt
    run: cp $< $@
"""


def state_files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under .pivot with its content and mtime, but the stat cache (which
    a plan refreshes, as any command that hashes does) and the project lock
    (which a plan holds, as every command that reads the state does)."""
    state = root / ".pivot"
    return {
        p.relative_to(state).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(state.rglob("*"))
        if p.is_file() and p.name not in ("statcache", "build.lock")
    }


def test_a_plan_writes_no_state_and_restores_nothing(project: Project) -> None:
    project.pivotfile(PIPELINE)
    project.write("in.txt", "one\n")
    assert project.run("-s").code == 0
    project.write("in.txt", "two\n")
    assert project.run("-s").code == 0
    project.write("in.txt", "one\n")  # the run cache holds a's outputs for this input
    before = state_files(project.root)
    for args in (("-n",), ("-n", "--json"), ("-q",), ("-n", "-B"), ("status",)):
        r = project.run(*args)
        assert r.code == (1 if args == ("-q",) else 0), r
        assert "Traceback" not in r.err, r.err
    assert state_files(project.root) == before  # no lockfile, journal, history, cache or seal
    assert (project.root / "build/a.txt").read_text() == "two\n"  # not restored
    r = project.run("-n")
    assert r.out.splitlines() == ["would run a: dep in.txt changed", "would run b: upstream a will run"], r
    r = project.run("-s", "--json")
    assert '"status": "restored"' in r.out, r.out  # what the build itself does


def test_a_plan_lists_a_stage_that_reserves_more_memory_than_the_machine_has(project: Project) -> None:
    project.pivotfile(PIPELINE.replace("    run: cp $< $@\n", "    mem: 1000TB\n    run: cp $< $@\n", 1))
    project.write("in.txt", "one\n")
    r = project.run("-n")
    assert r.code == 0, r
    assert r.out.splitlines() == ["would run a: never run", "would run b: upstream a will run"], r
    r = project.run()
    assert r.code == 1, r  # the build refuses it
    assert "exceeds this machine's total memory" in r.err, r.err
