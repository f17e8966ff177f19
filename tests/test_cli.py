"""The `pivotbuild` command end to end: the real installed command in a subprocess
(and, for internal errors and interrupts, `pivotbuild.cli.main` (the function) in-process)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project, Result

import pivotbuild
import pivotbuild.cli.app  # before the command modules: importing one of them first fails (a bug)
import pivotbuild.cli.inspect
from pivotbuild.cli import main

PIPELINE = """
MODELS = small large

stage prepare:
    desc: Clean the raw data
    deps: data/raw.csv
    outs: build/clean.csv
    run: cp $< $@

stage train:
    matrix: model=${MODELS}
    deps: build/clean.csv
    outs: models/${model}.pkl
    params: train.epochs
    run: python train.py --epochs ${params.train.epochs} --model ${model} --out $@

stage report:
    deps: models/
    outs: reports/summary.json
    run: cat $^ > $@
"""

PARAMS = "[train]\nepochs = 5\nlr = 0.1\n"

ALL_STAGES = ["prepare", "train@small", "train@large", "report"]


@pytest.fixture
def pipe(project: Project) -> Project:
    project.pivotfile(PIPELINE)
    project.write("params.toml", PARAMS)
    project.write("data/raw.csv", "a,b\n1,2\n")
    return project


def no_traceback(r: Result) -> None:
    assert "Traceback" not in r.err
    assert "Traceback" not in r.out


def usage_error(r: Result) -> None:
    """Exit 2, a message starting `pivotbuild: `, and no traceback."""
    assert r.code == 2, r
    assert r.err.startswith("pivotbuild: "), r.err
    no_traceback(r)


# -- check -------------------------------------------------------------------------------


def test_check_ok(pipe: Project) -> None:
    r = pipe.run("check")
    assert r.code == 0, r
    assert r.out == ""
    assert "pivotbuild: ok: 4 stages in 1 pipeline" in r.err
    assert "warning" not in r.err


def test_check_warns_about_a_missing_source_file(pipe: Project) -> None:
    (pipe.root / "data" / "raw.csv").unlink()
    r = pipe.run("check")
    assert r.code == 0, r
    assert r.err.splitlines()[:3] == [
        "Pivotfile:5:11: warning: 'data/raw.csv' does not exist and no stage writes it (needed by prepare)",
        "        deps: data/raw.csv",
        "              ^",
    ]
    assert "pivotbuild: ok" in r.err


def test_check_does_not_warn_about_produced_files_or_globs(project: Project) -> None:
    project.pivotfile(
        """
        stage gen:
            outs: out/
            run: echo
        stage use:
            deps: out/part.csv src/**/*.py
            run: echo
        """
    )
    r = project.run("check")
    assert r.code == 0, r
    assert "warning" not in r.err


BROKEN = """\
stage a:
    dpes: x.txt
    run: echo a

stage b:
    outs: y.txt
    run: echo ${NOPE}

stage c:
    deps: y.txt
