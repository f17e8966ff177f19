"""Shell completion end to end: the real `pivotbuild` asked as a shell asks
(click's protocol: `_PIVOTBUILD_COMPLETE=SHELL_complete` with the command line
in COMP_WORDS / COMP_CWORD), and the script `pivotbuild completion bash` run
in a real bash.  A completion request never builds (the stages append to
ran.log), never takes the lock and writes no state (`.pivot/` is compared
before and after), and never prints anything but its candidates."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project, Result
from tracing import traced

PIPELINE = """
include sub

SIZES = small large

stage prepare:
    outs: data.txt
    run: echo d > $@; echo prepare >> ran.log

stage train:
    matrix: size=${SIZES} lr=0.1 0.2
    deps: data.txt
    outs: model-${size}-${lr}.txt
    run: echo m > $@; echo train >> ran.log
"""

SUB = """
stage train:
    outs: t.txt
    run: echo t > $@; echo sub >> ../ran.log

stage evaluate:
    deps: t.txt
    outs: e.txt
    run: cp $< $@; echo evaluate >> ../ran.log
"""

VARIANTS = ["train@large-0.1", "train@large-0.2", "train@small-0.1", "train@small-0.2"]
TARGETS = ["prepare", "sub:evaluate", "sub:train", "train", *VARIANTS]
COMMANDS_WITH_P = ["push", "pull"]


@pytest.fixture
def pipelines(project: Project) -> Project:
    project.pivotfile(PIPELINE)
    project.pivotfile(SUB, "sub/Pivotfile")
    return project


def ask(p: Project, *words: str, shell: str = "bash", cwd: Path | None = None) -> Result:
    """Ask `pivotbuild` for the completions of the last of `words` (the
    command line up to the cursor; the last word may be "")."""
    line = " ".join(shlex.quote(w) if w else "" for w in ("pivotbuild", *words))
    cword = words[-1] if shell == "fish" else str(len(words))  # fish sends the word itself
    env = {**os.environ, "_PIVOTBUILD_COMPLETE": f"{shell}_complete", "COMP_WORDS": line, "COMP_CWORD": cword}
    proc = subprocess.run(
        PIVOTBUILD, cwd=cwd or p.root, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def candidates(p: Project, *words: str, cwd: Path | None = None) -> list[tuple[str, str]]:
    """(type, value) of each bash candidate; the request must succeed silently."""
    r = ask(p, *words, cwd=cwd)
    assert (r.code, r.err) == (0, ""), r
    return [(kind, value) for kind, _, value in (line.partition(",") for line in r.out.splitlines() if line)]


def names(p: Project, *words: str, cwd: Path | None = None) -> list[str]:
    found = candidates(p, *words, cwd=cwd)
    assert all(kind == "plain" for kind, _ in found), found
    return [value for _, value in found]


def state(p: Project) -> dict[str, tuple[int, int]]:
    """Every file under the project's state directories: size and mtime."""
    found = {}
    for d in (p.root / ".pivot", p.root / "sub" / ".pivot"):
        for path in d.rglob("*") if d.exists() else ():
            st = path.stat()
            found[str(path.relative_to(p.root))] = (st.st_size, st.st_mtime_ns)
    return found


def ran(p: Project) -> list[str]:
    log = p.root / "ran.log"
    return log.read_text().split() if log.exists() else []


# -- what completes --------------------------------------------------------------------


def test_targets_complete_to_stages_variants_bases_and_included_pipelines(pipelines: Project) -> None:
    assert names(pipelines, "status", "") == TARGETS
    assert names(pipelines, "status", "train@s") == ["train@small-0.1", "train@small-0.2"]
    assert names(pipelines, "checkout", "sub:") == ["sub:evaluate", "sub:train"]
    for command in ("clean", "verify", "push", "pull", "fetch", "run", "list", "graph", "repro", "commit"):
        assert names(pipelines, command, "tr") == ["train", *VARIANTS], command
    # Bash splits `sub:tr` at the colon: the candidates are what follows it.
    assert names(pipelines, "status", "sub", ":", "tr") == ["train"]
    assert names(pipelines, "status", "sub", ":") == [":evaluate", ":train"]
    # A word that names no stage may be an output path: the shell's file completion.
    assert candidates(pipelines, "status", "mod") == [("file", "mod")]
    assert ran(pipelines) == []


