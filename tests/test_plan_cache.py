"""The compiled plan (`.pivot/plan`) end to end: the real `pivotbuild` in
temporary projects.  A build whose Pivotfiles, params files and NAME=VALUE
overrides are unchanged neither parses (lark) nor builds the graph (networkx);
any real change is seen.  Which path ran is seen without timing, by running
under `python -X importtime`; which stages ran, in the log they append to."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import msgpack
import pytest
import tracing
from conftest import Project
from helpers import CHAIN, counts, read, runs
from tracing import Traced, assert_fast, traced

from pivotbuild.state import framing, plan, seal

# -- helpers -----------------------------------------------------------------------------


def build(p: Project, *args: str, cwd: Path | None = None) -> Traced:
    """A build that must succeed without a warning."""
    r = tracing.build(p, *args, cwd=cwd)
    assert "warning" not in r.err, r.err
    return r


def build_warned(p: Project, name: str) -> Traced:
    """A build that must succeed, saying once that `.pivot/<name>` was damaged."""
    r = tracing.build(p)
    warnings = [line for line in r.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f".pivot/{name}: " in warnings[0], r.err
    return r


def new_runs(p: Project, before: list[str]) -> list[str]:
    now = runs(p)
    assert now[: len(before)] == before
    return sorted(now[len(before) :])


def built(chain: Project) -> list[str]:
    """Build the chain from scratch and check the next build is a fast no-op."""
    r = build(chain)
    assert counts(r.err) == (3, 0, 0, 0)
    assert_fast(traced(chain))
    return runs(chain)


# -- 2. what invalidates the plan ----------------------------------------------------------


def test_a_changed_command_reruns_exactly_that_stage(chain: Project) -> None:
    before = built(chain)
    chain.pivotfile(CHAIN.replace("cp $< $@; echo c", "sed s/o/0/g $< > $@; echo c"))
    r = build(chain)
    assert r.parsed
    assert counts(r.err) == (1, 2, 0, 0)
    assert new_runs(chain, before) == ["c"]
    assert read(chain, "c.txt") == "0ther\n"
    r = traced(chain)
    assert_fast(r)
    assert counts(r.err) == (0, 3, 0, 0)

    before = runs(chain)
    chain.pivotfile(CHAIN.replace("tr a-z A-Z", "tr a-y A-Y"))  # b's command; c's back to its first one
    r = build(chain)
    assert counts(r.err) == (1, 1, 1, 0)  # c's first result comes back from the run cache
    assert new_runs(chain, before) == ["b"]
    assert read(chain, "c.txt") == "other\n"
    assert_fast(traced(chain))


def test_editing_only_a_comment_reruns_nothing_and_the_next_build_is_fast(chain: Project) -> None:
    before = built(chain)
    chain.pivotfile(CHAIN.replace("# the chain", "# the chain, now with a longer comment") + "# trailing\n")
    r = build(chain)
    assert r.parsed  # the Pivotfile did change: it was read again
    assert counts(r.err) == (0, 3, 0, 0)
    assert runs(chain) == before
    r = traced(chain)
    assert_fast(r)
    assert counts(r.err) == (0, 3, 0, 0)


def test_touching_the_pivotfile_reruns_nothing_and_parses_nothing(chain: Project) -> None:
    before = built(chain)
    for _ in range(3):
        os.utime(chain.root / "Pivotfile")
        r = traced(chain)
        assert r.code == 0, r
        assert not r.parsed, "a touched Pivotfile with the same bytes was parsed again"
        assert "networkx" not in r.imported
        assert counts(r.err) == (0, 3, 0, 0)
        assert runs(chain) == before
    assert_fast(traced(chain))


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "same-mtime"])
def test_a_pivotfile_rewritten_right_after_a_build_is_seen(chain: Project, keep_mtime: bool) -> None:
    """The same size, and possibly the same mtime (the same clock tick): the new
    command is still seen."""
    pivotfile = chain.root / "Pivotfile"
    build(chain)
    for i in range(6):
        text = CHAIN.lstrip("\n").replace("cp $< $@; echo c", f"echo {i}; cp $< $@; echo c")
        st = pivotfile.stat()
        assert len(text.encode()) == st.st_size or i == 0
        with pivotfile.open("r+") as f:
            f.write(text)
            f.truncate()
        if keep_mtime:
            os.utime(pivotfile, ns=(st.st_atime_ns, st.st_mtime_ns))
        before = runs(chain)
        r = traced(chain)
        assert r.code == 0, r
        assert new_runs(chain, before) == ["c"], (i, r)
        assert f"c | {i}" in r.out.splitlines(), r.out


PARAMS = """
stage uses:
    params: train.epochs
    outs: uses.txt
    run: echo epochs=${params.train.epochs} > $@; echo uses >> runs.log

