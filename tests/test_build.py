"""Building end to end: the real `pivotbuild` in a subprocess, judged by what a user
sees (exit status, which stages ran and why, output files, stderr, the lockfile)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project, Result
from helpers import CHAIN, SUMMARY, build, events, finished, gone, lock_json, locked, read, runs, wait_gone
from test_makejobs import most_at_once

from pivotbuild.pivotfile.units import approx_size

# -- helpers -----------------------------------------------------------------------------


def ran(done: dict[str, tuple[str, str]]) -> set[str]:
    return {s for s, (status, _) in done.items() if status == "ran"}


def skipped(done: dict[str, tuple[str, str]]) -> set[str]:
    return {s for s, (status, _) in done.items() if status == "skipped"}


def run_with_env(p: Project, *args: str, **extra: str) -> Result:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **extra}
    proc = subprocess.run(
        [*PIVOTBUILD, *args], cwd=p.root, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


# -- first build, second build -----------------------------------------------------------


def test_first_build_runs_everything_and_second_build_nothing(chain: Project) -> None:
    r = chain.run()
    assert r.code == 0, r
    assert read(chain, "build/a.txt") == "hello\n"
    assert read(chain, "b.txt") == "HELLO\n"
    assert read(chain, "c.txt") == "other\n"
    assert sorted(runs(chain)) == ["a", "b", "c"]
    assert runs(chain).index("a") < runs(chain).index("b")
    m = SUMMARY.search(r.err)
    assert m, r.err
    assert m.group(1, 2, 3, 4) == ("3", "0", "0", "0")

    r = chain.run()
    assert r.code == 0, r
    assert sorted(runs(chain)) == ["a", "b", "c"]  # nothing ran again
    m = SUMMARY.search(r.err)
    assert m, r.err
    assert m.group(1, 2, 3, 4) == ("0", "3", "0", "0")
    assert re.search(r"^pivotbuild: 0 ran, 3 up to date, 0 restored, 0 failed in \d+(\.\d+)?s$", r.err, re.M)

    done = build(chain)
    assert done == dict.fromkeys(("a", "b", "c"), ("skipped", "up to date"))


def test_plain_output_announces_each_stage_and_prefixes_its_lines(chain: Project) -> None:
    chain.write("Pivotfile", CHAIN.replace("echo a >> runs.log", "echo a >> runs.log; echo said-by-a"))
    r = chain.run("-j1")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert "a | said-by-a" in lines
    started = [line for line in lines if re.fullmatch(r"\[\d+/\d+\] \w+", line)]
    assert len(started) == 3, r.out
    assert {line.split()[1] for line in started} == {"a", "b", "c"}


# -- change detection ----------------------------------------------------------------------


def test_content_not_mtime_decides(chain: Project) -> None:
    build(chain)
    later = time.time() + 100
    os.utime(chain.root / "in.txt", (later, later))
    os.utime(chain.root / "build/a.txt", (later, later))
    assert skipped(build(chain)) == {"a", "b", "c"}
    assert len(runs(chain)) == 3

    # New content of the same size under the same mtime: still a change.
    path = chain.root / "in.txt"
    st = path.stat()
    tmp = chain.root / "in.tmp"
    tmp.write_text("HELLO\n")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    done = build(chain)
    assert done["a"] == ("ran", "dep in.txt changed")
    assert done["b"] == ("ran", "dep build/a.txt changed")
    assert done["c"] == ("skipped", "up to date")
    assert read(chain, "b.txt") == "HELLO\n"


UPSTREAM = """
stage up:
    deps: in.txt
    outs: first.txt
    run: head -n 1 $< > $@; echo up >> runs.log

stage down:
    deps: first.txt
    outs: down.txt
    run: cp $< $@; echo down >> runs.log
"""


def test_identical_output_does_not_cascade(project: Project) -> None:
    project.pivotfile(UPSTREAM)
    project.write("in.txt", "one\ntwo\n")
    build(project)

    project.write("in.txt", "one\nTWO\n")  # the dep changes, the output does not
    done = build(project)
    assert done["up"] == ("ran", "dep in.txt changed")
    assert done["down"] == ("skipped", "up to date")

    project.pivotfile(UPSTREAM.replace("head -n 1 $<", "sed -n 1p $<"))  # the command changes, the output does not
    done = build(project)
    assert done["up"] == ("ran", "command changed")
    assert done["down"] == ("skipped", "up to date")
    assert runs(project) == ["up", "down", "up", "up"]


PARAMS = """
stage listed:
    params: a.x
    outs: listed.txt
    run: echo listed > $@

stage used:
    params: a.x
    outs: used.txt
    run: echo x=${params.a.x} > $@
