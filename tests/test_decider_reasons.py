"""decider.decide, the pure rule: every reason of its vocabulary, from real
snapshots of real files.  (The Decider around it: test_decider.py.)"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
from conftest import compile_text

from pivotbuild.build.decider import (
    ALWAYS,
    COMMAND_CHANGED,
    ENV_CHANGED,
    FORCED,
    NEVER_RUN,
    OUTS_CHANGED,
    UP_TO_DATE,
    Decision,
    decide,
)
from pivotbuild.model import Stage
from pivotbuild.state import snapshot
from pivotbuild.state.records import StageRecord
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.state.statcache import StatCache


class Workspace:
    """A project root with a stat cache, compiling Pivotfile text and taking snapshots."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = StatCache(root / ".pivot" / "statcache")

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def stage(self, text: str, name: str = "s") -> Stage:
        found = [s for s in compile_text(text, self.root).stages if s.name == name]
        assert len(found) == 1
        return found[0]

    def snap(self, text: str, name: str = "s") -> tuple[Stage, Snapshot]:
        stage = self.stage(text, name)
        return stage, snapshot.take(stage, self.root, self.cache)

    def ran(self, text: str, name: str = "s") -> StageRecord:
        """The record a successful run of the stage would leave, from a snapshot now."""
        stage, snap = self.snap(text, name)
        return StageRecord(stage.name, snap.fingerprint, snap.command, snap.deps, snap.outs, snap.params, snap.facets)

    def decide(self, record: StageRecord | None, text: str, name: str = "s", forced: bool = False) -> Decision:
        stage, snap = self.snap(text, name)
        return decide(record, snap, forced=forced, always=stage.always)

    def reason(self, record: StageRecord | None, text: str, name: str = "s") -> str:
        d = self.decide(record, text, name)
        assert d.run == (d.reason != UP_TO_DATE), d
        return d.reason


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = (tmp_path / "proj").resolve()
    (root / ".pivot").mkdir(parents=True)
    w = Workspace(root)
    w.write("in.txt", "input\n")
    w.write("out.txt", "output\n")
    return w


BASIC = """
stage s:
    deps: in.txt
    outs: out.txt
    run: cp in.txt out.txt
"""


