"""The build command's options (cli/buildargs.py): one declaration read by
click's `repro` and by the fast path's parser, which must make the same
`BuildOptions` from the same command line, or leave it to click."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from pivotbuild.build.engine import Engine
from pivotbuild.build.options import BuildOptions
from pivotbuild.cli import buildargs
from pivotbuild.cli.build import repro
from pivotbuild.cli.buildargs import BUILD_OPTIONS, DIRECTORY, FILE
from pivotbuild.cli.command import main

# Command lines the fast path takes: every flag of every option it takes, in
# every spelling, with targets and NAME=VALUE around them.
FAST = [
    (),
    ("a",),
    ("a", "b", "X=1", "pipe:c"),
    ("NAME=a=b", "t"),
    ("-j", "4"),
    ("-j4",),
    ("--jobs", "4"),
    ("--jobs=12",),
    ("-l", "2.5"),
    ("-l3",),
    ("--load-average", "0.5"),
    ("--load-average=1e1",),
    ("-k",),
    ("--keep-going",),
    ("-q",),
    ("--question", "a"),
    ("-s",),
    ("--quiet",),
    ("--no-cache",),
    ("--no-wait",),
    ("-f", "Other"),
    ("-fOther",),
    ("--file", "Other"),
    ("--file=Other", "a"),
    ("-C", "sub"),
    ("-Csub",),
    ("--directory", "sub"),
    ("--directory=sub", "a"),
    ("-C", "sub", "-C", "deeper"),
    ("a", "-k", "b"),  # options among the targets, as click takes them
    ("-k", "-s", "-j2", "a", "B.c=1", "--no-wait", "-C", "sub", "-f", "Other", "--no-cache", "-l", "4"),
]

# Command lines the fast path leaves to click: help, subcommands, options it
# does not take, values click may read otherwise or refuses, combined flags.
DECLINED = [
    ("--help",),
    ("-h",),
    ("--version",),
    ("list",),
    ("check", "-C", "sub"),
    ("-C", "sub", "status"),
    ("-n",),
    ("--dry-run",),
    ("-B",),
    ("-w",),
    ("--all",),
    ("--explain",),
    ("--json",),
    ("-v",),
    ("--no-commit",),
    ("-ks",),
    ("-j0",),
    ("-j", "x"),
    ("-j", "+4"),
    ("--jobs=",),
    ("-j",),
    ("-l", "0"),
    ("-l", "nan"),
    ("-l", "-1"),
    ("--keep-going=yes",),
    ("--",),
    ("-",),
    ("--keep",),
    ("-f",),
    ("a", "-C"),
]


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the `-C` directories of the table, as the working directory."""
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def through_click(argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> BuildOptions:
    """The options click's command line gives the engine for `argv`."""
    seen: list[BuildOptions] = []

    def build(self: Engine, options: BuildOptions, *args: object, **kwargs: object) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(Engine, "build", build)
    assert main(list(argv)) == 0
    assert len(seen) == 1
    return seen[0]


def through_fast_parser(argv: tuple[str, ...]) -> BuildOptions:
    args = buildargs.parse(argv)
    assert args is not None, f"the fast path declined {argv}"
    buildargs.enter(args.directories)
    return buildargs.to_options(args, Path.cwd())


@pytest.mark.parametrize("argv", FAST, ids=" ".join)
def test_the_fast_parser_and_click_make_the_same_options(
    argv: tuple[str, ...], where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = through_fast_parser(argv)
    monkeypatch.chdir(where)
    assert fast == through_click(argv, monkeypatch)


def test_the_table_spells_every_option_the_fast_path_takes() -> None:
    spelled = {word.partition("=")[0] for argv in FAST for word in argv}
    spelled |= {word[:2] for argv in FAST for word in argv if word[:1] == "-" and word[1:2] != "-"}
    for option in (*BUILD_OPTIONS, FILE, DIRECTORY):
        if option.fast:
            assert set(option.flags) <= spelled, option.flags


@pytest.mark.parametrize("argv", DECLINED, ids=" ".join)
def test_the_fast_parser_leaves_to_click_what_it_cannot_answer_as_click_does(argv: tuple[str, ...]) -> None:
    assert buildargs.parse(argv) is None


def test_click_declares_exactly_the_declared_options() -> None:
    declared = {option.flags: option for option in (*BUILD_OPTIONS, FILE, DIRECTORY)}
    params = [p for p in repro.params if isinstance(p, click.Option) and p.name != "help"]
    assert {tuple(p.opts) for p in params} == set(declared)
    for p in params:
        option = declared[tuple(p.opts)]
        assert (p.help, p.metavar, p.is_flag) == (option.help, option.metavar, option.kind == buildargs.FLAG)
    listed = [tuple(p.opts) for p in params if p.opts[0] not in ("-f", "-C")]
    assert listed == [option.flags for option in BUILD_OPTIONS]  # the order --help shows


def test_options_that_cannot_go_together_are_refused_by_both_paths_alike(capsys: pytest.CaptureFixture[str]) -> None:
    assert buildargs.conflict({"dry_run": True, "question": True}) == "-n and -q cannot be used together"
    assert buildargs.conflict({"quiet": True, "verbose": True}) == "-s and -v cannot be used together"
    assert buildargs.conflict({"quiet": True, "question": True}) is None
    assert main(["-s", "-v"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "pivotbuild: -s and -v cannot be used together"


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (("-C", "a", "list", "-Cb", "--directory=c", "--directory", "d"), ["a", "b", "c", "d"]),
        (("status", "-C", "/abs"), ["/abs"]),
        (("-k", "a", "-C"), []),
        (("-Cx", "-ks"), ["x"]),
    ],
)
def test_directory_values_are_found_wherever_they_stand(argv: tuple[str, ...], found: list[str]) -> None:
    assert buildargs.directory_values(argv) == found


def test_entering_directories_names_the_one_that_is_missing(where: Path) -> None:
    with pytest.raises(OSError) as caught:
        buildargs.enter(["sub", "missing"])
    assert caught.value.filename == "missing"
    assert Path.cwd() == where / "sub"  # each relative to the one before