"""


def test_param_key_reruns_but_its_neighbours_do_not(project: Project) -> None:
    project.pivotfile(PARAMS)
    project.write("params.toml", "[a]\nx = 1\ny = 2\n")
    assert ran(build(project)) == {"listed", "used"}
    assert read(project, "used.txt") == "x=1\n"

    project.write("params.toml", "[a]\nx = 1\ny = 3\n")
    assert skipped(build(project)) == {"listed", "used"}

    project.write("params.toml", "[a]\nx = 2\ny = 3\n")
    done = build(project)
    assert read(project, "used.txt") == "x=2\n"
    assert done["listed"] == ("ran", "param a.x 1 -> 2")
    # The command changed only because the param did: the param is the reason.
    assert done["used"] == ("ran", "param a.x 1 -> 2")


def test_command_change_reruns(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo one > $@\n")
    build(project)
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo two > $@\n")
    assert build(project) == {"s": ("ran", "command changed")}
    assert read(project, "s.txt") == "two\n"


def test_env_change_reruns(project: Project) -> None:
    project.pivotfile('stage s:\n    env: GREETING=hi\n    outs: s.txt\n    run: echo "$GREETING" > $@\n')
    build(project)
    assert read(project, "s.txt") == "hi\n"
    project.pivotfile('stage s:\n    env: GREETING=ho\n    outs: s.txt\n    run: echo "$GREETING" > $@\n')
    assert build(project) == {"s": ("ran", "env changed")}
    assert read(project, "s.txt") == "ho\n"


GLOB = """
stage g:
    deps: src/*.txt
    outs: all.txt
    run: cat src/*.txt > $@
"""


def test_glob_deps(project: Project) -> None:
    project.pivotfile(GLOB)
    project.write("src/a.txt", "a\n")
    project.write("src/b.txt", "b\n")
    project.write("src/ignored.md", "not matched\n")
    build(project)
    assert read(project, "all.txt") == "a\nb\n"

    project.write("src/ignored.md", "still not matched\n")
    assert build(project) == {"g": ("skipped", "up to date")}

    project.write("src/c.txt", "c\n")
    assert build(project) == {"g": ("ran", "dep set of glob src/*.txt changed")}
    assert read(project, "all.txt") == "a\nb\nc\n"

    project.write("src/b.txt", "B\n")
    assert build(project) == {"g": ("ran", "dep src/b.txt changed")}
    assert read(project, "all.txt") == "a\nB\nc\n"


DIRS = """
stage gen:
    deps: in.txt
    outs: out/
    run: mkdir -p out; cp in.txt out/one.txt; echo two > out/two.txt; echo gen >> runs.log

stage use:
    deps: out/
    outs: report/all.txt
    run: cat out/one.txt out/two.txt > $@; echo use >> runs.log

stage src:
    deps: data/
    outs: listing.txt
    run: ls data > $@; echo src >> runs.log
"""


def _dep_reason(reason: str, path: str) -> bool:
    return reason in (f"dep {path} changed", f"dep {path}/ changed")


def test_directory_deps_and_outs(project: Project) -> None:
    project.pivotfile(DIRS)
    project.write("in.txt", "one\n")
    project.write("data/x.txt", "x\n")
    build(project)
    assert sorted(p.name for p in (project.root / "out").iterdir()) == ["one.txt", "two.txt"]
    assert read(project, "report/all.txt") == "one\ntwo\n"
    assert read(project, "listing.txt") == "x.txt\n"
    assert skipped(build(project)) == {"gen", "use", "src"}

    project.write("in.txt", "ONE\n")  # a file inside out/ changes
    done = build(project)
    assert done["gen"] == ("ran", "dep in.txt changed")
    assert done["use"][0] == "ran"
    assert _dep_reason(done["use"][1], "out"), done
    assert done["src"] == ("skipped", "up to date")
    assert read(project, "report/all.txt") == "ONE\ntwo\n"

    project.write("data/y.txt", "y\n")  # a file added to a source directory
    done = build(project)
    assert done["src"][0] == "ran"
    assert _dep_reason(done["src"][1], "data"), done
    assert read(project, "listing.txt") == "x.txt\ny.txt\n"


def test_a_directory_output_changed_by_hand_is_restored_whole(project: Project) -> None:
    project.pivotfile(DIRS)
    project.write("in.txt", "one\n")
    project.write("data/x.txt", "x\n")
    build(project)
    project.write("out/stale.txt", "left over\n")
    done = build(project)
    assert done["gen"][0] == "restored"  # the recorded tree, checked out whole from the cache
    assert done["gen"][1] in ("out out modified", "out out/ modified"), done
    assert sorted(p.name for p in (project.root / "out").iterdir()) == ["one.txt", "two.txt"]
    assert done["use"] == ("skipped", "up to date")  # the same tree again


def test_missing_and_modified_outputs_are_restored(chain: Project) -> None:
    build(chain)
    (chain.root / "build/a.txt").unlink()
    done = build(chain)
    assert done["a"] == ("restored", "out build/a.txt missing")  # from the cache, not rerun
    assert done["b"] == ("skipped", "up to date")  # a wrote the same content again
    assert read(chain, "build/a.txt") == "hello\n"

    chain.write("b.txt", "edited by hand\n")
    done = build(chain)
    assert done["b"] == ("restored", "out b.txt modified")
    assert done["a"] == ("skipped", "up to date")
    assert read(chain, "b.txt") == "HELLO\n"


def test_an_output_or_dep_replaced_by_a_symlink_to_itself_is_taken_for_missing(chain: Project) -> None:
    build(chain)
    out = chain.root / "build/a.txt"
    out.unlink()
    out.symlink_to("a.txt")  # (a loop: it leads nowhere, as a dangling link does)
    done = build(chain)
    assert done["a"] == ("restored", "out build/a.txt missing")
    assert read(chain, "build/a.txt") == "hello\n"
    chain.write("in.txt", "changed\n")
    out.unlink()
    out.symlink_to("a.txt")
    done = build(chain)  # (with a dep changed too: the output is not even looked at)
    assert done["a"] == ("ran", "dep in.txt changed")
    assert read(chain, "build/a.txt") == "changed\n"
    (chain.root / "in.txt").unlink()
    (chain.root / "in.txt").symlink_to("in.txt")
    r = chain.run()
    assert r.code == 1, r  # the stage's command says what is wrong, not pivotbuild's own crash
    assert "Too many levels of symbolic links" in r.err and "internal error" not in r.err, r.err


# -- -n, -q, -B, --explain -----------------------------------------------------------------


def test_dry_run_prints_what_would_run_and_runs_nothing(chain: Project) -> None:
    build(chain)
    chain.write("in.txt", "changed\n")
    before = runs(chain)
    r = chain.run("-n")
    assert r.code == 0, r
    assert "would run a: dep in.txt changed" in r.out.splitlines(), r.out
    assert any(line.startswith("would run b: ") for line in r.out.splitlines()), r.out
    assert not any(line.startswith("would run c") for line in r.out.splitlines()), r.out
    assert runs(chain) == before
    assert read(chain, "build/a.txt") == "hello\n"

    r = chain.run("-n", "--json")
    assert r.code == 0, r
    evs = events(r)
    assert {e["event"] for e in evs} == {"plan"}, r.out
    plan = {e["stage"]: e for e in evs}
    assert len(plan) == len(evs) == 3
    assert plan["a"]["will_run"] is True
    assert plan["a"]["reason"] == "dep in.txt changed"
    assert plan["b"]["will_run"] is True
    assert plan["c"]["will_run"] is False
    assert runs(chain) == before


def test_dry_run_on_a_fresh_project_says_never_run(chain: Project) -> None:
    r = chain.run("-n")
    assert r.code == 0, r
    assert "would run a: never run" in r.out.splitlines()
    assert "would run c: never run" in r.out.splitlines()
    assert not (chain.root / "build").exists()
    assert runs(chain) == []


def test_question_mode(chain: Project) -> None:
    r = chain.run("-q")
    assert r.code == 1, r
    assert runs(chain) == []
    build(chain)
    r = chain.run("-q")
    assert r.code == 0, r
    chain.write("other.txt", "new\n")
    r = chain.run("-q")
    assert r.code == 1, r
    assert len(runs(chain)) == 3
    assert read(chain, "c.txt") == "other\n"


def test_always_make_reruns_the_selected_stages_and_what_they_depend_on(chain: Project) -> None:
    build(chain)
    done = build(chain, "-B", "b")
    assert done == {"a": ("ran", "forced"), "b": ("ran", "forced")}  # as make -B does
    assert runs(chain)[3:] == ["a", "b"]
    done = build(chain, "-B")  # no targets and no `default`: every stage
    assert done == dict.fromkeys(("a", "b", "c"), ("ran", "forced"))
    chain.pivotfile("default b\n" + CHAIN)
    done = build(chain, "-B")  # no targets: the default targets and all they need
    assert done == {"a": ("ran", "forced"), "b": ("ran", "forced")}


def test_always_make_dry_run_lists_what_depends_on_nothing_changed(chain: Project) -> None:
    build(chain)
    r = chain.run("-n", "-B", "b")
    assert r.code == 0, r
    assert re.findall(r"^would run (\S+): (.*)$", r.out, re.M) == [("a", "forced"), ("b", "forced")], r.out
    assert chain.run("-q", "-B", "b").code == 1
    assert len(runs(chain)) == 3  # neither ran anything


def test_explain_prints_why_each_stage_runs_or_is_skipped(chain: Project) -> None:
    build(chain)
    chain.write("in.txt", "changed\n")
    r = chain.run("--explain", "-j1")
    assert r.code == 0, r
    assert re.search(r"^\[\d+/\d+\] a \(dep in\.txt changed\)$", r.out, re.M), r.out
    assert re.search(r"^\[\d+/\d+\] b \(dep build/a\.txt changed\)$", r.out, re.M), r.out
    assert re.search(r"^up to date: c$", r.out, re.M), r.out


# -- failures ------------------------------------------------------------------------------

FAILING = """
stage slow:
    outs: slow.txt
    run: sleep 0.5; echo done > $@

stage after_slow:
    deps: slow.txt
    outs: after_slow.txt
    run: echo after > $@

stage bad:
    outs: bad.txt
    run: echo partial > $@; echo first words; echo last words >&2; exit 3

stage after_bad:
    deps: bad.txt
    outs: after_bad.txt
    run: echo after > $@
"""


def test_fail_fast_blocks_dependents_lets_running_stages_finish_and_starts_nothing_new(project: Project) -> None:
    project.pivotfile(FAILING)
    r = project.run("-j2", "--json")
    assert r.code == 1, r
    done = finished(r)
    assert done["bad"][0] == "failed"
    assert done["after_bad"][0] == "blocked"
    assert "bad" in done["after_bad"][1]
    assert done["slow"][0] == "ran"  # already running: finishes
    assert read(project, "slow.txt") == "done\n"
    assert done["after_slow"][0] == "cancelled"  # would have started after the failure
    assert not (project.root / "after_slow.txt").exists()
    assert not (project.root / "after_bad.txt").exists()
    started = [e["stage"] for e in events(r) if e["event"] == "stage_started"]
    assert sorted(started) == ["bad", "slow"]
    bad = next(e for e in events(r) if e["event"] == "stage_finished" and e["stage"] == "bad")
    assert "3" in bad.get("detail", ""), bad


def test_a_stage_that_ends_well_hands_its_place_on_but_one_that_made_no_output_does_not(project: Project) -> None:
    """With one place (-j1), each stage that ends well lets the next waiting
    stage start at once, before its own end is recorded and reported; a
    stage that exits 0 without its declared output has failed, and nothing
    waiting starts after it."""
    project.pivotfile(
        """
stage first:
    outs: first.txt
    run: echo 1 > $@
stage forgot:
    outs: forgot.txt
    run: echo not the output > other.txt
stage later:
    outs: later.txt
    run: echo 3 > $@
"""
    )
    r = project.run("-j1", "--json")
    assert r.code == 1, r
    done = finished(r)
    assert done["first"][0] == "ran"
    assert done["forgot"][0] == "failed"
    assert done["later"][0] == "cancelled"
    assert not (project.root / "later.txt").exists()
    order = [(e["event"], e["stage"]) for e in events(r) if e["event"] in ("stage_started", "stage_finished")]
    assert order[:3] == [("stage_started", "first"), ("stage_started", "forgot"), ("stage_finished", "first")]
    assert ("stage_started", "later") not in order


def test_the_place_of_a_stage_that_ended_goes_to_the_critical_path_first(project: Project) -> None:
    """At -j1, c1 heads the longest chain (c1 -> c2 -> c3 -> c4) and starts
    first.  When it ends, c2, which it makes ready and which heads a longer
    path than any waiting x, takes its place, rather than the next waiting
    stage at once; so does c3.  c4, level with the x stages, waits its turn
    after them, as the stage decided last."""
    blocks = [f"stage x{i}:\n    outs: x{i}.txt\n    run: echo x > $@\n" for i in range(1, 4)]
    blocks += [
        f"stage c{i}:\n    deps: {f'c{i - 1}.txt' if i > 1 else 'src.txt'}\n    outs: c{i}.txt\n    run: cat $< > $@\n"
        for i in range(1, 5)
    ]
    project.write("src.txt", "s\n")
    project.pivotfile("\n".join(blocks))
    r = project.run("-j1", "--json")
    assert r.code == 0, r
    started = [e["stage"] for e in events(r) if e["event"] == "stage_started"]
    assert started == ["c1", "c2", "c3", "x1", "x2", "x3", "c4"], started


def test_the_places_a_stage_frees_go_no_further_down_the_queue_than_what_it_makes_ready(project: Project) -> None:
    """`big` takes both places (-j2) and ends alone.  The waiting y1 heads a
    longer path than b2, which big makes ready, and starts at once in one
    place; the other goes to b2, decided next, not to x1, which waits with
    a shorter path than b2's."""
    text = "stage big:\n    jobs: 2\n    outs: big.txt\n    run: sleep 0.3; echo > big.txt\n"
    text += "".join(
        f"stage b{i}:\n    deps: {'big' if i == 2 else f'b{i - 1}'}.txt\n    outs: b{i}.txt\n    run: cat $< > $@\n"
        for i in (2, 3, 4)
    )
    text += "stage y1:\n    outs: y1.txt\n    run: sleep 0.5; echo > y1.txt\n"
    chain = "stage y{0}:\n    deps: y{1}.txt\n    outs: y{0}.txt\n    run: cat $< > $@\n"
    text += "".join(chain.format(i, i - 1) for i in (2, 3, 4))
    text += "".join(f"stage x{i}:\n    outs: x{i}.txt\n    run: sleep 0.5; echo > x{i}.txt\n" for i in (1, 2))
    project.pivotfile(text)
    r = project.run("-j2", "--json")
    assert r.code == 0, r
    started = [e["stage"] for e in events(r) if e["event"] == "stage_started"]
    assert started[:3] == ["big", "y1", "b2"], started


def test_a_failure_is_reported_when_it_happens_and_again_at_the_end(project: Project) -> None:
    project.pivotfile(FAILING)
    r = project.run("-j2")
    assert r.code == 1, r
    assert r.err.count("exit status 3") == 2, r.err
    assert r.err.count("last words") == 2, r.err
    assert r.err.count("first words") == 2, r.err
    lines = r.err.splitlines()
    first = next(i for i, line in enumerate(lines) if "bad" in line and "exit status 3" in line)
    summary = next(i for i, line in enumerate(lines) if SUMMARY.match(line))
    last = max(i for i, line in enumerate(lines) if "last words" in line)
    assert first < summary
    assert lines[first].startswith("pivotbuild: ")
    assert last > first + 2  # repeated at the end, after the blocked/cancelled news
    m = SUMMARY.search(r.err)
    assert m and m.group(4) == "1", r.err


def test_a_failed_stage_is_not_recorded(project: Project) -> None:
    project.pivotfile(FAILING)
    project.run("-j2")
    stages = locked(project)
    assert "slow" in stages
    assert "bad" not in stages
    done = build(project, "bad", code=1)
    assert done == {"bad": ("failed", "never run")}  # its partial output does not count


def test_a_failed_rerun_keeps_the_old_record(project: Project) -> None:
    good = "stage s:\n    outs: s.txt\n    run: echo v1 > $@\n"
    project.pivotfile(good)
    build(project)
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo v2 > $@; exit 1\n")
    assert build(project, code=1)["s"][0] == "failed"
    assert lock_json(project)["stages"]["s"]["command"] == "echo v1 > s.txt"
    project.pivotfile(good)
    # Back to the recorded command.  The failed run's s.txt is never taken for the
    # recorded one: either it was rolled back already, or this build replaces it.
    rolled_back = read(project, "s.txt") == "v1\n"
    done = build(project)
    if rolled_back:
        assert done == {"s": ("skipped", "up to date")}
    else:
        assert done["s"] in (("restored", "out s.txt modified"), ("ran", "out s.txt modified"))
    assert read(project, "s.txt") == "v1\n"


def test_a_stage_killed_by_a_signal_is_reported_with_the_signal(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo about to die; kill -KILL $$$$\n")
    r = project.run()
    assert r.code == 1, r
    assert re.search(r"^pivotbuild: stage s failed \(.*SIGKILL.*\)$", r.err, re.M), r.err
    assert "about to die" in r.err


KEEP_GOING = """
stage bad:
    outs: bad.txt
    run: exit 1

stage after_bad:
    deps: bad.txt
    outs: after_bad.txt
    run: echo x > $@

stage good:
    outs: good.txt
    run: echo good > $@
"""


def test_keep_going_builds_what_does_not_depend_on_the_failure(project: Project) -> None:
    project.pivotfile(KEEP_GOING)
    done = build(project, "-j1", "-k", code=1)
    assert done["bad"][0] == "failed"
    assert done["after_bad"][0] == "blocked"
    assert done["good"][0] == "ran"
    assert read(project, "good.txt") == "good\n"


def test_without_keep_going_nothing_new_starts_after_a_failure(project: Project) -> None:
    project.pivotfile(KEEP_GOING)
    done = build(project, "-j1", code=1)
    assert done["bad"][0] == "failed"  # first: the longest path
    assert done["after_bad"][0] == "blocked"
    assert done["good"][0] == "cancelled"
    assert not (project.root / "good.txt").exists()


def test_without_keep_going_nothing_new_starts_after_a_stage_left_out_an_output(project: Project) -> None:
    """The failure is found as the stage ends (its exit status was 0): still
    no stage starts after it, even in the slot it freed."""
    project.pivotfile(
        "stage a:\n    outs: a.txt\n    run: echo a >> runs.log\n\n"
        "stage b:\n    outs: b.txt\n    run: echo b >> runs.log; echo b > b.txt\n\n"
        "stage c:\n    outs: c.txt\n    run: echo c >> runs.log; echo c > c.txt\n"
    )
    done = build(project, "-j1", code=1)
    assert done["a"] == ("failed", "never run")
    assert runs(project) == ["a"]
    assert {done["b"][0], done["c"][0]} == {"cancelled"}


def test_an_output_that_was_not_created_fails_the_stage(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: made.txt forgotten.txt\n    run: echo hi > made.txt\n")
    r = project.run()
    assert r.code == 1, r
    assert "forgotten.txt" in r.err
    assert "stage s" in r.err
    assert "s" not in locked(project)


# -- how a stage runs ------------------------------------------------------------------------


def test_outputs_are_removed_before_a_run_and_their_directories_created(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: deep/er/log.txt\n    run: echo line >> $@\n")
    for _ in range(3):
        assert build(project, "-B")["s"][0] == "ran"
        assert read(project, "deep/er/log.txt") == "line\n"


def test_persist_outputs_are_kept(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: log.txt (persist)\n    run: echo line >> $@\n")
    build(project)
    build(project, "-B")
    assert read(project, "log.txt") == "line\nline\n"


def test_stage_environment(project: Project) -> None:
    text = 'stage e:\n    env: FOO={v}\n    outs: env.txt\n    run: echo "$PIVOT_STAGE $FOO $INHERITED" > $@\n'
    project.pivotfile(text.format(v="bar"))
    r = run_with_env(project, "--json", INHERITED="one")
    assert r.code == 0, r
    assert read(project, "env.txt") == "e bar one\n"

    r = run_with_env(project, "--json", INHERITED="two")
    assert finished(r) == {"e": ("skipped", "up to date")}

    project.pivotfile(text.format(v="baz"))
    r = run_with_env(project, "--json", INHERITED="two")
    assert finished(r) == {"e": ("ran", "env changed")}
    assert read(project, "env.txt") == "e baz two\n"


def test_matrix_stage_sees_its_full_name(project: Project) -> None:
    project.pivotfile('stage m:\n    matrix: v=x y\n    outs: m-${v}.txt\n    run: echo "$PIVOT_STAGE" > $@\n')
    build(project)
    assert read(project, "m-x.txt") == "m@x\n"
    assert read(project, "m-y.txt") == "m@y\n"


def test_dir_runs_the_stage_there_with_relative_paths(project: Project) -> None:
    project.pivotfile(
        """
        stage d:
            dir: sub
            deps: sub/in.txt
            outs: sub/res/out.txt
            run: cat $< > $@; pwd >> $@; echo "$<|$@" >> $@
        """
    )
    project.write("sub/in.txt", "hello\n")
    build(project)
    lines = read(project, "sub/res/out.txt").splitlines()
    assert lines[0] == "hello"
    assert Path(lines[1]).resolve() == (project.root / "sub").resolve()
    assert lines[2] == "in.txt|res/out.txt"


def test_timeout_kills_the_stage_and_its_children(project: Project) -> None:
    project.pivotfile(
        """
        stage t:
            timeout: 1s
            outs: t.txt
            run: sleep 30 & echo $! > pid.txt; wait; echo done > $@
        """
    )
    r = project.run(timeout=30)
    assert r.code == 1, r
    assert re.search(r"^pivotbuild: .*\bt\b.*timed out", r.err, re.M), r.err
    pid = int(read(project, "pid.txt"))
    try:
        assert wait_gone(pid), f"the stage's child {pid} survived the timeout"
    finally:
        if not gone(pid):
            os.kill(pid, 9)
    assert not (project.root / "t.txt").exists()


RETRY = """
stage flaky:
    retry: {n}
    outs: flaky.txt
    run:
        n=$(cat count.txt 2>/dev/null || echo 0)
        n=$((n + 1))
        echo $n > count.txt
        test $n -ge 2
        echo ok > $@
"""


@pytest.mark.parametrize(("retries", "code", "attempts"), [(1, 0, "2"), (0, 1, "1")])
def test_retry(project: Project, retries: int, code: int, attempts: str) -> None:
    project.pivotfile(RETRY.format(n=retries))
    done = build(project, code=code)
    assert done["flaky"][0] == ("ran" if code == 0 else "failed")
    assert read(project, "count.txt").strip() == attempts
    assert (project.root / "flaky.txt").exists() == (code == 0)


MEMORY_STAGES = """
stage a:
    mem: 600M
    outs: a.txt
    run: echo start $(date +%s.%N) >> times.log; sleep 0.4; echo end $(date +%s.%N) >> times.log; touch $@

stage b:
    mem: 600M
    outs: b.txt
    run: echo start $(date +%s.%N) >> times.log; sleep 0.4; echo end $(date +%s.%N) >> times.log; touch $@
"""


@pytest.mark.parametrize(("limit", "together"), [("1G", 1), ("2G", 2)])
def test_mem_limit_caps_what_the_stages_reserve_at_once(project: Project, limit: str, together: int) -> None:
    project.pivotfile(MEMORY_STAGES)
    r = project.run("-j2", "--mem-limit", limit)
    assert r.code == 0, r
    assert most_at_once(project.root / "times.log") == together  # 2 x 600M fit under 2G, not under 1G


def test_a_stage_reserving_more_than_mem_limit_fails_at_once_and_a_bad_limit_is_refused(project: Project) -> None:
    project.pivotfile(MEMORY_STAGES)
    r = project.run("-k", "--mem-limit", "512M")
    assert r.code == 1, r
    assert "pivotbuild: stage a failed (mem: 600M exceeds --mem-limit 512M; raise the limit or reserve less)" in r.err
    assert not (project.root / "times.log").exists()  # neither ran
    r = project.run("--mem-limit", "lots")
    assert r.code == 2, r
    assert "'lots' is not a memory size; write e.g. '512M' or '4G'" in r.err, r.err


def test_a_stage_reserving_more_memory_than_the_machine_has_fails_at_once(project: Project) -> None:
    import psutil

    project.pivotfile(
        """
        stage huge:
            mem: 1000T
            outs: huge.txt
            run: echo huge >> runs.log; echo ok > $@

        stage after:
            deps: huge.txt
            outs: after.txt
            run: echo after >> runs.log; cp $< $@

        stage fits:
            mem: 1M
            outs: fits.txt
            run: echo fits >> runs.log; echo ok > $@
        """
    )
    r = project.run("-k")
    assert r.code == 1, r
    total = approx_size(psutil.virtual_memory().total)
    assert f"pivotbuild: stage huge failed (mem: 1000T exceeds this machine's total memory of {total};" in r.err, r.err
    assert runs(project) == ["fits"]  # a reservation that fits still runs; the one that cannot never starts
    assert build(project, "--json", "-k", code=1)["after"] == ("blocked", "upstream huge failed")


# -- pivotbuild run ----------------------------------------------------------------------------


def test_run_always_make_forces_only_the_given_stages(chain: Project) -> None:
    build(chain)
    r = chain.run("run", "-B", "b", "--json")
    assert r.code == 0, r
    assert finished(r) == {"b": ("ran", "forced")}  # unlike `pivotbuild -B b`, not a


def test_run_runs_exactly_the_given_stages_in_order(chain: Project) -> None:
    build(chain)
    r = chain.run("run", "-B", "b", "a", "--json")
    assert r.code == 0, r
    started = [e["stage"] for e in events(r) if e["event"] == "stage_started"]
    assert started == ["b", "a"]
    assert set(finished(r)) == {"a", "b"}

    chain.write("in.txt", "changed\n")
    r = chain.run("run", "b", "--json")  # b's own inputs are unchanged; a is not built
    assert r.code == 0, r
    assert finished(r) == {"b": ("skipped", "up to date")}
    assert read(chain, "build/a.txt") == "hello\n"

    r = chain.run("run", "a", "--json")
    assert finished(r) == {"a": ("ran", "dep in.txt changed")}
    r = chain.run("run", "b", "--json")
    assert finished(r) == {"b": ("ran", "dep build/a.txt changed")}
    assert read(chain, "b.txt") == "CHANGED\n"


RUN_FAILING = """
stage bad:
    outs: bad.txt
    run: exit 4

stage good:
    outs: good.txt
    run: echo good > $@
"""


def test_run_keeps_going_after_a_failure(project: Project) -> None:
    project.pivotfile(RUN_FAILING)
    r = project.run("run", "bad", "good", "--json")
    assert r.code == 1, r
    done = finished(r)
    assert done["bad"][0] == "failed"
    assert done["good"][0] == "ran"
    assert read(project, "good.txt") == "good\n"


def test_run_fail_fast_stops_at_the_first_failure(project: Project) -> None:
    project.pivotfile(RUN_FAILING)
    r = project.run("run", "--fail-fast", "bad", "good", "--json")
    assert r.code == 1, r
    done = finished(r)
    assert done["bad"][0] == "failed"
    assert done.get("good", ("cancelled", ""))[0] == "cancelled"
    assert not (project.root / "good.txt").exists()


# -- status, lock show, history ------------------------------------------------------------------


def test_status(chain: Project) -> None:
    r = chain.run("status")
    assert r.code == 0, r
    assert re.search(r"^a\s+never run$", r.out, re.M), r.out
    build(chain)
    chain.write("in.txt", "changed\n")
    chain.write("c.txt", "by hand\n")
    r = chain.run("status")
    assert r.code == 0, r
    assert re.search(r"^a\s+dep in\.txt changed$", r.out, re.M), r.out
    assert re.search(r"^c\s+out c\.txt modified$", r.out, re.M), r.out
    r = chain.run("status", "--json")
    assert r.code == 0, r
    rows = {row["stage"]: row for row in json.loads(r.out)}
    assert rows["a"] == {"stage": "a", "up_to_date": False, "reason": "dep in.txt changed"}
    assert rows["b"]["up_to_date"] is False
    assert rows["c"] == {"stage": "c", "up_to_date": False, "reason": "out c.txt modified"}
    assert len(runs(chain)) == 3  # status runs nothing


LOCKED = """
stage zeta:
    deps: in.txt
    outs: z.txt
    params: a.x
    run: echo ${params.a.x} > $@; cat $< >> $@

stage alpha:
    deps: z.txt
    outs: out/
    run: mkdir -p out; cp z.txt out/copy.txt
"""


def test_lock_show_text_and_json(project: Project) -> None:
    project.pivotfile(LOCKED)
    project.write("params.toml", "[a]\nx = 7\ny = 1\n")
    project.write("in.txt", "in\n")
    build(project)
    first = project.run("lock", "show")
    again = project.run("lock", "show")
    assert first.code == 0, first
    assert first.out == again.out
    text = first.out
    assert text.index("stage alpha") < text.index("stage zeta")  # sorted
    assert "  command echo 7 > z.txt; cat in.txt >> z.txt" in text
    assert re.search(r"^\s+param (params\.toml:)?a\.x = 7$", text, re.M), text
    assert re.search(r"^\s+dep in\.txt file [0-9a-f]{32}$", text, re.M), text
    assert re.search(r"^\s+out z\.txt file [0-9a-f]{32}$", text, re.M), text
    assert re.search(r"^\s+out out/? dir [0-9a-f]{32}$", text, re.M), text
    assert "a.y" not in text

    j1 = project.run("lock", "show", "--json")
    assert j1.code == 0, j1
    data = json.loads(j1.out)
    zeta = data["stages"]["zeta"]
    assert zeta["command"] == "echo 7 > z.txt; cat in.txt >> z.txt"
    assert [d["path"] for d in zeta["deps"]] == ["in.txt"]
    assert [o["path"] for o in zeta["outs"]] == ["z.txt"]
    assert list(zeta["params"].values()) == [7]
    assert zeta["deps"][0]["hash"] != ""
    # The dep hash of alpha is the out hash of zeta: one file, one content hash.
    assert data["stages"]["alpha"]["deps"][0]["hash"] == zeta["outs"][0]["hash"]


def test_lock_show_without_a_lockfile(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo > $@\n")
    r = project.run("lock", "show")
    assert r.code != 0
    assert r.err.startswith("pivotbuild: "), r.err
    assert "Traceback" not in r.err


def test_history(chain: Project) -> None:
    build(chain)
    (chain.root / "in.txt").write_text("x")
    chain.pivotfile(CHAIN.replace("cp $< $@; echo a", "exit 1; echo a"))
    build(chain, code=1)
    r = chain.run("history")
    assert r.code == 0, r
    lines = [line for line in r.out.splitlines() if line.strip()]
    assert len(lines) == 2, r.out
    assert "ok" in lines[0]
    assert "3 ran" in lines[0]
    assert "failed" in lines[1]

    r = chain.run("history", "--json")
    assert r.code == 0, r
    entries = [json.loads(line) for line in r.out.splitlines()]
    assert len(entries) == 2
    assert entries[0]["result"] == "ok"
    assert entries[0]["ran"] == 3
    assert entries[1]["result"] == "failed"
    assert entries[1]["failed"] == 1
    # Each stage that did not skip, with its status (c was up to date the second time).
    assert {name: entry["status"] for name, entry in entries[0]["stages"].items()} == {
        "a": "ran",
        "b": "ran",
        "c": "ran",
    }
    assert {name: entry["status"] for name, entry in entries[1]["stages"].items()} == {"a": "failed", "b": "blocked"}


# -- the lockfile ------------------------------------------------------------------------------


def _make(root: Path) -> Project:
    p = Project(root)
    (root / ".pivot").mkdir(parents=True)
    p.pivotfile(LOCKED + GLOB)
    p.write("params.toml", "[a]\nx = 7\ny = 1\n")
    p.write("in.txt", "in\n")
    p.write("src/one.txt", "1\n")
    p.write("src/two.txt", "2\n")
    return p


def test_the_lockfile_is_deterministic(tmp_path: Path) -> None:
    one = _make(tmp_path / "one")
    two = _make(tmp_path / "elsewhere" / "two")
    build(one, "-j1")
    time.sleep(0.05)
    build(two, "-j2")
    assert (one.root / "Pivotfile.lock").read_bytes() == (two.root / "Pivotfile.lock").read_bytes()


def test_a_clone_elsewhere_is_up_to_date(tmp_path: Path) -> None:
    one = _make(tmp_path / "one")
    build(one)
    clone = tmp_path / "clone"
    shutil.copytree(one.root, clone, ignore=shutil.ignore_patterns(".pivot"))
    (clone / ".pivot").mkdir()
    done = build(Project(clone))
    assert set(done.values()) == {("skipped", "up to date")}


def test_a_no_op_build_leaves_the_lockfile_untouched(chain: Project) -> None:
    build(chain)
    lock = chain.root / "Pivotfile.lock"
    blob, mtime = lock.read_bytes(), lock.stat().st_mtime_ns
    time.sleep(0.02)
    assert skipped(build(chain)) == {"a", "b", "c"}
    r = chain.run("status")
    assert r.code == 0, r
    for stage in ("a", "b", "c"):
        assert re.search(rf"^{stage}\s+up to date$", r.out, re.M), r.out
    assert "everything is up to date" in r.err
    assert lock.read_bytes() == blob
    assert lock.stat().st_mtime_ns == mtime


def test_a_garbage_lockfile_warns_once_and_the_build_recovers(chain: Project) -> None:
    build(chain)
    lock = chain.root / "Pivotfile.lock"
    lock.write_bytes(random.Random(1).randbytes(300))
    r = chain.run()
    assert r.code == 0, r
    warnings = [line for line in r.err.splitlines() if "Pivotfile.lock" in line]
    assert len(warnings) == 1, r.err
    assert warnings[0].startswith("pivotbuild: ")
    assert "warning" in warnings[0]
    assert "Traceback" not in r.err
    # The lockfile is gone but the run cache is not: nothing reruns, all is restored.
    assert sorted(runs(chain)) == ["a", "b", "c"]
    assert set(lock_json(chain)["stages"]) == {"a", "b", "c"}
    r = chain.run("--json")
    assert "warning" not in r.err
    assert skipped(finished(r)) == {"a", "b", "c"}


def test_a_lockfile_with_a_flipped_byte_is_not_half_read(chain: Project) -> None:
    build(chain)
    lock = chain.root / "Pivotfile.lock"
    blob = bytearray(lock.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    lock.write_bytes(bytes(blob))
    r = chain.run("--json")
    assert r.code == 0, r
    assert sum("Pivotfile.lock" in line for line in r.err.splitlines()) == 1, r.err
    assert {s for s, (status, _) in finished(r).items() if status == "restored"} == {"a", "b", "c"}


# -- --json --------------------------------------------------------------------------------------

REQUIRED = {
    "build_started": {"schema", "stages"},
    "stage_started": {"stage"},
    "log": {"stage", "stream", "line"},
    "stage_finished": {"stage", "status", "reason", "duration_s"},
    "build_finished": {"ran", "skipped", "restored", "failed", "blocked", "duration_s"},
}


def test_json_output_is_only_json_events_with_the_required_keys(project: Project) -> None:
    project.pivotfile(
        """
        stage talk:
            outs: t.txt
            run: echo to-stdout; echo to-stderr >&2; echo '{"not": "an event"}'; echo t > $@

        stage fail:
            run: echo dying; exit 2

        stage blocked:
            deps: t.txt nothing.txt
            outs: never.txt
            run: echo > $@

        stage nothing:
            outs: nothing.txt
            run: exit 1
        """
    )
    r = project.run("--json", "-k")
    assert r.code == 1, r
    evs = events(r)
    assert evs[0]["event"] == "build_started"
    assert evs[0]["schema"] == 1
    assert evs[0]["stages"] == 4
    assert evs[-1]["event"] == "build_finished"
    for e in evs:
        assert e["event"] in REQUIRED, e
        assert REQUIRED[e["event"]] <= set(e), e
    logs = [(e["stage"], e["stream"], e["line"]) for e in evs if e["event"] == "log"]
    assert ("talk", "stdout", "to-stdout") in logs
    assert ("talk", "stderr", "to-stderr") in logs
    assert ("talk", "stdout", '{"not": "an event"}') in logs
    assert ("fail", "stdout", "dying") in logs
    done = finished(r)
    assert done["talk"][0] == "ran"
    assert done["fail"][0] == "failed"
    assert done["nothing"][0] == "failed"
    assert done["blocked"][0] == "blocked"
    assert "nothing" in done["blocked"][1]
    end = evs[-1]
    assert (end["ran"], end["skipped"], end["restored"], end["failed"], end["blocked"]) == (1, 0, 0, 2, 1)
    for e in evs:
        if e["event"] == "stage_finished":
            assert e["status"] in {"ran", "skipped", "restored", "failed", "blocked", "cancelled"}
            assert isinstance(e["duration_s"], (int, float))

    r = project.run("--json", "-k")  # up to date and failing stages, again only JSON
    assert r.code == 1, r
    assert finished(r)["talk"] == ("skipped", "up to date")


# -- missing sources -----------------------------------------------------------------------------


def test_a_missing_source_dep_is_a_usage_error_naming_it_and_its_stage(project: Project) -> None:
    project.pivotfile(
        """
        stage needy:
            deps: nothere.txt
            outs: n.txt
            run: cp $< $@; echo needy >> runs.log
        """
    )
    r = project.run()
    assert r.code == 2, r
    assert r.err.splitlines()[0] == (
        "Pivotfile:2:11: error: 'nothere.txt' does not exist and no stage writes it (needed by needy)"
    )
    assert r.err.splitlines()[-1].startswith("pivotbuild: 1 error in Pivotfile;")
    assert "Traceback" not in r.err
    assert runs(project) == []