def test_up_to_date_when_nothing_changed(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.decide(rec, BASIC) == Decision(False, UP_TO_DATE)
    # Again through a reloaded stat cache, as the next build would.
    ws.cache.save()
    ws.cache = StatCache(ws.cache.path)
    assert ws.decide(rec, BASIC) == Decision(False, UP_TO_DATE)


def test_no_op_decision_reads_no_file(ws: Workspace) -> None:
    time.sleep(0.1)  # leave the stat cache's racy window
    rec = ws.ran(BASIC)
    ws.cache.save()
    ws.cache = StatCache(ws.cache.path)
    assert ws.decide(rec, BASIC) == Decision(False, UP_TO_DATE)
    assert ws.cache.files_read == 0


def test_never_run(ws: Workspace) -> None:
    assert ws.decide(None, BASIC) == Decision(True, NEVER_RUN)


def test_forced(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.decide(rec, BASIC, forced=True) == Decision(True, FORCED)
    assert ws.decide(None, BASIC, forced=True) == Decision(True, FORCED)


def test_always(ws: Workspace) -> None:
    text = BASIC + "    always: yes\n"
    rec = ws.ran(text)
    assert ws.decide(rec, text) == Decision(True, ALWAYS)
    assert ws.decide(None, text) == Decision(True, ALWAYS)
    assert ws.decide(rec, text, forced=True) == Decision(True, FORCED)


def test_command_changed(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.reason(rec, BASIC.replace("cp in.txt out.txt", "cp -p in.txt out.txt")) == COMMAND_CHANGED


def test_command_changed_through_a_variable(ws: Workspace) -> None:
    text = "FLAGS = -p\n" + BASIC.replace("cp in.txt", "cp ${FLAGS} in.txt")
    rec = ws.ran(text)
    assert ws.reason(rec, text) == UP_TO_DATE
    assert ws.reason(rec, text.replace("FLAGS = -p", "FLAGS = -a")) == COMMAND_CHANGED


def test_py_function_changed(ws: Workspace) -> None:
    text = "stage s:\n    deps: in.txt\n    outs: out.txt\n    py: tasks:build\n"
    rec = ws.ran(text)
    assert ws.reason(rec, text) == UP_TO_DATE
    assert ws.reason(rec, text.replace("tasks:build", "tasks:build2")) == COMMAND_CHANGED


def test_env_changed(ws: Workspace) -> None:
    text = BASIC + "    env: MODE=fast\n"
    rec = ws.ran(text)
    assert ws.reason(rec, text) == UP_TO_DATE
    assert ws.reason(rec, text.replace("MODE=fast", "MODE=slow")) == ENV_CHANGED
    assert ws.reason(rec, text.replace("MODE=fast", "MODE=fast EXTRA=1")) == ENV_CHANGED
    assert ws.reason(rec, BASIC) == ENV_CHANGED


def test_env_added(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.reason(rec, BASIC + "    env: A=1\n") == ENV_CHANGED


def test_shell_changed(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.reason(rec, "SHELL = /bin/sh -eu\n" + BASIC) == ENV_CHANGED
    with_bash = "SHELL = bash -e\n" + BASIC
    rec = ws.ran(with_bash)
    assert ws.reason(rec, with_bash) == UP_TO_DATE
    assert ws.reason(rec, BASIC) == ENV_CHANGED


PARAMS_TOML = """
[train]
epochs = 10
lr = 0.1
optimizer = "adam"
"""

WITH_PARAM = BASIC + "    params: train.epochs\n"


def write_params(ws: Workspace, **changes: str) -> None:
    text = textwrap.dedent(PARAMS_TOML)
    for key, value in changes.items():
        lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    ws.write("params.toml", text)


def test_param_changed(ws: Workspace) -> None:
    write_params(ws)
    rec = ws.ran(WITH_PARAM)
    assert ws.reason(rec, WITH_PARAM) == UP_TO_DATE
    write_params(ws, epochs="20")
    assert ws.reason(rec, WITH_PARAM) == "param train.epochs 10 -> 20"


def test_param_string_value(ws: Workspace) -> None:
    write_params(ws)
    text = BASIC + "    params: train.optimizer\n"
    rec = ws.ran(text)
    write_params(ws, optimizer='"sgd"')
    assert ws.reason(rec, text) == 'param train.optimizer "adam" -> "sgd"'


def test_unrelated_param_in_the_same_file_changes_nothing(ws: Workspace) -> None:
    write_params(ws)
    rec = ws.ran(WITH_PARAM)
    write_params(ws, lr="0.5", optimizer='"sgd"')
    assert ws.decide(rec, WITH_PARAM) == Decision(False, UP_TO_DATE)


def test_param_added(ws: Workspace) -> None:
    write_params(ws)
    rec = ws.ran(BASIC)
    assert ws.reason(rec, WITH_PARAM) == "param train.epochs (none) -> 10"


def test_param_removed(ws: Workspace) -> None:
    write_params(ws)
    both = BASIC + "    params: train.epochs train.lr\n"
    rec = ws.ran(both)
    assert ws.reason(rec, WITH_PARAM) == "param train.lr 0.1 -> (none)"


def test_param_table_tracks_every_key(ws: Workspace) -> None:
    write_params(ws)
    text = BASIC + "    params: train\n"
    rec = ws.ran(text)
    write_params(ws, lr="0.2")
    reason = ws.reason(rec, text)
    assert reason.startswith("param train ")
    assert '"lr":0.1' in reason
    assert '"lr":0.2' in reason


GLOB = """
stage s:
    deps: data/*.csv
    outs: out.txt
    run: cat data/*.csv > out.txt
"""


def test_dep_set_of_glob_changed_when_a_file_is_added(ws: Workspace) -> None:
    ws.write("data/a.csv", "a\n")
    rec = ws.ran(GLOB)
    assert ws.reason(rec, GLOB) == UP_TO_DATE
    ws.write("data/b.csv", "b\n")
    assert ws.reason(rec, GLOB) == "dep set of glob data/*.csv changed"


def test_dep_set_of_glob_changed_when_a_file_is_removed(ws: Workspace) -> None:
    ws.write("data/a.csv", "a\n")
    ws.write("data/b.csv", "b\n")
    rec = ws.ran(GLOB)
    (ws.root / "data" / "b.csv").unlink()
    assert ws.reason(rec, GLOB) == "dep set of glob data/*.csv changed"


def test_dep_set_of_glob_changed_when_a_file_is_renamed(ws: Workspace) -> None:
    ws.write("data/a.csv", "a\n")
    rec = ws.ran(GLOB)
    (ws.root / "data" / "a.csv").rename(ws.root / "data" / "z.csv")
    assert ws.reason(rec, GLOB) == "dep set of glob data/*.csv changed"


def test_non_matching_file_under_the_glob_changes_nothing(ws: Workspace) -> None:
    ws.write("data/a.csv", "a\n")
    rec = ws.ran(GLOB)
    ws.write("data/notes.txt", "not a csv\n")
    ws.write("data/.hidden.csv", "hidden\n")
    assert ws.reason(rec, GLOB) == UP_TO_DATE


def test_glob_match_content_changed_names_the_match(ws: Workspace) -> None:
    ws.write("data/a.csv", "a\n")
    ws.write("data/b.csv", "b\n")
    rec = ws.ran(GLOB)
    ws.write("data/b.csv", "B\n")
    assert ws.reason(rec, GLOB) == "dep data/b.csv changed"


def test_glob_in_command_via_automatic_variable(ws: Workspace) -> None:
    text = GLOB.replace("cat data/*.csv", "cat $^")
    ws.write("data/a.csv", "a\n")
    rec = ws.ran(text)
    assert rec.command == "cat data/a.csv > out.txt"
    ws.write("data/b.csv", "b\n")
    # The rendered command changes too; the reason is still one specific fact.
    assert ws.reason(rec, text) in {"dep set of glob data/*.csv changed", COMMAND_CHANGED}


def test_reordering_deps_changes_nothing(ws: Workspace) -> None:
    # The same deps listed in another order: same command, same dep sets.
    ws.write("a/1.csv", "1\n")
    ws.write("b/2.csv", "2\n")
    base = "stage s:\n    deps: {}\n    outs: out.txt\n    run: true\n"
    rec = ws.ran(base.format("in.txt a/*.csv"))
    assert ws.reason(rec, base.format("a/*.csv in.txt")) == UP_TO_DATE
    rec = ws.ran(base.format("a/*.csv b/*.csv"))
    assert ws.reason(rec, base.format("b/*.csv a/*.csv")) == UP_TO_DATE


def test_dep_content_changed(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    ws.write("in.txt", "new input\n")
    assert ws.reason(rec, BASIC) == "dep in.txt changed"


def test_dep_same_size_content_change(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    path = ws.root / "in.txt"
    st = path.stat()
    path.write_text("INPUT\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ws.reason(rec, BASIC) == "dep in.txt changed"


def test_touch_keeps_a_dep_up_to_date(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    future = time.time_ns() + 10_000_000_000
    os.utime(ws.root / "in.txt", ns=(future, future))
    assert ws.decide(rec, BASIC) == Decision(False, UP_TO_DATE)
    # Rewriting the same bytes is no change either.
    ws.write("in.txt", "input\n")
    assert ws.decide(rec, BASIC) == Decision(False, UP_TO_DATE)


def test_dep_deleted(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    (ws.root / "in.txt").unlink()
    assert ws.reason(rec, BASIC) == "dep in.txt changed"


def test_dep_added_to_deps(ws: Workspace) -> None:
    ws.write("extra.txt", "extra\n")
    rec = ws.ran(BASIC)
    assert ws.reason(rec, BASIC.replace("deps: in.txt", "deps: in.txt extra.txt")) == "dep extra.txt changed"


def test_dep_removed_from_deps(ws: Workspace) -> None:
    ws.write("extra.txt", "extra\n")
    text = BASIC.replace("deps: in.txt", "deps: in.txt extra.txt")
    rec = ws.ran(text)
    assert ws.reason(rec, BASIC) == "dep extra.txt changed"


DIRDEP = """
stage s:
    deps: models/
    outs: out.txt
    run: ls models > out.txt
"""


def test_directory_dep_changed(ws: Workspace) -> None:
    ws.write("models/a.bin", "a")
    ws.write("models/sub/b.bin", "b")
    rec = ws.ran(DIRDEP)
    assert ws.reason(rec, DIRDEP) == UP_TO_DATE
    ws.write("models/sub/c.bin", "c")
    assert ws.reason(rec, DIRDEP) == "dep models changed"


def test_directory_dep_chmod_exec(ws: Workspace) -> None:
    ws.write("models/a.bin", "a")
    rec = ws.ran(DIRDEP)
    (ws.root / "models" / "a.bin").chmod(0o755)
    assert ws.reason(rec, DIRDEP) == "dep models changed"


def test_out_missing(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    (ws.root / "out.txt").unlink()
    assert ws.reason(rec, BASIC) == "out out.txt missing"


def test_out_modified(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    ws.write("out.txt", "tampered\n")
    assert ws.reason(rec, BASIC) == "out out.txt modified"


def test_out_touched_is_not_modified(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    future = time.time_ns() + 10_000_000_000
    os.utime(ws.root / "out.txt", ns=(future, future))
    assert ws.reason(rec, BASIC) == UP_TO_DATE


def test_directory_out_modified_and_missing(ws: Workspace) -> None:
    text = "stage s:\n    deps: in.txt\n    outs: build/\n    run: mkdir -p build\n"
    ws.write("build/a.o", "a")
    rec = ws.ran(text)
    assert ws.reason(rec, text) == UP_TO_DATE
    ws.write("build/b.o", "b")
    assert ws.reason(rec, text) == "out build modified"
    for p in sorted((ws.root / "build").iterdir()):
        p.unlink()
    (ws.root / "build").rmdir()
    assert ws.reason(rec, text) == "out build missing"


def test_outs_changed_when_an_option_changes(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.reason(rec, BASIC.replace("outs: out.txt", "outs: out.txt (cache=false)")) == OUTS_CHANGED
    assert ws.reason(rec, BASIC.replace("outs: out.txt", "outs: out.txt (persist)")) == OUTS_CHANGED


def test_outs_changed_when_an_out_is_added_or_removed(ws: Workspace) -> None:
    ws.write("log.txt", "log\n")
    rec = ws.ran(BASIC)
    assert ws.reason(rec, BASIC.replace("outs: out.txt", "outs: out.txt log.txt")) == OUTS_CHANGED
    both = BASIC.replace("outs: out.txt", "outs: out.txt log.txt")
    rec = ws.ran(both)
    assert ws.reason(rec, BASIC) == OUTS_CHANGED


def test_added_out_that_does_not_exist_is_missing(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    assert ws.reason(rec, BASIC.replace("outs: out.txt", "outs: out.txt new.txt")) == "out new.txt missing"


# -- the order of the checks -----------------------------------------------------------


def test_command_change_comes_before_dep_change(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    ws.write("in.txt", "changed\n")
    (ws.root / "out.txt").unlink()
    assert ws.reason(rec, BASIC.replace("cp in.txt", "cp -v in.txt")) == COMMAND_CHANGED


def test_param_change_comes_before_env_change(ws: Workspace) -> None:
    # A param is checked first: `${params.K}` changes the command too, and the param is the cause.
    write_params(ws)
    rec = ws.ran(WITH_PARAM)
    write_params(ws, epochs="20")
    assert ws.reason(rec, WITH_PARAM + "    env: X=1\n") == "param train.epochs 10 -> 20"


def test_param_change_comes_before_dep_change(ws: Workspace) -> None:
    write_params(ws)
    rec = ws.ran(WITH_PARAM)
    write_params(ws, epochs="20")
    ws.write("in.txt", "changed\n")
    assert ws.reason(rec, WITH_PARAM) == "param train.epochs 10 -> 20"


def test_glob_set_comes_before_dep_content(ws: Workspace) -> None:
    text = GLOB.replace("deps: data/*.csv", "deps: in.txt data/*.csv")
    ws.write("data/a.csv", "a\n")
    rec = ws.ran(text)
    ws.write("in.txt", "changed\n")
    ws.write("data/b.csv", "b\n")
    assert ws.reason(rec, text) == "dep set of glob data/*.csv changed"


def test_dep_change_comes_before_out_missing(ws: Workspace) -> None:
    rec = ws.ran(BASIC)
    ws.write("in.txt", "changed\n")
    (ws.root / "out.txt").unlink()
    assert ws.reason(rec, BASIC) == "dep in.txt changed"


def test_out_missing_comes_before_out_modified(ws: Workspace) -> None:
    text = BASIC.replace("outs: out.txt", "outs: out.txt z.txt")
    ws.write("z.txt", "z\n")
    rec = ws.ran(text)
    ws.write("out.txt", "tampered\n")
    (ws.root / "z.txt").unlink()
    assert ws.reason(rec, text) == "out z.txt missing"


def test_decision_is_the_same_for_a_record_round_tripped_through_the_lockfile(ws: Workspace) -> None:
    from pivotbuild.state import lockfile
    from pivotbuild.state.records import LockData

    ws.write("data/a.csv", "a\n")
    write_params(ws)
    text = GLOB + "    params: train.epochs\n    env: A=1\n"
    rec = ws.ran(text)
    back = lockfile.decode(lockfile.encode(LockData.of({rec.name: rec}))).stages[0]
    assert back == rec
    assert ws.reason(back, text) == UP_TO_DATE