stage lists:
    params: train.lr
    outs: lists.txt
    run: echo lists > $@; echo lists >> runs.log

stage none:
    outs: none.txt
    run: echo none > $@; echo none >> runs.log
"""


def test_a_params_change_reruns_the_stages_that_use_the_key_only(project: Project) -> None:
    project.pivotfile(PARAMS)
    project.write("params.toml", "[train]\nepochs = 10\nlr = 0.1\nunused = 1\n")
    build(project)
    assert_fast(traced(project))
    before = runs(project)

    project.write("params.toml", "[train]\nepochs = 10\nlr = 0.1\nunused = 2\n")  # a key no stage uses
    r = build(project)
    assert counts(r.err) == (0, 3, 0, 0)
    assert runs(project) == before
    assert_fast(traced(project))

    project.write("params.toml", "[train]\nepochs = 20\nlr = 0.1\nunused = 2\n")
    r = build(project)
    assert counts(r.err) == (1, 2, 0, 0)
    assert new_runs(project, before) == ["uses"]
    assert read(project, "uses.txt") == "epochs=20\n"
    assert_fast(traced(project))

    before = runs(project)
    project.write("params.toml", "[train]\nepochs = 20\nlr = 0.2\nunused = 2\n")
    r = build(project)
    assert new_runs(project, before) == ["lists"]
    r = traced(project, "-q")
    assert (r.code, r.out, r.err) == (0, "", "")


def test_a_params_change_in_an_included_pipeline_is_seen(project: Project) -> None:
    project.pivotfile("include sub/\n")
    project.pivotfile(PARAMS, "sub/Pivotfile")
    project.write("sub/params.toml", "[train]\nepochs = 1\nlr = 0.1\n")
    build(project)
    assert_fast(traced(project))
    before = runs(project, "sub/runs.log")
    project.write("sub/params.toml", "[train]\nepochs = 2\nlr = 0.1\n")
    r = build(project)
    assert counts(r.err) == (1, 2, 0, 0)
    assert runs(project, "sub/runs.log")[len(before) :] == ["uses"]
    assert read(project, "sub/uses.txt") == "epochs=2\n"


SUB = """
stage s:
    deps: in.txt
    outs: s.txt
    run: cp $< $@; echo s >> ../runs.log
"""

ROOT = """
include sub/

stage top:
    deps: sub/s.txt
    outs: top.txt
    run: cp $< $@; echo top >> runs.log
"""


@pytest.fixture
def nested(project: Project) -> Project:
    project.pivotfile(ROOT)
    project.pivotfile(SUB, "sub/Pivotfile")
    project.write("sub/in.txt", "x\n")
    return project


def test_an_edit_of_an_included_pipelines_pivotfile_is_seen(nested: Project) -> None:
    build(nested)
    assert_fast(traced(nested))
    before = runs(nested)

    nested.pivotfile(SUB.replace("cp $< $@", "tr x y < $< > $@"), "sub/Pivotfile")
    r = build(nested)
    assert r.parsed
    assert new_runs(nested, before) == ["s", "top"]
    assert read(nested, "top.txt") == "y\n"
    assert_fast(traced(nested))

    before = runs(nested)
    nested.pivotfile(
        SUB.replace("cp $< $@", "tr x y < $< > $@") + "\nstage extra:\n    outs: e.txt\n    run: echo e > $@\n",
        "sub/Pivotfile",
    )
    r = build(nested)
    assert counts(r.err) == (1, 2, 0, 0)
    assert read(nested, "sub/e.txt") == "e\n"
    assert runs(nested) == before
    r = traced(nested, "sub:extra")
    assert_fast(r)
    assert counts(r.err) == (0, 1, 0, 0)


def test_a_removed_include_is_seen(nested: Project) -> None:
    build(nested)
    assert_fast(traced(nested))
    nested.pivotfile("stage alone:\n    outs: alone.txt\n    run: echo alone > $@\n")
    r = build(nested)
    assert counts(r.err) == (1, 0, 0, 0)
    r = traced(nested, "sub:s")
    assert r.code == 2, r
    assert "Traceback" not in r.err


OVERRIDE = """
MSG = default