def test_the_first_word_completes_subcommands_and_targets_later_words_only_targets(pipelines: Project) -> None:
    assert names(pipelines, "p") == [*COMMANDS_WITH_P, "prepare"]
    assert names(pipelines, "-C", ".", "p") == [*COMMANDS_WITH_P, "prepare"]
    assert names(pipelines, "co") == ["commit", "completion"]
    assert names(pipelines, "prepare", "p") == ["prepare"]  # `pivotbuild prepare push` builds push
    assert names(pipelines, "-j4", "p") == ["prepare"]
    assert names(pipelines, "repro", "p") == ["prepare"]
    assert names(pipelines, "remote", "") == ["add", "list", "remove"]
    assert names(pipelines, "completion", "") == ["bash", "zsh", "fish"]


def test_options_complete_and_dir_and_file_options_use_the_shells_path_completion(pipelines: Project) -> None:
    assert names(pipelines, "status", "--j") == ["--json"]
    assert "--keep-going" in names(pipelines, "--k")
    assert candidates(pipelines, "-C", "") == [("dir", "")]
    assert candidates(pipelines, "status", "--directory", "su") == [("dir", "su")]
    assert candidates(pipelines, "-f", "") == [("file", "")]
    assert candidates(pipelines, "checkout", "-f", "sub/P") == [("file", "sub/P")]


def test_directory_file_and_variables_given_earlier_on_the_line_are_honoured(pipelines: Project) -> None:
    sub_own = ["evaluate", "train"]  # sub's Pivotfile includes nothing
    assert names(pipelines, "-C", "sub", "e") == ["evaluate"]
    assert names(pipelines, "-C", "sub", "status", "") == sub_own
    assert names(pipelines, "status", "-C", "sub", "") == sub_own
    assert names(pipelines, "-f", "sub/Pivotfile", "e") == ["evaluate"]
    assert names(pipelines, "status", "-f", "sub", "e") == ["evaluate"]
    outside = pipelines.root.parent
    assert names(pipelines, "-C", "proj", "status", "train@l", cwd=outside) == ["train@large-0.1", "train@large-0.2"]
    assert names(pipelines, "SIZES=tiny", "train@") == ["train@tiny-0.1", "train@tiny-0.2"]


def test_zsh_and_fish_requests_are_answered_in_their_formats(pipelines: Project) -> None:
    r = ask(pipelines, "status", "sub:t", shell="zsh")
    assert (r.code, r.err, r.out.splitlines()) == (0, "", ["plain", "sub:train", "_"])
    r = ask(pipelines, "status", "-C", "", shell="zsh")
    assert r.out.splitlines() == ["dir", "", "_"]
    r = ask(pipelines, "status", "train@l", shell="fish")
    assert (r.code, r.err, r.out.splitlines()) == (0, "", ["plain,train@large-0.1", "plain,train@large-0.2"])


# -- what a completion request never does --------------------------------------------------


def test_completion_never_builds_nor_locks_nor_writes_state(pipelines: Project) -> None:
    requests = [("",), ("status", ""), ("run", "train@s"), ("-C", "sub", ""), ("clean", "p"), ("-f", "")]
    for words in requests:
        ask(pipelines, *words)
    for instruction in ("bash_source", "zsh_complete", "nonsense"):
        env = {**os.environ, "_PIVOTBUILD_COMPLETE": instruction, "COMP_WORDS": "pivotbuild", "COMP_CWORD": "1"}
        subprocess.run(PIVOTBUILD, cwd=pipelines.root, capture_output=True, env=env, timeout=60, check=False)
    assert ran(pipelines) == []
    assert state(pipelines) == {}  # no lock, no plan, no history, no crash log
    assert not (pipelines.root / "sub" / ".pivot").exists()