"""


def test_check_on_a_broken_pivotfile_prints_every_error_with_source_and_caret(project: Project) -> None:
    project.pivotfile(BROKEN)
    source = BROKEN.splitlines()
    r = project.run("check")
    assert r.code == 2, r
    no_traceback(r)
    assert r.out == ""
    lines = r.err.splitlines()
    heads = [(i, m) for i, line in enumerate(lines) if (m := re.match(r"Pivotfile:(\d+):(\d+): error: (.*)", line))]
    assert [int(m.group(1)) for _, m in heads] == [2, 7, 9]
    for i, m in heads:
        line, col = int(m.group(1)), int(m.group(2))
        assert lines[i + 1] == "    " + source[line - 1]
        assert lines[i + 2] == "    " + " " * (col - 1) + "^"
    messages = [m.group(3) for _, m in heads]
    assert "dpes" in messages[0]
    assert "deps" in messages[0]  # did you mean
    assert "NOPE" in messages[1]
    assert "run:" in messages[2]
    # the caret points at the offending text
    assert [int(m.group(2)) for _, m in heads] == [5, source[6].index("${NOPE}") + 1, source[8].index("c") + 1]
    assert lines[-1].startswith("pivotbuild: 3 errors in Pivotfile")


def test_check_reports_errors_of_every_included_pivotfile(project: Project) -> None:
    project.pivotfile("include a/ b/\nstage top:\n    run: echo\n")
    project.write("a/Pivotfile", "stage sa:\n    timeout: soon\n    run: echo\n")
    project.write("b/Pivotfile", "stage sb:\n    jobs: many\n    run: echo\n")
    r = project.run("check")
    assert r.code == 2, r
    no_traceback(r)
    assert re.search(r"^a/Pivotfile:2:\d+: error: ", r.err, re.M)
    assert re.search(r"^b/Pivotfile:2:\d+: error: ", r.err, re.M)


def test_check_on_a_graph_error_names_both_stages(project: Project) -> None:
    project.pivotfile("stage one:\n    outs: x.txt\n    run: echo\nstage two:\n    outs: x.txt\n    run: echo\n")
    r = project.run("check")
    assert r.code == 2, r
    no_traceback(r)
    assert r.err.splitlines() == [
        "Pivotfile:5:11: error: two stages write 'x.txt': one and two; give each stage its own outputs",
        "        outs: x.txt",
        "              ^",
        "Pivotfile:2:11: note: one writes 'x.txt' here",
        "        outs: x.txt",
        "              ^",
        "pivotbuild: 1 error in Pivotfile; fix the Pivotfile and run again",
    ]


def test_check_on_a_cycle_prints_the_cycle(project: Project) -> None:
    project.pivotfile(
        """
        stage a:
            deps: y.txt
            outs: x.txt
            run: echo
        stage b:
            deps: x.txt
            outs: y.txt
            run: echo
        """
    )
    r = project.run("check")
    assert r.code == 2, r
    no_traceback(r)
    lines = r.err.splitlines()
    assert lines[0].startswith("Pivotfile:1:7: error: dependency cycle: a -> b -> a")
    assert lines[1:3] == ["    stage a:", "          ^"]
    assert lines[-1] == "pivotbuild: 1 error in Pivotfile; fix the Pivotfile and run again"


def test_check_validates_the_default_targets(project: Project) -> None:
    project.pivotfile("default trian\nstage train:\n    run: echo\n")
    r = project.run("check")
    assert r.code == 2, r
    no_traceback(r)
    lines = r.err.splitlines()
    assert lines[0].startswith("Pivotfile:1:9: error: ")
    assert "did you mean 'train'" in lines[0]
    assert lines[1] == "    default trian"
    assert lines[2] == "    " + " " * 8 + "^"


def test_check_all_covers_every_pipeline(project: Project) -> None:
    project.pivotfile("stage top:\n    run: echo\n")
    project.write("sub/Pivotfile", "stage s1:\n    run: echo\nstage s2:\n    run: echo\n")
    r = project.run("check", "--all")
    assert r.code == 0, r
    assert "3 stages in 2 pipelines" in r.err
    r = project.run("check")
    assert "1 stage in 1 pipeline" in r.err


# -- list ----------------------------------------------------------------------------------


def test_list_shows_stages_in_build_order_with_desc_deps_and_outs(pipe: Project) -> None:
    r = pipe.run("list")
    assert r.code == 0, r
    lines = r.out.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert names == ALL_STAGES
    assert lines[0] == "prepare  Clean the raw data"
    assert "    deps: data/raw.csv" in lines
    assert "    outs: build/clean.csv" in lines
    assert "    outs: models/small.pkl" in lines


def test_list_json_is_an_array_describing_each_stage(pipe: Project) -> None:
    r = pipe.run("list", "--json")
    assert r.code == 0, r
    stages = json.loads(r.out)
    assert isinstance(stages, list)
    assert [s["name"] for s in stages] == ALL_STAGES
    by_name = {s["name"]: s for s in stages}
    prepare = by_name["prepare"]
    assert prepare["desc"] == "Clean the raw data"
    assert [d["path"] for d in prepare["deps"]] == ["data/raw.csv"]
    assert [o["path"] for o in prepare["outs"]] == ["build/clean.csv"]
    assert prepare["command"] == "cp data/raw.csv build/clean.csv"
    assert prepare["params"] == {}
    assert prepare["upstream"] == []
    small = by_name["train@small"]
    assert small["base"] == "train"
    assert small["matrix"] == {"model": "small"}
    assert small["params"] == {"params.toml:train.epochs": 5}
    assert small["command"] == "python train.py --epochs 5 --model small --out models/small.pkl"
    assert small["upstream"] == ["prepare"]
    report = by_name["report"]
    assert report["deps"] == [{"path": "models", "glob": False}]
    assert report["upstream"] == ["train@small", "train@large"]
    for stage in stages:
        for key in ("name", "deps", "outs", "command", "params", "desc", "matrix", "env", "always"):
            assert key in stage


def test_list_targets(pipe: Project) -> None:
    r = pipe.run("list", "--json", "train")
    assert r.code == 0, r
    assert [s["name"] for s in json.loads(r.out)] == ["train@small", "train@large"]
    r = pipe.run("list", "--json", "build/clean.csv", "train@*")
    assert [s["name"] for s in json.loads(r.out)] == ["prepare", "train@small", "train@large"]


def test_list_output_paths_are_relative_to_the_working_directory(pipe: Project) -> None:
    (pipe.root / "models").mkdir()
    r = pipe.run("-f", "../Pivotfile", "list", "--json", "small.pkl", cwd=pipe.root / "models")
    assert r.code == 0, r
    assert [s["name"] for s in json.loads(r.out)] == ["train@small"]


def test_list_unknown_target(pipe: Project) -> None:
    r = pipe.run("list", "trian")
    usage_error(r)
    assert "did you mean 'train'" in r.err


def test_list_with_included_pipeline_uses_qualified_names(project: Project) -> None:
    project.pivotfile("include sub/\nstage use:\n    deps: sub/out.txt\n    run: echo\n")
    project.write("sub/Pivotfile", "stage make:\n    outs: out.txt\n    run: echo\n")
    r = project.run("list", "--json")
    assert r.code == 0, r
    stages = json.loads(r.out)
    assert [s["name"] for s in stages] == ["sub:make", "use"]
    assert stages[0]["pipeline"] == "sub"
    assert stages[0]["outs"][0]["path"] == "sub/out.txt"
    r = project.run("-C", "sub", "list", "--json", "--all")
    assert [s["name"] for s in json.loads(r.out)] == ["make", ".:use"]


# -- graph -----------------------------------------------------------------------------------

EDGES = {
    ("prepare", "train@small"),
    ("prepare", "train@large"),
    ("train@small", "report"),
    ("train@large", "report"),
}


def test_graph_text(pipe: Project) -> None:
    r = pipe.run("graph")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert [line.split()[0] for line in lines] == ALL_STAGES
    assert lines[0].strip() == "prepare"
    parsed = {}
    for line in lines[1:]:
        stage, _, ups = line.partition("<-")
        parsed[stage.strip()] = {u.strip() for u in ups.split(",")}
    assert parsed == {"train@small": {"prepare"}, "train@large": {"prepare"}, "report": {"train@small", "train@large"}}
    r2 = pipe.run("graph", "--format", "text")
    assert r2.out == r.out


def parse_dot(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """A small parser for the dot subset pivotbuild writes; fails on anything else."""
    body = text.strip()
    m = re.fullmatch(r"digraph\s+[\w\"]*\s*\{(.*)\}", body, re.S)
    assert m, f"not a digraph: {text!r}"
    nodes: set[str] = set()
    edges: set[tuple[str, str]] = set()
    quoted = r'"((?:[^"\\]|\\.)*)"'
    for raw in m.group(1).split(";"):
        stmt = raw.strip()
        if not stmt or re.fullmatch(r"\w+\s*=\s*\w+|node\s*\[[^\]]*\]", stmt):
            continue
        if e := re.fullmatch(quoted + r"\s*->\s*" + quoted, stmt):
            edges.add((json.loads(f'"{e.group(1)}"'), json.loads(f'"{e.group(2)}"')))
        elif n := re.fullmatch(quoted, stmt):
            nodes.add(json.loads(f'"{n.group(1)}"'))
        else:
            raise AssertionError(f"unexpected dot statement: {stmt!r}")
    return nodes, edges


def test_graph_dot(pipe: Project) -> None:
    r = pipe.run("graph", "--format", "dot")
    assert r.code == 0, r
    assert r.out.startswith("digraph")
    nodes, edges = parse_dot(r.out)
    assert nodes == set(ALL_STAGES)
    assert edges == EDGES


def test_graph_mermaid(pipe: Project) -> None:
    r = pipe.run("graph", "--format", "mermaid")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "flowchart LR"
    ids = {}
    edges = set()
    for line in lines[1:]:
        if m := re.fullmatch(r'\s+(\w+)\["([^"]*)"\]', line):
            ids[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"\s+(\w+) --> (\w+)", line):
            edges.add((m.group(1), m.group(2)))
        else:
            raise AssertionError(f"unexpected mermaid line: {line!r}")
    assert sorted(ids.values()) == sorted(ALL_STAGES)
    assert {(ids[a], ids[b]) for a, b in edges} == EDGES


def test_graph_of_a_target_shows_what_it_needs(pipe: Project) -> None:
    r = pipe.run("graph", "--format", "dot", "train@small")
    assert r.code == 0, r
    nodes, edges = parse_dot(r.out)
    assert nodes == {"prepare", "train@small"}
    assert edges == {("prepare", "train@small")}


def test_graph_bad_format(pipe: Project) -> None:
    r = pipe.run("graph", "--format", "bogus")
    usage_error(r)
    assert "bogus" in r.err
    assert r.out == ""


# -- version, help ------------------------------------------------------------------------


def test_version(project: Project) -> None:
    r = project.run("--version")
    assert r.code == 0, r
    assert r.out.strip() == f"pivotbuild {pivotbuild.__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_build_options_commands_and_examples(project: Project, flag: str) -> None:
    r = project.run(flag)
    assert r.code == 0, r
    text = r.out
    for option in (
        "-j, --jobs",
        "-k, --keep-going",
        "-n, --dry-run",
        "-q, --question",
        "-B, --always-make",
        "-C, --directory",
        "-f, --file",
        "--all",
        "--json",
    ):
        assert option in text, option
    assert "Commands:" in text
    commands = text.split("Commands:")[1]
    for command in ("check", "list", "graph", "init"):
        assert re.search(rf"^\s+{command}\s", commands, re.M), command
    assert "Examples:" in text
    assert "NAME=VALUE" in text


def test_help_works_without_a_pivotfile(tmp_path: Path, project: Project) -> None:
    r = project.run("--help", cwd=tmp_path)
    assert r.code == 0, r


@pytest.mark.parametrize("command", ["check", "list", "graph", "init"])
def test_subcommand_help(project: Project, command: str) -> None:
    r = project.run(command, "--help")
    assert r.code == 0, r
    assert "Usage:" in r.out


# -- init ----------------------------------------------------------------------------------


def test_init_creates_the_state_directory_with_its_gitignore(tmp_path: Path, project: Project) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    r = project.run("init", cwd=fresh)
    assert r.code == 0, r
    assert r.err.startswith("pivotbuild: ")
    ignore = fresh / ".pivot" / ".gitignore"
    assert ignore.is_file()
    rules = [line for line in ignore.read_text().splitlines() if line and not line.startswith("#")]
    assert rules == ["*", "!.gitignore", "!config.toml", "!pipeline-state"]


def test_init_gitignore_makes_git_ignore_all_but_gitignore_and_config(tmp_path: Path, project: Project) -> None:
    fresh = tmp_path / "repo"
    fresh.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=fresh, check=True)
    assert project.run("init", cwd=fresh).code == 0
    state = fresh / ".pivot"
    (state / "config.toml").write_text("[core]\n")
    (state / "cache" / "ab").mkdir(parents=True)
    (state / "cache" / "ab" / "cdef").write_text("blob")
    (state / "crash.log").write_text("x")
    (state / "config.parsed").write_bytes(b"what config.toml said")
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=fresh,
        capture_output=True,
        text=True,
        check=True,
    )
    listed = sorted(line[3:] for line in proc.stdout.splitlines())
    assert listed == [".gitattributes", ".pivot/.gitignore", ".pivot/config.toml"]


def test_init_twice_says_already_initialised(tmp_path: Path, project: Project) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert project.run("init", cwd=fresh).code == 0
    ignore = fresh / ".pivot" / ".gitignore"
    ignore.write_text("*\n!.gitignore\n!config.toml\n# mine\n")
    r = project.run("init", cwd=fresh)
    assert r.code == 0, r
    assert "already" in r.err
    assert r.err.startswith("pivotbuild: ")
    assert ignore.read_text().endswith("# mine\n")


def test_init_inside_an_existing_project_does_not_nest(project: Project) -> None:
    sub = project.root / "sub"
    sub.mkdir()
    r = project.run("init", cwd=sub)
    assert r.code == 0, r
    assert "already" in r.err
    assert not (sub / ".pivot").exists()


def test_init_in_a_once_included_pipeline_makes_it_a_root(project: Project) -> None:
    project.pivotfile("include sub/\nstage top:\n    deps: sub/s.txt\n    outs: t.txt\n    run: cp $< $@\n")
    project.write("sub/Pivotfile", "stage s:\n    outs: s.txt\n    run: echo s > $@\n")
    sub = project.root / "sub"
    assert project.run().code == 0  # sub/.pivot/ now holds the state of sub as a pipeline
    refused = project.run("init", cwd=sub)  # while the Pivotfile above includes it, it cannot be a root
    assert refused.code == 2
    assert f"{project.root / 'Pivotfile'} includes it" in refused.err
    assert "remove the include" in refused.err
    project.pivotfile("stage top:\n    deps: sub/s.txt\n    outs: t.txt\n    run: cp $< $@\n")
    made = project.run("init", cwd=sub)
    assert made.code == 0, made.err
    assert "is now a project root" in made.err
    assert project.run(cwd=sub).code == 0
    assert (sub / ".pivot/history.jsonl").exists()  # the build used sub as its root
    assert "already a project root" in project.run("init", cwd=sub).err
    listed = project.run("list", "--all")  # from the old root: sub is a project of its own now
    assert listed.out.split()[0] == "top" and "sub:s" not in listed.out


def test_init_with_directory_option(tmp_path: Path, project: Project) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    r = project.run("-C", str(fresh), "init", cwd=tmp_path)
    assert r.code == 0, r
    assert (fresh / ".pivot" / ".gitignore").is_file()


# -- -C and -f --------------------------------------------------------------------------------


@pytest.fixture
def nested(project: Project) -> Project:
    project.write("sub/Pivotfile", "stage inner:\n    outs: inner.txt\n    run: echo\n")
    project.write("alt.pivot", "stage alt:\n    outs: alt.txt\n    run: echo\n")
    return project


@pytest.mark.parametrize(
    "args",
    [
        ("-C", "sub", "list"),
        ("list", "-C", "sub"),
        ("-Csub", "list"),
        ("--directory", "sub", "list"),
        ("--directory=sub", "list"),
        ("list", "--directory=sub"),
    ],
)
def test_directory_option_before_or_after_the_subcommand(nested: Project, args: tuple[str, ...]) -> None:
    r = nested.run(*args)
    assert r.code == 0, r
    assert r.out.splitlines()[0] == "inner"


def test_directory_option_with_a_build_target(nested: Project) -> None:
    r = nested.run("-C", "sub", "inerr")
    usage_error(r)
    assert "did you mean 'inner'" in r.err


@pytest.mark.parametrize(
    "args",
    [
        ("-f", "alt.pivot", "list"),
        ("list", "-f", "alt.pivot"),
        ("--file", "alt.pivot", "list"),
        ("--file=alt.pivot", "list"),
        ("-falt.pivot", "list"),
    ],
)
def test_file_option_before_or_after_the_subcommand(nested: Project, args: tuple[str, ...]) -> None:
    r = nested.run(*args)
    assert r.code == 0, r
    assert r.out.splitlines()[0] == "alt"


def test_file_option_naming_a_directory(nested: Project) -> None:
    r = nested.run("-f", "sub", "list")
    assert r.code == 0, r
    # the -f pipeline is the main one: its stages need no prefix
    assert r.out.splitlines()[0] == "inner"


def test_file_option_naming_nothing(nested: Project) -> None:
    r = nested.run("-f", "nope.pivot", "check")
    usage_error(r)
    assert "nope.pivot" in r.err


def test_directory_and_file_together(nested: Project) -> None:
    r = nested.run("-C", "sub", "-f", "../alt.pivot", "list", "--json")
    assert r.code == 0, r
    assert [s["name"] for s in json.loads(r.out)] == ["alt"]
    assert json.loads(r.out)[0]["outs"][0]["path"] == "alt.txt"


# -- subcommands versus targets ---------------------------------------------------------------

SHADOWING = """
stage check:
    outs: checked.txt
    run: echo checked > $@