stage say:
    outs: said.txt
    run: echo ${MSG} > $@; echo say >> runs.log

stage quiet:
    deps: in.txt
    outs: quiet.txt
    run: cp $< $@; echo quiet >> runs.log
"""


def test_command_line_variables_rerun_what_they_change(project: Project) -> None:
    project.pivotfile(OVERRIDE)
    project.write("in.txt", "q\n")
    build(project, "MSG=a")
    assert read(project, "said.txt") == "a\n"
    assert runs(project).count("say") == 1

    r = build(project, "MSG=b")
    assert counts(r.err) == (1, 1, 0, 0)
    assert read(project, "said.txt") == "b\n"
    assert runs(project).count("say") == 2

    for _ in range(2):
        r = build(project, "MSG=b")
        assert counts(r.err) == (0, 2, 0, 0)
        assert runs(project).count("say") == 2

    r = build(project, "MSG=a")  # a again (from the run cache), not b's seal
    assert counts(r.err)[1] == 1, r.err
    assert read(project, "said.txt") == "a\n"

    r = build(project)  # the Pivotfile's own value
    assert counts(r.err)[1] == 1, r.err
    assert read(project, "said.txt") == "default\n"
    assert_fast(traced(project))
    r = build(project, "MSG=default")
    assert counts(r.err) == (0, 2, 0, 0)
    assert read(project, "said.txt") == "default\n"
    assert runs(project).count("quiet") == 1


def test_the_same_command_line_variables_again_are_a_fast_noop(project: Project) -> None:
    project.pivotfile(OVERRIDE)
    project.write("in.txt", "q\n")
    build(project, "MSG=b")
    r = traced(project, "MSG=b")
    assert r.code == 0, r
    assert counts(r.err) == (0, 2, 0, 0)
    assert not r.parsed, "the plan compiled for MSG=b was not used: the Pivotfile was parsed again"
    r = traced(project, "MSG=b")
    assert_fast(r)
    assert counts(r.err) == (0, 2, 0, 0)
    assert runs(project) == ["say", "quiet"] or runs(project) == ["quiet", "say"]


# -- 5. damaged plan and seal --------------------------------------------------------------


def _garbage(kind: str, valid: bytes) -> bytes:
    rng = random.Random(kind + str(len(valid)))
    if kind == "random":
        return rng.randbytes(max(len(valid), 64))
    if kind == "magic-then-random":
        return b"PIVPLAN\n" + rng.randbytes(200)
    if kind == "truncated":
        return valid[: len(valid) // 2]
    if kind == "cut-by-one":
        return valid[:-1]
    if kind == "empty":
        return b""
    if kind == "wrong-shape":
        return (b"PIVPLAN\n" if valid.startswith(b"PIVPLAN\n") else b"") + msgpack.packb([1, "x", [None, {}], 3])
    raise AssertionError(kind)


KINDS = ["random", "magic-then-random", "truncated", "cut-by-one", "empty", "wrong-shape"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["plan", "seal"])
def test_a_damaged_plan_or_seal_never_changes_the_answer(chain: Project, name: str, kind: str) -> None:
    built(chain)
    path = chain.root / ".pivot" / name
    valid = path.read_bytes()

    # A no-op stays a no-op (and says the file was damaged).
    path.write_bytes(_garbage(kind, valid))
    before = runs(chain)
    r = build_warned(chain, name)
    assert counts(r.err) == (0, 3, 0, 0)
    assert runs(chain) == before
    assert path.read_bytes() != _garbage(kind, valid)  # rewritten
    assert_fast(traced(chain))

    # A change is still seen.
    valid = path.read_bytes()
    chain.write("in.txt", "changed\n")
    path.write_bytes(_garbage(kind, valid))
    r = build_warned(chain, name)
    assert counts(r.err) == (2, 1, 0, 0)
    assert new_runs(chain, before) == ["a", "b"]
    assert read(chain, "b.txt") == "CHANGED\n"
    assert path.read_bytes() != _garbage(kind, valid)
    r = traced(chain)
    assert_fast(r)
    assert counts(r.err) == (0, 3, 0, 0)


def unframe(blob: bytes, magic: bytes) -> bytes:
    """The msgpack body of a plan or seal file (see `state.framing`)."""
    return bytes(framing.Format(magic, framing.HEADER.unpack_from(blob)[1], "file").unpack(blob))


def frame(body: bytes, magic: bytes) -> bytes:
    version = {b"PIVSEAL\n": seal.FORMAT, b"PIVPLAN\n": plan.FORMAT}[magic]
    return framing.Format(magic, version, "file").pack(body)


def _u32(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def test_a_seal_with_indices_out_of_range_never_crashes(chain: Project) -> None:
    built(chain)
    path = chain.root / ".pivot" / "seal"
    fields = msgpack.unpackb(unframe(path.read_bytes(), b"PIVSEAL\n"))
    # stages 0, 1, 2 pointing at paths that are not there (little-endian uint32 arrays)
    fields[3][3:6] = [_u32([0, 1, 2]), _u32([0, 2, 3, 4]), _u32([0, 99, 77, 5])]
    path.write_bytes(frame(msgpack.packb(fields), b"PIVSEAL\n"))  # a valid checksum: only the shape is wrong
    chain.write("other.txt", "new\n")
    r = build_warned(chain, "seal")
    assert counts(r.err) == (1, 2, 0, 0)
    assert read(chain, "c.txt") == "new\n"
    assert_fast(traced(chain))


def test_a_plan_with_indices_out_of_range_never_crashes(chain: Project) -> None:
    built(chain)
    path = chain.root / ".pivot" / "plan"
    fields = msgpack.unpackb(unframe(path.read_bytes(), b"PIVPLAN\n"))
    lists = msgpack.unpackb(fields[3][4])  # the index's packed [stages, preds, order]
    lists[1] = [[7], [0, 42], []]  # the upstream links of the stages
    fields[3][4] = msgpack.packb(lists)
    path.write_bytes(frame(msgpack.packb(fields), b"PIVPLAN\n"))  # a valid checksum: only the shape is wrong
    chain.write("in.txt", "new\n")
    r = build(chain)
    assert counts(r.err)[0] == 2, r.err
    assert read(chain, "b.txt") == "NEW\n"
    assert_fast(traced(chain))


def test_a_plan_changed_on_disk_is_not_trusted(chain: Project) -> None:
    """One byte of a stored command changed (bit rot, a stray write): the build
    runs what the Pivotfile says, not what the damaged plan says."""
    built(chain)
    path = chain.root / ".pivot" / "plan"
    blob = path.read_bytes()
    at = blob.index(b"echo a >> runs.log")
    path.write_bytes(blob[:at] + b"echo X >> runs.log" + blob[at + len(b"echo a >> runs.log") :])
    chain.write("in.txt", "changed\n")
    before = runs(chain)
    r = traced(chain)
    assert r.code == 0, r
    assert new_runs(chain, before) == ["a", "b"]
    assert read(chain, "b.txt") == "CHANGED\n"
    show = chain.run("lock", "show")
    assert show.code == 0, show
    assert "echo X" not in show.out


def test_errors_found_on_a_plan_are_located_in_the_file_named_from_the_directory_of_the_run(
    chain: Project,
) -> None:
    # The plan keeps where each dep and `py:` is written: a build that does
    # not parse the Pivotfile still points at the line, and names the file
    # from where it runs, not from where the plan was compiled.
    chain.write("sub/readme", "")
    (chain.root / "in.txt").unlink()
    first = traced(chain, "a")
    assert first.parsed
    assert first.code == 2
    head = "Pivotfile:3:11: error: 'in.txt' does not exist and no stage writes it (needed by a)"
    assert first.err.splitlines()[:3] == [head, "        deps: in.txt", "              ^"]
    again = traced(chain, "a")
    assert not again.parsed
    assert again.err == first.err
    elsewhere = traced(chain, "-f", "../Pivotfile", "a", cwd=chain.root / "sub")
    assert not elsewhere.parsed
    assert elsewhere.err.splitlines()[:3] == ["../" + head, "        deps: in.txt", "              ^"]
    chain.pivotfile(CHAIN + "\nstage d:\n    py: tasks:main\n")
    assert traced(chain, "d").parsed
    refused = traced(chain, "d")
    missing = f"module 'tasks' not found under {chain.root} (looked for tasks.py and tasks/__init__.py)"
    assert not refused.parsed
    assert refused.code == 2
    assert refused.err.splitlines()[:3] == [
        f"Pivotfile:18:9: error: {missing}; create it or fix 'py: tasks:main'",
        "        py: tasks:main",
        "            ^",
    ]


def test_plan_and_seal_in_an_unwritable_state_directory_do_not_fail_the_build(chain: Project) -> None:
    built(chain)
    for name in ("plan", "seal"):
        target = chain.root / ".pivot" / name
        target.unlink()
        target.mkdir()  # cannot be read as a file, nor replaced by one
    chain.write("in.txt", "dir\n")
    r = traced(chain)
    assert r.code == 0, r
    assert "Traceback" not in r.err
    assert read(chain, "b.txt") == "DIR\n"
    r = traced(chain)
    assert r.code == 0, r
    assert counts(r.err) == (0, 3, 0, 0)


# -- 6. running from an included pipeline's directory --------------------------------------


def test_building_from_an_included_pipelines_directory_uses_the_project_root(nested: Project) -> None:
    r = build(nested)
    assert counts(r.err) == (2, 0, 0, 0)
    sub = nested.root / "sub"
    assert (sub / ".pivot" / "pipeline-state").exists()
    locks = {p: (nested.root / p).read_bytes() for p in ("Pivotfile.lock", "sub/Pivotfile.lock")}
    before = runs(nested)

    for args, cwd in (
        (("-C", "sub"), nested.root),
        ((), sub),
        ((), nested.root),
        (("-C", "sub"), nested.root),
        ((), sub),
        (("s",), sub),
        (("sub:s",), nested.root),
        ((), nested.root),
    ):
        r = build(nested, *args, cwd=cwd)
        assert counts(r.err)[0] == 0, (args, cwd, r.err)
        assert runs(nested) == before, (args, cwd)
        for p, data in locks.items():
            assert (nested.root / p).read_bytes() == data, (p, args, cwd)
    assert not (sub / ".pivot" / "cache").exists()  # the one cache is the root's
    assert not (sub / ".pivot" / "history.jsonl").exists()

    r = traced(nested, cwd=sub)
    assert_fast(r)
    assert counts(r.err) == (0, 1, 0, 0)
    r = traced(nested)
    assert_fast(r)
    assert counts(r.err) == (0, 2, 0, 0)

    # A change made and built from sub/ is not built again from the root.
    nested.write("sub/in.txt", "z\n")
    r = build(nested, cwd=sub)
    assert counts(r.err) == (1, 0, 0, 0)
    assert new_runs(nested, before) == ["s"]
    r = build(nested)
    assert counts(r.err) == (1, 1, 0, 0)
    assert new_runs(nested, before) == ["s", "top"]
    assert read(nested, "top.txt") == "z\n"
    r = traced(nested, cwd=sub)
    assert_fast(r)
    assert new_runs(nested, before) == ["s", "top"]


def test_an_included_pipeline_built_first_from_its_own_directory(nested: Project) -> None:
    sub = nested.root / "sub"
    r = build(nested, cwd=sub)  # before the root ever built it
    assert counts(r.err) == (1, 0, 0, 0)
    assert (sub / ".pivot" / "pipeline-state").exists()
    assert not (sub / ".pivot" / "cache").exists()
    r = build(nested)
    assert counts(r.err) == (1, 1, 0, 0)
    assert runs(nested) == ["s", "top"]
    assert_fast(traced(nested, cwd=sub))
    assert_fast(traced(nested))
    history = nested.run("history", "--json")
    assert history.code == 0, history
    assert len(history.out.splitlines()) == 4  # every build, wherever it ran from, in the root's history


def test_a_plan_index_that_does_not_decode_is_damaged_when_used() -> None:
    index = plan.Index("id", "/", current="", default=(), n=2, always=[], packed=msgpack.packb([[], [], []]))
    assert index.select([]) == [0, 1]  # what the no-op of every stage needs: no decoding
    with pytest.raises(plan.Damaged):
        _ = index.stages
    with pytest.raises(plan.Damaged):
        plan.Index("id", "/", current="", default=(), n=1, always=[], packed=b"\xc1").upstream([0, 0])


def test_a_plan_read_again_in_one_process_is_taken_while_its_file_is_unchanged(chain: Project) -> None:
    """A build server reads the plan before each build: the one it read is
    taken again while the file has the same stamp, and a plan rewritten
    since (a Pivotfile edited, compiled again) is read anew."""
    build(chain)
    main = str(chain.root / "Pivotfile")
    first = plan.read(main, {})
    assert first is not None and plan.read(main, {}) is first
    assert plan.read(main, {"X": "1"}) is None  # (another key: not this plan)
    chain.write("Pivotfile", (chain.root / "Pivotfile").read_text() + "\n# edited\n")
    build(chain)
    again = plan.read(main, {})
    assert again is not None and again is not first and plan.fresh(again, main)
