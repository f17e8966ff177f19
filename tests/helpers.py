"""Plain helpers shared by the test files: where the repository and the spec's
example are, the CHAIN pipeline, what a `--json` build reports, the stages' own
run logs, the objects of a cache or of a directory remote wherever they live,
processes that must go away, a build run in the background to be killed, and
the Pivotfile language's helpers (stage ids, scripts, the compiler's
diagnostics).  Fixtures live in conftest.py; runs traced by import
time (which path answered) in tracing.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import PIVOTBUILD, Project, Result, compile_text
from hypothesis import strategies as st

from pivotbuild.cache.pack import PACKS, Packs
from pivotbuild.cache.store import OBJECTS
from pivotbuild.errors import Diagnostic, PivotfileError
from pivotbuild.model import Pipeline, Stage, StageId
from pivotbuild.pivotfile.syntax import Module, StageDecl
from pivotbuild.state.hashing import hash_bytes

REPO = Path(__file__).resolve().parent.parent
# The complete example of PIVOTFILE.md, and the params file it reads.
SPEC_EXAMPLE = REPO / "tests" / "fixtures" / "spec-example.Pivotfile"
PARAMS_TOML = '[train]\nepochs = 3\nlr = 0.1\n\n[model]\ndepth = 4\nname = "deep"\n'

# A hypothesis `draw` function, for @st.composite strategies.
T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]

# How long a test waits for a process it started before calling it hung.
HANG_GUARD_S = 15

# a -> b, and c on its own; each stage appends its name to runs.log.  Its comment
# line is there to be edited (test_plan_cache): a Pivotfile whose comments change.
CHAIN = """
# the chain
stage a:
    deps: in.txt
    outs: build/a.txt
    run: cp $< $@; echo a >> runs.log

stage b:
    deps: build/a.txt
    outs: b.txt
    run: tr a-z A-Z < $< > $@; echo b >> runs.log

stage c:
    deps: other.txt
    outs: c.txt
    run: cp $< $@; echo c >> runs.log
"""

SUMMARY = re.compile(
    r"^pivotbuild: (\d+) ran, (\d+) up to date, (\d+) restored, (\d+) failed(.*) in \d+(\.\d+)?s$", re.M
)
DURATION = re.compile(r" in \d+(\.\d+)?s$", re.M)


# -- what a build reports ----------------------------------------------------------------


def events(out: Result | str) -> list[dict[str, Any]]:
    """Every stdout line of a `--json` run (its result or its stdout), parsed:
    a line that is not JSON fails the test."""
    text = out if isinstance(out, str) else out.out
    return [json.loads(line) for line in text.splitlines()]


def finished(out: Result | str) -> dict[str, tuple[str, str]]:
    """stage -> (status, reason) from the `stage_finished` events."""
    done: dict[str, tuple[str, str]] = {}
    for e in events(out):
        if e["event"] == "stage_finished":
            assert e["stage"] not in done, f"{e['stage']} finished twice: {out}"
            done[e["stage"]] = (e["status"], e["reason"])
    return done


def statuses(out: Result | str) -> dict[str, str]:
    """stage -> status from the `stage_finished` events."""
    return {stage: status for stage, (status, _) in finished(out).items()}


def build(p: Project, *args: str, code: int = 0) -> dict[str, tuple[str, str]]:
    """`pivotbuild --json ARGS`, expecting exit status `code`; stage -> (status, reason)."""
    r = p.run("--json", *args)
    assert r.code == code, r
    assert "Traceback" not in r.err, r.err
    return finished(r)


def counts(text: str) -> tuple[int, int, int, int]:
    """(ran, up to date, restored, failed) from the summary line."""
    found = SUMMARY.findall(text)
    assert len(found) == 1, text
    ran, up, restored, failed = (int(x) for x in found[0][:4])
    return ran, up, restored, failed


Interval = tuple[float, float]  # a stage's start and end, by its own clock


def intervals(p: Project) -> dict[str, Interval]:
    """Each stage's (start, end) from the `NAME start|end TIME` lines its stages append to times.log."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    text = (p.root / "times.log").read_text()
    for line in text.splitlines():
        m = re.fullmatch(r"(\S+) (start|end) (\d+\.\d*)", line)
        assert m, f"bad line {line!r} in times.log:\n{text}"
        (start if m.group(2) == "start" else end)[m.group(1)] = float(m.group(3))
    assert start.keys() == end.keys(), (start, end)
    return {name: (start[name], end[name]) for name in start}