stage train:
    outs: model.pkl
    run: echo trained > $@
"""


def built(project: Project) -> set[str]:
    return {name for name in ("checked.txt", "model.pkl") if (project.root / name).exists()}


def test_first_word_naming_a_subcommand_is_the_subcommand(project: Project) -> None:
    project.pivotfile(SHADOWING)
    r = project.run("check")
    assert r.code == 0, r
    assert "ok: 2 stages" in r.err
    assert built(project) == set()


def test_repro_builds_a_stage_named_like_a_subcommand(project: Project) -> None:
    project.pivotfile(SHADOWING)
    r = project.run("repro", "check")
    assert r.code == 0, r
    no_traceback(r)
    assert built(project) == {"checked.txt"}
    assert (project.root / "checked.txt").read_text() == "checked\n"


def test_subcommand_after_global_options_is_still_the_subcommand(project: Project) -> None:
    project.pivotfile(SHADOWING)
    for args in (("-C", ".", "check"), ("-f", "Pivotfile", "check"), ("--file=Pivotfile", "check")):
        r = project.run(*args)
        assert r.code == 0, (args, r)
        assert "ok: 2 stages" in r.err
    assert built(project) == set()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("train",), {"model.pkl"}),
        (("repro", "train"), {"model.pkl"}),
        (("model.pkl",), {"model.pkl"}),
        (("checked.txt",), {"checked.txt"}),
        (("-j", "1", "check"), {"checked.txt"}),
        ((), {"checked.txt", "model.pkl"}),
        (("repro",), {"checked.txt", "model.pkl"}),
    ],
)
def test_build_targets(project: Project, args: tuple[str, ...], expected: set[str]) -> None:
    project.pivotfile(SHADOWING)
    r = project.run(*args)
    assert r.code == 0, r
    no_traceback(r)
    assert built(project) == expected


@pytest.mark.parametrize("args", [("trian",), ("repro", "trian"), ("-j", "2", "trian"), ("train", "trian")])
def test_unknown_target_suggests_close_names(project: Project, args: tuple[str, ...]) -> None:
    project.pivotfile(SHADOWING)
    r = project.run(*args)
    usage_error(r)
    assert "unknown target 'trian'" in r.err
    assert "did you mean 'train'" in r.err
    assert built(project) == set()


def test_repro_of_a_subcommand_name_that_is_no_stage(project: Project) -> None:
    project.pivotfile(SHADOWING)
    r = project.run("repro", "list")
    usage_error(r)
    assert "unknown target 'list'" in r.err


def test_target_pattern_matching_nothing(project: Project) -> None:
    project.pivotfile(SHADOWING)
    r = project.run("deploy@*")
    usage_error(r)
    assert "deploy@*" in r.err


# -- NAME=VALUE overrides -------------------------------------------------------------------

OVERRIDABLE = """
MODELS = small large
GREETING = hello
stage train:
    matrix: model=${MODELS}
    outs: out-${model}.txt
    run: echo ${GREETING} ${model} > $@
