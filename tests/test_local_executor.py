"""The local executor end to end: many stages followed at once from the build
loop's one thread (their lines, their ends, their timeouts), and a build
stopped while many run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Project
from helpers import HANG_GUARD_S, background_build, events, finished, read_pid, wait_gone

LINES = 200

CHATTY = """
stage talk{i}:
    outs: talk{i}.txt
    run:
        i=0
        while [ $i -lt {lines} ]; do
            echo "talk{i} out $i"
            echo "talk{i} err $i" >&2
            i=$((i + 1))
        done
        echo ok > $@
"""


def test_every_line_of_twenty_parallel_stages_arrives_whole_and_in_order(project: Project) -> None:
    project.pivotfile("".join(CHATTY.format(i=i, lines=LINES) for i in range(20)))
    r = project.run("-j8", "--json")
    assert r.code == 0, r
    got: dict[tuple[str, str], list[str]] = {}
    for e in events(r):
        if e["event"] == "log":
            got.setdefault((e["stage"], e["stream"]), []).append(e["line"])
    for i in range(20):
        for stream, word in (("stdout", "out"), ("stderr", "err")):
            assert got.get((f"talk{i}", stream)) == [f"talk{i} {word} {n}" for n in range(LINES)], (i, stream)
    assert set(finished(r).values()) == {("ran", "never run")}


def test_a_background_child_holding_the_output_open_does_not_hold_up_the_build(project: Project) -> None:
    # `sleep` keeps the stage's stdout and stderr open long after its shell
    # exits: the stage still ends (a grace after its shell) and the build goes on.
    project.pivotfile(
        """
        stage spawn:
            outs: spawn.txt
            run: sleep 300 & echo $! > bg.pid; echo spawned > $@

        stage after:
            deps: spawn.txt
            outs: after.txt
            run: cp $< $@
        """
    )
    try:
        r = project.run("--json", timeout=HANG_GUARD_S * 2)
    finally:
        pid_file = project.root / "bg.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert r.code == 0, r
    assert (project.root / "after.txt").read_text() == "spawned\n"


def test_stages_keep_finishing_while_another_waits_for_its_timeout(project: Project) -> None:
    quick = "".join(
        f"""
stage quick{i}:
    outs: quick{i}.txt
    run: while [ ! -e slow.started ]; do sleep 0.01; done; echo {i} > $@
"""
        for i in range(6)
    )
    project.pivotfile(
        """
stage slow:
    timeout: 5
    run: touch slow.started; sleep 60
"""
        + quick
    )
    r = project.run("-j2", "-k", "--json")
    assert r.code == 1, r
    ends = [(e["stage"], e["status"], e.get("detail", "")) for e in events(r) if e["event"] == "stage_finished"]
    assert ends[-1] == ("slow", "failed", "timed out after 5s"), ends
    assert sorted(stage for stage, status, _ in ends[:-1] if status == "ran") == [f"quick{i}" for i in range(6)]


MANY_RUNNING = "".join(
    f"""
stage hang{i}:
    outs: hang{i}.txt
    run: echo $$$$ > shell{i}.pid; sleep 300 & echo $! > child{i}.pid; wait
"""
    for i in range(8)
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_while_many_stages_run_exits_130_and_leaves_none_running(
    project: Project, tmp_path: Path, sig: signal.Signals
) -> None:
    project.pivotfile(MANY_RUNNING)
    with background_build(project, tmp_path, "-j8") as proc:
        pids = [read_pid(project.root / f"{kind}{i}.pid") for i in range(8) for kind in ("shell", "child")]
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pivotbuild did not stop after {sig.name}") from None
        err = (tmp_path / "bg.err").read_text()
        assert code == 130, err
        assert "Traceback" not in err
        for pid in pids:
            assert wait_gone(pid, 5), f"process {pid} of a stage outlived the build"
    assert not list(project.root.glob("hang*.txt"))


def test_a_stage_whose_shell_cannot_start_is_retried_then_fails(project: Project) -> None:
    project.pivotfile(
        """
        SHELL = /no/such/shell
        stage s:
            retry: 2
            outs: s.txt
            run: echo hi > $@
        """
    )
    r = project.run("--json")
    assert r.code == 1, r
    tried = [e["line"] for e in events(r) if e["event"] == "log" and e["stage"] == "s"]
    assert tried == ["pivotbuild: cannot start /no/such/shell: No such file or directory"] * 3  # and two retries
    assert finished(r)["s"] == ("failed", "never run")