def history(p: Project) -> list[dict[str, Any]]:
    """`pivotbuild history --json`: one entry a build, oldest first."""
    r = p.run("history", "--json")
    assert r.code == 0, r
    return [json.loads(line) for line in r.out.splitlines()]


def lock_json(p: Project) -> dict[str, Any]:
    """`pivotbuild lock show --json`."""
    r = p.run("lock", "show", "--json")
    assert r.code == 0, r
    data: dict[str, Any] = json.loads(r.out)
    return data


def locked(p: Project) -> set[str]:
    """The stages the lockfile records (none without a lockfile)."""
    if not (p.root / "Pivotfile.lock").exists():
        return set()
    return set(lock_json(p)["stages"])


# -- files -------------------------------------------------------------------------------


def runs(p: Project, log: str = "runs.log") -> list[str]:
    """What the stages appended to `log`, in order."""
    path = p.root / log
    return path.read_text().split() if path.exists() else []


def read(p: Project, rel: str) -> str:
    return (p.root / rel).read_text()


def src(text: str) -> str:
    """Dedent a triple-quoted text and drop its first newline."""
    return textwrap.dedent(text).lstrip("\n")


def write(root: Path, rel: str, text: str) -> Path:
    """Write a file below root (dedented), creating its directories."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src(text))
    return path


# -- cache objects -------------------------------------------------------------------


@contextlib.contextmanager
def _packs(store: Path) -> Iterator[Packs]:
    """The packs of `store` as they are now (read afresh: a build may have
    changed them), their descriptors closed after."""
    packs = Packs(store / PACKS)
    try:
        yield packs
    finally:
        packs.close()


class StoredObject:
    """Object `digest` of a cache (or of a directory remote), wherever it lives: a
    file of its own, `objects/ab/cdef...` (a large object, one a link mode
    links to, one fetched; every object of a remote), and/or a record in a
    pack (a small object a build stored).  Tests find and damage objects
    through this, not by their path, so they meet the layout the product uses."""

    def __init__(self, store: Path, digest: str) -> None:
        self.store = store
        self.digest = digest
        self.path = store / OBJECTS / digest[:2] / digest[2:]  # its file, if it is one

    def __repr__(self) -> str:
        return f"StoredObject({self.store}, {self.digest})"

    def packed(self) -> bool:
        with _packs(self.store) as packs:
            return self.digest in packs

    def exists(self) -> bool:
        return self.packed() or self.path.is_file()

    def read_bytes(self) -> bytes:
        """What a reader meets: the packed copy (the cache reads packs first), else the file."""
        with _packs(self.store) as packs:
            data = packs.read(self.digest)
        return data if data is not None else self.path.read_bytes()

    def intact(self) -> bool:
        """There, and every copy of it holds what its name says."""
        with _packs(self.store) as packs:
            copies = [data] if (data := packs.read(self.digest)) is not None else []
        if self.path.is_file():
            copies.append(self.path.read_bytes())
        return bool(copies) and all(hash_bytes(c) == self.digest for c in copies)

    def write_bytes(self, data: bytes) -> None:
        """Make every copy hold `data`, checked by nothing (damage): a file is made
        writable and rewritten, a packed copy replaced through the packs' own
        API.  An object that is nowhere becomes a file (a remote's layout)."""
        packed = self.packed()
        if packed:
            with _packs(self.store) as packs:
                packs.drop([self.digest])
                packs.add(self.digest, data)  # (add takes the name on trust)
        if self.path.is_file():
            self.path.chmod(0o644)
        elif packed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(data)


def cache_digests(store: Path) -> set[str]:
    """The digests of every object of a cache (or of a directory remote): its
    files under objects/ and its packed records."""
    objects = store / OBJECTS
    files = {f.parent.name + f.name for f in objects.glob("??/*") if f.is_file() and not f.name.startswith(".")}
    with _packs(store) as packs:
        return files | set(packs.sizes())


# -- processes ---------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether the process is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return gone(pid)


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_pid(path: Path) -> int:
    """The pid a process wrote to `path` (a whole line), once it is there."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"no pid written to {path}")


def hung_pid(p: Project) -> int:
    """Wait for stage b to be hanging; its sleep's pid.  (Stage b's script writes
    that pid to b.pid, then waits: `sleep 30 & echo $! > b.pid; wait`.)"""
    pid_file = p.root / "b.pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "stage b to start")
    return int(pid_file.read_text())


@contextlib.contextmanager
def background_build(p: Project, tmp: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`pivotbuild ARGS` in the background, in its own session like a terminal job,
    its output in tmp/bg.out and tmp/bg.err.  Whatever is left of it or of the
    hanging stage (b.pid) is killed afterwards."""
    env = {**os.environ, "NO_COLOR": "1"}
    with (tmp / "bg.out").open("wb") as out, (tmp / "bg.err").open("wb") as err:
        proc = subprocess.Popen(
            [*PIVOTBUILD, *args], cwd=p.root, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        pid_file = p.root / "b.pid"
        if pid_file.exists() and pid_file.read_text().strip():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# -- the Pivotfile language -------------------------------------------------------------


def sid(name: str, pipeline: str = "") -> StageId:
    return StageId(pipeline, name)


def scripts(module: Module) -> list[tuple[str, str, bool]]:
    """(stage, script text, inline) for every run: field."""
    return [
        (s.name.text, f.script.text, f.script.inline)
        for s in module.statements
        if isinstance(s, StageDecl)
        for f in s.fields
        if f.script is not None
    ]


def where(d: Diagnostic) -> tuple[int, int]:
    return d.loc.line, d.loc.col


# -- the compiler's diagnostics ----------------------------------------------------------


def diagnostics(text: str, root: Path, subdir: str = "", overrides: dict[str, str] | None = None) -> list[Diagnostic]:
    """What compiling `text` reports; it must fail."""
    with pytest.raises(PivotfileError) as info:
        compile_text(text, root, subdir=subdir, overrides=overrides)
    return list(info.value.diagnostics)


def only_error(text: str, root: Path, subdir: str = "", overrides: dict[str, str] | None = None) -> Diagnostic:
    diags = diagnostics(text, root, subdir, overrides)
    assert len(diags) == 1, "\n".join(d.render() for d in diags)
    return diags[0]


def assert_at(diag: Diagnostic, line: int, col: int, *fragments: str, path: str = "Pivotfile") -> None:
    """The diagnostic points at path:line:col and its message says each fragment."""
    assert (diag.loc.path, diag.loc.line, diag.loc.col) == (path, line, col), diag.render()
    for fragment in fragments:
        assert fragment in diag.message, diag.message


def the_stage(pipeline: Pipeline, name: str = "s") -> Stage:
    found = [s for s in pipeline.stages if s.name == name]
    assert len(found) == 1, [s.name for s in pipeline.stages]
    return found[0]


# A file output and a directory output: what the remote tests push and pull.
REMOTE_PIPELINE = """
stage a:
    deps: in.txt
    outs: a.txt
    run: cat $< > $@ && echo ran >> runs.log
stage b:
    deps: a.txt
    outs: tree/
    run: mkdir -p $@/sub && cp $< $@/sub/copy.txt && echo ran >> runs.log
"""


# Two stages, a -> b: the smallest build with an upstream.
PAIR = """
stage a:
    deps: in.txt
    outs: a.txt
    run: cp in.txt a.txt

stage b:
    deps: a.txt
    outs: b.txt
    run: cp a.txt b.txt
"""


def fresh_clone(origin: Project, tmp_path: Path) -> Project:
    """What `git clone` gives: the committed files, no outputs, no cache."""
    q = Project(tmp_path / "two")
    (q.root / ".pivot").mkdir(parents=True)
    for rel in ("Pivotfile", "Pivotfile.lock", "in.txt", ".pivot/config.toml"):
        shutil.copy(origin.root / rel, q.root / rel)
    return q


# The package these tests sit beside, for the scripts' own Python.
_CHECKOUT = str(Path(__file__).resolve().parent.parent)


def run_script(
    script: str, args: list[str], where: Path, *, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`script` in a Python of its own in `where`, importing this checkout's pivotbuild."""
    env = {**os.environ, "PYTHONPATH": _CHECKOUT}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