"""


def outputs(project: Project) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(project.root.glob("out-*.txt"))}


def test_without_overrides_the_pivotfile_values_are_used(project: Project) -> None:
    project.pivotfile(OVERRIDABLE)
    r = project.run()
    assert r.code == 0, r
    assert outputs(project) == {"out-large.txt": "hello large\n", "out-small.txt": "hello small\n"}


@pytest.mark.parametrize(
    "args",
    [
        ("MODELS=tiny", "train@tiny"),
        ("train@tiny", "MODELS=tiny"),
        ("repro", "MODELS=tiny", "train@tiny"),
        ("MODELS=tiny",),
    ],
)
def test_override_changes_the_stages(project: Project, args: tuple[str, ...]) -> None:
    project.pivotfile(OVERRIDABLE)
    r = project.run(*args)
    assert r.code == 0, r
    assert outputs(project) == {"out-tiny.txt": "hello tiny\n"}


def test_without_the_override_the_variant_does_not_exist(project: Project) -> None:
    project.pivotfile(OVERRIDABLE)
    r = project.run("train@tiny")
    usage_error(r)
    assert "unknown target 'train@tiny'" in r.err


def test_override_with_several_words_and_of_a_command_variable(project: Project) -> None:
    project.pivotfile(OVERRIDABLE)
    r = project.run("MODELS=a b", "GREETING=bye")
    assert r.code == 0, r
    assert outputs(project) == {"out-a.txt": "bye a\n", "out-b.txt": "bye b\n"}


def test_override_that_breaks_the_pivotfile_is_a_located_error(project: Project) -> None:
    project.pivotfile(OVERRIDABLE)
    r = project.run("MODELS=bad/value")
    assert r.code == 2, r
    no_traceback(r)
    assert "bad/value" in r.err
    assert re.search(r"^(Pivotfile|<command line>):\d+:\d+: error: ", r.err, re.M)
    assert outputs(project) == {}


# -- bad usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("-j", "0"),
        ("-j", "x"),
        ("-j0",),
        ("--jobs=-3",),
        ("-l", "0"),
        ("-l", "abc"),
        ("-n", "-q"),
        ("-s", "-v"),
        ("-w", "-n"),
        ("-w", "-q"),
        ("--serve",),
        ("--restart",),
        ("--debounce", "10"),
        ("--no-such-option",),
        ("graph", "--format", "bogus"),
        ("list", "--bogus"),
        ("check", "extra"),
        ("-C", "/nonexistent/dir", "check"),
        ("check", "-C", "/nonexistent/dir"),
        ("-C", "/nonexistent/dir"),
    ],
)
def test_bad_usage_exits_2_with_a_pivotbuild_message(pipe: Project, args: tuple[str, ...]) -> None:
    r = pipe.run(*args)
    usage_error(r)
    assert r.out == ""


def test_bad_usage_message_says_what_is_wrong(pipe: Project) -> None:
    r = pipe.run("-n", "-q")
    assert "-n" in r.err
    assert "-q" in r.err
    r = pipe.run("-C", "/nonexistent/dir", "check")
    assert "/nonexistent/dir" in r.err


@pytest.mark.parametrize("args", [("-f",), ("--file",), ("-C",), ("--directory",), ("check", "-f"), ("check", "-C")])
def test_option_missing_its_value(pipe: Project, args: tuple[str, ...]) -> None:
    r = pipe.run(*args)
    usage_error(r)
    assert "requires an argument" in r.err


@pytest.mark.parametrize("args", [(), ("check",), ("list",), ("graph",), ("train",)])
def test_no_pivotfile(tmp_path: Path, project: Project, args: tuple[str, ...]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = project.run(*args, cwd=empty)
    usage_error(r)
    assert "no Pivotfile" in r.err
    assert "-f" in r.err  # says what to do


# -- internal errors and interrupts (in-process) ---------------------------------------------


def test_internal_error_exits_3_and_writes_the_crash_log(
    pipe: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom in load")

    monkeypatch.chdir(pipe.root)
    monkeypatch.setattr(pivotbuild.cli.inspect, "load", boom)
    code = main(["check"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("pivotbuild: ")
    assert "internal error" in err
    assert ".pivot/crash.log" in err
    assert "Traceback" not in err
    log = pipe.root / ".pivot" / "crash.log"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: kaboom in load" in text
    assert "check" in text


def test_crash_log_is_at_the_project_root(
    pipe: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("deep")

    sub = pipe.root / "sub"
    sub.mkdir()
    pipe.write("sub/Pivotfile", "stage s:\n    run: echo\n")
    monkeypatch.chdir(sub)
    monkeypatch.setattr(pivotbuild.cli.inspect, "load", boom)
    assert main(["list"]) == 3
    capsys.readouterr()
    assert "ValueError: deep" in (pipe.root / ".pivot" / "crash.log").read_text()
    assert not (sub / ".pivot").exists()


def test_keyboard_interrupt_exits_130(
    pipe: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.chdir(pipe.root)
    monkeypatch.setattr(pivotbuild.cli.inspect, "load", interrupted)
    assert main(["check"]) == 130
    err = capsys.readouterr().err
    assert "pivotbuild: interrupted" in err.splitlines()
    assert "Traceback" not in err


CLI_MODULES = sorted(p.stem for p in Path(pivotbuild.cli.app.__file__).parent.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_cli_module_imports_on_its_own(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"import pivotbuild.cli.{module}"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_user_errors_in_process_return_their_exit_code(
    project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project.pivotfile("stage a:\n    bogus: 1\n    run: echo\n")
    monkeypatch.chdir(project.root)
    assert main(["check"]) == 2
    assert "Pivotfile:2:5: error: " in capsys.readouterr().err
    assert not (project.root / ".pivot" / "crash.log").exists()


def test_a_deleted_working_directory_gets_a_message_not_a_traceback(project: Project, tmp_path: Path) -> None:
    from conftest import PIVOTBUILD

    project.pivotfile("stage make:\n    outs: out.txt\n    run: echo hi > $@\n")
    gone = tmp_path / "gone"
    # The shell enters the directory, deletes it, then runs pivotbuild there.
    script = 'mkdir "$1" && cd "$1" && rmdir "$1" && shift && exec "$@"'
    r = subprocess.run(
        ["sh", "-c", script, "sh", str(gone), *PIVOTBUILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 2
    assert r.stderr.startswith("pivotbuild: the current directory no longer exists")
    assert "Traceback" not in r.stderr
    # An absolute -C still works from there.
    r = subprocess.run(
        ["sh", "-c", script, "sh", str(gone), *PIVOTBUILD, "-C", str(project.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert (project.root / "out.txt").read_text() == "hi\n"


# -- --all -------------------------------------------------------------------------------------

PIPELINE_COMMANDS = ["repro", "status", "list", "check", "graph", "commit", "push", "pull", "fetch", "checkout"]
PIPELINE_COMMANDS += ["verify", "gc", "clean"]


@pytest.mark.parametrize("command", PIPELINE_COMMANDS)
def test_every_command_that_works_on_pipelines_takes_all(project: Project, command: str) -> None:
    r = project.run(command, "--help")
    assert r.code == 0, r.err
    assert "--all Every pipeline: every Pivotfile under the project root" in " ".join(r.out.split())


def test_a_no_commit_build_of_every_pipeline_is_committed_verified_and_moved_with_all(
    tmp_path: Path, project: Project
) -> None:
    project.pivotfile("stage top:\n    outs: t.txt\n    run: echo t > $@\n")
    project.write("sub/Pivotfile", "stage s:\n    outs: s.txt\n    run: echo s > $@\n")
    assert project.run("--all", "--no-commit").code == 0
    assert project.run("verify", "--all").code == 1  # pending
    committed = project.run("commit", "--all")
    assert committed.code == 0, committed.err
    assert committed.out.split() == ["committed", "top", "committed", "sub:s"]
    assert (project.root / "sub/Pivotfile.lock").exists()
    assert project.run("verify", "--all").code == 0
    share = tmp_path / "share"
    share.mkdir()
    assert project.run("remote", "add", "--default", "team", str(share)).code == 0
    assert project.run("push", "--all").code == 0
    assert project.run("clean", "--all").out.split() == ["removed", "t.txt", "removed", "sub/s.txt"]
    shutil.rmtree(project.root / ".pivot/cache")
    assert project.run("fetch", "--all").code == 0
    pulled = project.run("pull", "--all")
    assert pulled.code == 0, pulled.err
    assert (project.root / "sub/s.txt").read_text() == "s\n"
    assert project.run("clean", "--all").code == 0
    assert project.run("checkout", "--all").out.split() == ["restored", "t.txt", "restored", "sub/s.txt"]
    assert project.run("gc", "--all").code == 0
    assert project.run("verify", "--all").code == 0


def test_everything_printed_reaches_a_pipe_before_the_program_exits(project: Project) -> None:
    # `pivotbuild` leaves with os._exit (no interpreter teardown): its buffered
    # output must have been flushed first.
    project.pivotfile("stage s:\n    run: seq 1 20000\n")
    r = project.run("-v")
    assert r.code == 0, r.err
    lines = [line for line in r.out.splitlines() if line.startswith("s | ")]
    assert lines[0] == "s | 1" and lines[-1] == "s | 20000" and len(lines) == 20000


def test_a_reader_that_stops_early_gets_no_traceback(project: Project) -> None:
    project.pivotfile("stage s:\n    run: seq 1 20000\n")
    shell = subprocess.run(
        f"{' '.join(PIVOTBUILD)} -v | head -n 1",
        shell=True,
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shell.stdout.startswith("[1/1] s"), shell.stdout
    assert "Traceback" not in shell.stderr


def test_status_from_inside_a_stage_reads_the_state_without_waiting_for_the_build(project: Project) -> None:
    # The build holds the project lock while its stages run: status reads the state without it.
    command = " ".join(shlex.quote(word) for word in PIVOTBUILD)
    project.pivotfile(
        f"""
        stage a:
            outs: a.txt
            run: echo a > $@

        stage look:
            deps: a.txt
            outs: look.json
            run: {command} status --json > $@
        """
    )
    r = project.run("-j1", timeout=60)
    assert r.code == 0, r
    rows = {row["stage"]: row["up_to_date"] for row in json.loads((project.root / "look.json").read_text())}
    assert rows == {"a": True, "look": False}