def test_completion_after_a_build_never_takes_the_fast_path_and_does_not_parse(
    pipelines: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pipelines.run().code == 0
    (pipelines.root / "ran.log").unlink()
    (pipelines.root / "model-small-0.1.txt").unlink()  # a plain build would restore it from the cache
    before = state(pipelines)
    # The fast path would answer these words (a plain build of a stage name),
    # and the empty instruction-less line too.
    for words in (("train",), ("",), ("train", "")):
        assert names(pipelines, *words)
    script = subprocess.run(
        PIVOTBUILD,
        cwd=pipelines.root,
        capture_output=True,
        text=True,
        env={**os.environ, "_PIVOTBUILD_COMPLETE": "bash_source"},
        timeout=60,
        check=False,
    )
    assert "_pivotbuild_completion()" in script.stdout
    assert ran(pipelines) == []
    assert not (pipelines.root / "model-small-0.1.txt").exists()
    assert state(pipelines) == before
    # With the plan fresh the names come from it: no Pivotfile is parsed.
    monkeypatch.setenv("_PIVOTBUILD_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "pivotbuild status sub:")
    monkeypatch.setenv("COMP_CWORD", "2")
    r = traced(pipelines)
    assert (r.code, r.out.split()) == (0, ["plain,sub:evaluate", "plain,sub:train"])
    assert not r.parsed


def test_a_stale_plan_is_read_around_not_rewritten(pipelines: Project) -> None:
    assert pipelines.run().code == 0
    plan = pipelines.root / ".pivot" / "plan"
    written = plan.read_bytes()
    pipelines.pivotfile(PIPELINE + "\nstage report:\n    deps: data.txt\n    run: echo report >> ran.log\n")
    assert names(pipelines, "status", "re") == ["report"]
    assert plan.read_bytes() == written


def test_a_broken_pivotfile_completes_no_target_and_says_nothing(pipelines: Project) -> None:
    pipelines.pivotfile("stage train:\n    matrix: size: [small]\n    run: echo\n")
    assert names(pipelines, "status", "") == []
    assert names(pipelines, "p") == COMMANDS_WITH_P  # subcommands do not depend on the Pivotfile
    assert names(pipelines, "-f", "missing", "status", "") == []
    assert names(pipelines, "-C", "missing", "status", "") == []
    assert state(pipelines) == {}  # no crash log either


# -- the script -----------------------------------------------------------------------------


def test_the_bash_script_completes_in_a_real_bash(pipelines: Project) -> None:
    bash = shutil.which("bash")
    assert bash is not None, "these tests need bash"
    program = shutil.which("pivotbuild") or PIVOTBUILD[0]
    path = f"{Path(program).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    def complete(words: str, cword: int) -> list[str]:
        script = (
            "source <(pivotbuild completion bash) && complete -p pivotbuild >/dev/null && "
            f"COMP_WORDS=({words}); COMP_CWORD={cword}; _pivotbuild_completion pivotbuild; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        proc = subprocess.run(
            [bash, "--norc", "--noprofile", "-c", script],
            cwd=pipelines.root,
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": path},
            timeout=60,
            check=False,
        )
        assert (proc.returncode, proc.stderr) == (0, ""), proc
        return [line for line in proc.stdout.splitlines() if line]

    assert complete("pivotbuild tr", 1) == ["train", *VARIANTS]
    assert complete("pivotbuild status sub : t", 4) == ["train"]  # as bash splits `sub:t`
    assert complete("pivotbuild st", 1) == ["status"]
    assert ran(pipelines) == []


@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ("bash", "complete -o nosort -F _pivotbuild_completion pivotbuild"),
        ("zsh", "compdef _pivotbuild_completion pivotbuild"),
        ("fish", "complete --no-files --command pivotbuild"),
    ],
)
def test_completion_prints_each_shells_script(project: Project, shell: str, expected: str) -> None:
    r = project.run("completion", shell)
    assert r.code == 0, r
    assert expected in r.out
    assert "_PIVOTBUILD_COMPLETE" in r.out


def test_completion_for_an_unknown_shell_is_a_usage_error(project: Project) -> None:
    r = project.run("completion", "tcsh")
    assert r.code == 2
    assert r.err.startswith("pivotbuild: Invalid value for 'SHELL': 'tcsh' is not one of 'bash', 'zsh', 'fish'.")
    r = project.run("completion")
    assert r.code == 2
    assert r.err.startswith("pivotbuild: Missing argument 'SHELL'")
