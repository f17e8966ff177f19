"""The live display: what a user at a terminal sees (the real command on a pty)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

from conftest import PIVOTBUILD, Project

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(project: Project, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run pivotbuild with a pseudo-terminal as stdout and stderr; (exit status, screen text)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [*PIVOTBUILD, *args], cwd=project.root, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the other side closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    code = proc.wait(timeout=10)
    return code, _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


PIPELINE = """
stage a:
    outs: a.txt
    run:
        echo making a
        echo a > $@
stage b:
    deps: a.txt
    outs: b.txt
    run: cat $< > $@ && echo made b
"""


def test_a_terminal_gets_the_live_display_and_the_summary(project: Project) -> None:
    project.pivotfile(PIPELINE)
    code, screen = run_on_terminal(project)
    assert code == 0
    assert "a | making a" in screen
    assert "b | made b" in screen
    assert "pivotbuild: 2 ran, 0 up to date, 0 restored, 0 failed" in screen
    assert (project.root / "b.txt").read_text() == "a\n"


def test_a_failure_on_a_terminal_names_the_stage_and_its_last_lines(project: Project) -> None:
    project.pivotfile(
        """
        stage broken:
            outs: x
            run:
                echo the last words
                exit 4
        """
    )
    code, screen = run_on_terminal(project)
    assert code == 1
    assert "stage broken failed (exit status 4)" in screen
    assert "the last words" in screen
    assert "1 failed" in screen


def test_a_no_op_on_a_terminal_says_everything_is_up_to_date(project: Project) -> None:
    project.pivotfile(PIPELINE)
    assert run_on_terminal(project)[0] == 0
    code, screen = run_on_terminal(project)
    assert code == 0
    assert "0 ran, 2 up to date" in screen
    assert "making a" not in screen
