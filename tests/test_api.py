"""The Python API (pivotbuild/api.py), end to end: real projects in temporary
directories, real stages, the API called in this process and compared with
what the real `pivotbuild` says about the same projects."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from helpers import CHAIN, HANG_GUARD_S, events, runs

import pivotbuild
from pivotbuild.errors import PivotfileError, TargetError

PYTHON = shlex.quote(sys.executable)


def cli_error(err: str) -> str:
    """What the CLI printed on stderr for an error, without its `pivotbuild: ` prefixes."""
    return "\n".join(line.removeprefix("pivotbuild: ") for line in err.rstrip("\n").splitlines())


def without_durations(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "duration_s"} for e in found]


# -- load, stages, build, status, explain ---------------------------------------------------


def test_build_runs_the_stages_then_a_second_build_skips_them(chain: Project) -> None:
    project = pivotbuild.Project.load(chain.root)
    assert project.root == chain.root.resolve()

    first = project.build()
    assert first.ok
    assert sorted(first.ran) == ["a", "b", "c"]
    assert (first.skipped, first.failed, first.blocked, first.cancelled) == ((), (), (), ())
    assert (chain.root / "b.txt").read_text() == "HELLO\n"
    assert sorted(runs(chain)) == ["a", "b", "c"]

    second = project.build()
    assert second.ok
    assert sorted(second.skipped) == ["a", "b", "c"]
    assert second.ran == ()
    assert sorted(runs(chain)) == ["a", "b", "c"]


def test_build_takes_targets_jobs_and_force(chain: Project) -> None:
    project = pivotbuild.Project.load(chain.root)
    assert project.build("b", jobs=1).ran == ("a", "b")
    assert sorted(project.build(["a", "c"]).ran) == ["c"]
    forced = project.build("a", force=True)
    assert forced.ran == ("a",)
    assert runs(chain) == ["a", "b", "c", "a"]


def test_stages_lists_names_deps_outs_and_desc(project: Project) -> None:
    project.pivotfile(
        """
        stage prep:
            desc: make the data
            deps: raw/*.csv
            outs: data/
            run: mkdir -p data

        stage train:
            deps: data/
            outs: model.bin
            run: touch model.bin
        """
    )
    stages = pivotbuild.Project.load(project.root).stages()
    assert stages == [
        pivotbuild.StageInfo("prep", ("raw/*.csv",), ("data",), "make the data"),
        pivotbuild.StageInfo("train", ("data",), ("model.bin",), ""),
    ]


def test_status_and_explain_name_the_reason_a_stage_would_run(chain: Project) -> None:
    project = pivotbuild.Project.load(chain.root)
    assert project.status() == {"a": "never run", "b": "upstream a will run", "c": "never run"}
    project.build()
    assert project.status() == {"a": None, "b": None, "c": None}
    assert project.explain("b") is None

    (chain.root / "in.txt").write_text("changed\n")
    assert project.status("b") == {"a": "dep in.txt changed", "b": "upstream a will run"}
    assert project.explain("a") == "dep in.txt changed"
    assert project.explain("b.txt") == "upstream a will run"  # (an output names its stage)
    assert project.explain("c") is None
    r = chain.run("status", "--json")
    assert {row["stage"]: row["reason"] if not row["up_to_date"] else None for row in json.loads(r.out)} == (
        project.status()
    )


def test_on_event_gets_the_json_events_the_cli_prints_for_the_same_build(tmp_path: Path) -> None:
    pivotfile = """
        stage a:
            deps: in.txt
            outs: a.txt
            run: cp $< $@; echo made a; echo careful >&2

        stage b:
            deps: a.txt
            outs: b.txt
            run: exit 3

        stage c:
            deps: b.txt
            outs: c.txt
            run: cp $< $@
        """
    twins = []
    for name in ("api", "cli"):
        twin = Project(tmp_path / name)
        (twin.root / ".pivot").mkdir(parents=True)
        twin.pivotfile(pivotfile)
        twin.write("in.txt", "hello\n")
        twins.append(twin)

    received: list[dict[str, Any]] = []
    result = pivotbuild.Project.load(twins[0].root).build(jobs=1, on_event=received.append)
    r = twins[1].run("--json", "-j1")
    assert r.code == 1, r

    assert [e["event"] for e in received] == [e["event"] for e in events(r)]
    assert [sorted(e) for e in received] == [sorted(e) for e in events(r)]
    assert without_durations(received) == without_durations(events(r))
    assert {"event": "log", "stage": "a", "stream": "stderr", "line": "careful"} in received
    assert (result.ok, result.ran, result.failed, result.blocked) == (False, ("a",), ("b",), ("c",))


def test_a_failing_stage_is_a_result_not_an_exception(project: Project) -> None:
    project.pivotfile(
        """
        stage bad:
            outs: bad.txt
            run: echo nope; exit 2

        stage after:
            deps: bad.txt
            outs: after.txt
            run: cp $< $@

        stage fine:
            outs: fine.txt
            run: echo ok > $@
        """
    )
    api = pivotbuild.Project.load(project.root)
    result = api.build(keep_going=True)
    assert not result.ok
    assert result.failed == ("bad",)
    assert result.blocked == ("after",)
    assert result.ran == ("fine",)
    assert api.status() == {"bad": "never run", "after": "upstream bad will run", "fine": None}


# -- errors ---------------------------------------------------------------------------------


def test_a_bad_pivotfile_raises_the_located_text_check_prints(project: Project) -> None:
    project.pivotfile(
        """
        stage a:
            outs: a.txt
            bogus: 1
            run: echo > $@
        """
    )
    with pytest.raises(PivotfileError) as info:
        pivotbuild.Project.load(project.root)
    r = project.run("check")
    assert r.code == 2, r
    assert str(info.value) == cli_error(r.err)
    assert "Pivotfile:3:5: error: unknown field 'bogus:'" in str(info.value)
    assert isinstance(info.value, pivotbuild.PivotError)


def test_an_edit_is_seen_by_the_next_call_and_a_bad_one_raises_until_fixed(chain: Project) -> None:
    project = pivotbuild.Project.load(chain.root)
    assert [s.name for s in project.stages()] == ["a", "b", "c"]
    good = (chain.root / "Pivotfile").read_text()
    chain.pivotfile(good + "\nstage d:\n    outs: d.txt\n    run: echo d > $@\n")
    assert [s.name for s in project.stages()] == ["a", "b", "c", "d"]

    chain.pivotfile(good + "\nstage d:\n    outz: d.txt\n")
    for _ in range(2):  # every call, not only the first after the edit
        with pytest.raises(PivotfileError) as info:
            project.status()
        assert str(info.value) == cli_error(chain.run("check").err)
    chain.pivotfile(good)
    assert project.build().ok


def test_missing_project_unknown_target_and_missing_sources_raise_the_cli_text(chain: Project, tmp_path: Path) -> None:
    nowhere = tmp_path / "empty"
    nowhere.mkdir()
    with pytest.raises(pivotbuild.PivotError) as info:
        pivotbuild.Project.load(nowhere)
    assert str(info.value) == cli_error(chain.run("-C", str(nowhere), "check").err)

    project = pivotbuild.Project.load(chain.root)
    with pytest.raises(TargetError) as unknown:
        project.build("nope")
    assert str(unknown.value) == cli_error(chain.run("nope").err)
    with pytest.raises(TargetError):
        project.explain("nope")

    (chain.root / "in.txt").unlink()
    with pytest.raises(PivotfileError) as missing:
        project.build()
    assert str(missing.value) == cli_error(chain.run().err)
    assert "in.txt" in str(missing.value)


def test_the_api_prints_nothing(chain: Project, capfd: pytest.CaptureFixture[str]) -> None:
    chain.write("Pivotfile", CHAIN + "\nstage loud:\n    outs: l.txt\n    run: echo out; echo err >&2; exit 1\n")
    project = pivotbuild.Project.load(chain.root)
    project.build(keep_going=True)
    (chain.root / ".pivot" / "seal").write_bytes(b"garbage")  # a warning, said as an event
    (chain.root / "in.txt").write_text("again\n")
    seen: list[dict[str, Any]] = []
    result = project.build(keep_going=True, on_event=seen.append)
    project.status()
    project.explain("a")
    project.stages()
    with pytest.raises(pivotbuild.PivotError):
        project.build("nope")

    assert capfd.readouterr() == ("", "")
    assert result.failed == ("loud",)
    assert [m for m in result.messages if ".pivot/seal" in m], result.messages
    warnings = [e for e in seen if e["event"] == "message"]
    assert warnings and warnings[0]["level"] == "warning"
    assert f"warning: {warnings[0]['text']}" == result.messages[0]


# -- from a stage -------------------------------------------------------------------------


def test_a_stage_may_read_the_project_but_not_build_it(project: Project) -> None:
    project.pivotfile(
        f"""
        stage a:
            deps: in.txt
            outs: a.txt
            run: cp $< $@

        stage look:
            deps: a.txt
            outs: look.json
            run: {PYTHON} look.py

        stage nested:
            deps: look.json
            outs: n.txt
            run: {PYTHON} -c "import pivotbuild; pivotbuild.Project.load().build()"
        """
    )
    project.write(
        "look.py",
        """
        import json, pivotbuild
        p = pivotbuild.Project.load()
        json.dump([p.status(), p.explain("a"), len(p.stages())], open("look.json", "w"))
        """,
    )
    project.write("in.txt", "hi\n")
    r = project.run("-j1", timeout=2 * HANG_GUARD_S)  # (a status waiting for the build's lock would hang)
    assert r.code == 1, r
    status, explained, count = json.loads((project.root / "look.json").read_text())
    # a's record, still in the running build's journal:
    assert status == {"a": None, "look": "never run", "nested": "upstream look will run"}
    assert (explained, count) == (None, 3)
    assert "Project.build() cannot run inside stage 'nested'" in r.err
    assert "project lock" in r.err
    assert not (project.root / "n.txt").exists()


# -- interrupted --------------------------------------------------------------------------


SLOW = """
stage slow:
    outs: slow.txt
    run: sleep 30; echo done > $@
"""


def test_ctrl_c_stops_the_stages_and_raises_keyboard_interrupt(project: Project) -> None:
    project.pivotfile(SLOW)
    api = pivotbuild.Project.load(project.root)

    def interrupt(event: dict[str, Any]) -> None:
        if event["event"] == "stage_started":
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C sends it

    with pytest.raises(KeyboardInterrupt):
        api.build(on_event=interrupt)
    assert not (project.root / "slow.txt").exists()
    assert api.status() == {"slow": "never run"}


def test_an_exception_in_on_event_stops_the_build_and_is_raised(project: Project) -> None:
    project.pivotfile(SLOW)
    api = pivotbuild.Project.load(project.root)

    def fail(event: dict[str, Any]) -> None:
        if event["event"] == "stage_started":
            raise ValueError("the caller's bug")

    with pytest.raises(ValueError, match="the caller's bug"):
        api.build(on_event=fail)
    assert not (project.root / "slow.txt").exists()
    assert api.status() == {"slow": "never run"}
