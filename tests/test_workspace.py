"""`verify`, `checkout` and `clean`, through the real command."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from conftest import Project, Result
from helpers import cache_digests

PIPELINE = """
stage a:
    outs: a.txt
    run: echo a > $@ && echo ran >> runs.log
stage b:
    deps: a.txt
    outs: out/
    run: mkdir -p $@ && cp $< $@/copy.txt && echo ran >> runs.log
"""


def built(project: Project) -> Project:
    project.pivotfile(PIPELINE)
    assert project.run().code == 0
    return project


def runs(project: Project) -> int:
    return len((project.root / "runs.log").read_text().splitlines())


def test_verify_passes_on_a_fresh_build_and_lists_each_difference(project: Project) -> None:
    built(project)
    ok = project.run("verify")
    assert ok.code == 0, ok.err
    (project.root / "a.txt").write_text("tampered\n")
    (project.root / "out/copy.txt").unlink()
    bad = project.run("verify")
    assert bad.code == 1
    assert "modified: a.txt (stage a)" in bad.out
    assert "modified: out (stage b)" in bad.out
    assert "2 output(s) differ" in bad.err


def test_verify_reports_missing_and_unrecorded_outputs(project: Project) -> None:
    project.pivotfile(PIPELINE)
    r = project.run("verify")
    assert r.code == 1
    assert "not recorded: a.txt" in r.out
    assert project.run().code == 0
    (project.root / "a.txt").unlink()
    assert "missing: a.txt" in project.run("verify").out


def test_clean_then_checkout_restores_everything_without_running(project: Project) -> None:
    built(project)
    cleaned = project.run("clean")
    assert cleaned.code == 0
    assert not (project.root / "a.txt").exists()
    assert not (project.root / "out").exists()
    restored = project.run("checkout")
    assert restored.code == 0, restored.err
    assert (project.root / "out/copy.txt").read_text() == "a\n"
    assert project.run("verify").code == 0
    assert project.run("-q").code == 0
    assert runs(project) == 2  # nothing ran again


def test_checkout_refuses_to_overwrite_a_modified_output_without_force(project: Project) -> None:
    built(project)
    (project.root / "a.txt").write_text("my edit\n")
    refused = project.run("checkout")
    assert refused.code == 1
    assert "a.txt was modified in the workspace" in refused.err
    assert (project.root / "a.txt").read_text() == "my edit\n"
    forced = project.run("checkout", "--force")
    assert forced.code == 0
    assert (project.root / "a.txt").read_text() == "a\n"


def test_clean_with_a_target_removes_only_its_outputs(project: Project) -> None:
    built(project)
    r = project.run("clean", "b")
    assert r.code == 0
    assert "removed out" in r.out
    assert (project.root / "a.txt").exists()
    assert not (project.root / "out").exists()


def test_no_commit_records_pending_results_that_commit_promotes(project: Project) -> None:
    project.pivotfile(PIPELINE)
    r = project.run("--no-commit")
    assert r.code == 0, r.err
    assert not (project.root / "Pivotfile.lock").exists()  # pending, not in the lockfile
    assert cache_digests(project.root / ".pivot/cache") == set()  # and not cached
    assert project.run("-q").code == 0  # the pending results still count
    committed = project.run("commit")
    assert committed.code == 0
    assert "committed a" in committed.out and "committed b" in committed.out
    assert (project.root / "Pivotfile.lock").exists()
    assert project.run("verify").code == 0
    (project.root / "a.txt").unlink()
    assert project.run("checkout").code == 0  # the outputs went into the cache on commit
    assert runs(project) == 2
    assert "nothing pending" in project.run("commit").err


def test_commit_refuses_outputs_changed_since_the_run(project: Project) -> None:
    project.pivotfile(PIPELINE)
    assert project.run("--no-commit").code == 0
    (project.root / "a.txt").write_text("edited after the run\n")
    r = project.run("commit")
    assert r.code == 1
    assert "a: its outputs changed since it ran" in r.err
    assert "committed b" in r.out


def hints(err: str) -> list[str]:
    """The commands a message suggests, as quoted in it."""
    return re.findall(r"'(pivotbuild[^']*)'", err)


def run_hint(project: Project, hint: str, cwd: Path | None = None) -> Result:
    words = shlex.split(hint)
    assert words[0] == "pivotbuild"
    return project.run(*words[1:], cwd=cwd)


def test_no_commit_results_are_pending_for_verify_and_status_until_commit(project: Project) -> None:
    from_input = PIPELINE.replace("echo a >", "cat in.txt >").replace("outs: a.txt", "deps: in.txt\n    outs: a.txt")
    project.pivotfile(from_input)
    project.write("in.txt", "one\n")
    assert project.run().code == 0
    project.write("in.txt", "two\n")
    assert project.run("--no-commit").code == 0
    verified = project.run("verify")
    assert verified.code == 1  # the lockfile still records "one"
    assert "pending commit: a.txt (stage a)" in verified.out
    assert "pending commit: out (stage b)" in verified.out
    assert hints(verified.err) == ["pivotbuild commit"]
    status = project.run("status")
    assert status.out.split() == ["a", "pending", "commit", "b", "pending", "commit"]
    assert "2 stage(s) pending commit: 'pivotbuild commit' records them" in status.err
    as_json = json.loads(project.run("status", "--json").out)
    assert as_json[0] == {"stage": "a", "up_to_date": True, "reason": "pending commit"}
    # The outputs on disk are right: neither -q nor the build runs them again,
    # and checkout does not put the lockfile's old version back.
    assert project.run("-q").code == 0
    assert project.run().code == 0
    assert project.run("checkout").code == 0
    assert (project.root / "a.txt").read_text() == "two\n"
    assert runs(project) == 4
    assert run_hint(project, hints(verified.err)[0]).code == 0
    assert project.run("verify").code == 0
    assert project.run("status").out.split() == ["a", "up", "to", "date", "b", "up", "to", "date"]


def test_verify_offers_checkout_only_for_what_the_cache_can_restore(project: Project) -> None:
    project.pivotfile(PIPELINE)
    assert project.run("--no-commit").code == 0  # pending: nothing is in the cache yet
    (project.root / "a.txt").write_text("edited\n")
    bad = project.run("verify")
    assert bad.code == 1
    assert hints(bad.err) == ["pivotbuild commit", "pivotbuild"]  # b is pending, a must be rebuilt
    assert run_hint(project, "pivotbuild").code == 0
    assert run_hint(project, "pivotbuild commit").code == 0
    assert project.run("verify").code == 0


DEFAULTED = """
default b
stage a:
    outs: a.txt
    run: echo a > $@
stage b:
    deps: a.txt
    outs: b.txt
    run: cp $< $@
stage extra:
    outs: extra.txt
    run: echo extra > $@
"""


def test_without_targets_every_command_covers_what_the_build_covers(project: Project) -> None:
    project.pivotfile(DEFAULTED)
    assert project.run().code == 0  # builds b and what it needs, not extra
    verified = project.run("verify")  # the CI recipe: `pivotbuild && pivotbuild verify`
    assert verified.code == 0, verified.out + verified.err
    assert project.run("status").out.split() == ["a", "up", "to", "date", "b", "up", "to", "date"]
    assert project.run("extra").code == 0
    cleaned = project.run("clean")
    assert sorted(cleaned.out.split()) == ["a.txt", "b.txt", "removed", "removed"]
    assert (project.root / "extra.txt").exists()
    assert project.run("checkout").out.split() == ["restored", "a.txt", "restored", "b.txt"]
    assert project.run("verify", "extra").code == 0  # a named stage is still checked


def test_every_hint_names_a_command_that_fixes_what_it_reports(project: Project) -> None:
    project.pivotfile(DEFAULTED, "sub/Pivotfile")
    top = project.root.parent
    assert project.run("-C", "proj/sub", "a", cwd=top).code == 0
    # never built (b); then missing; then modified: each hint, run where the user is, fixes it
    for damage in (None, (project.root / "sub/b.txt").unlink, lambda: project.write("sub/a.txt", "x")):
        if damage is not None:
            damage()
        bad = project.run("-C", "proj/sub", "verify", cwd=top)
        assert bad.code == 1
        found = hints(bad.err)
        assert found and all(h.startswith("pivotbuild -C proj/sub") for h in found), bad.err
        for i, hint in enumerate(found):
            if i and damage is not None:
                damage()
            fixed = run_hint(project, hint, cwd=top)
            assert fixed.code == 0, (hint, fixed.err)
            assert project.run("-C", "proj/sub", "verify", cwd=top).code == 0, hint
    # checkout's refusal of a modified output
    project.write("sub/a.txt", "mine\n")
    refused = project.run("-C", "proj/sub", "checkout", "a", cwd=top)
    assert refused.code == 1
    assert hints(refused.err) == ["pivotbuild -C proj/sub checkout --force a"]
    assert run_hint(project, hints(refused.err)[0], cwd=top).code == 0
    assert (project.root / "sub/a.txt").read_text() == "a\n"
    # status of something stale
    project.write("sub/a.txt", "stale\n")
    status = project.run("-C", "proj/sub", "status", cwd=top)
    assert hints(status.err) == ["pivotbuild -C proj/sub"]
    assert run_hint(project, hints(status.err)[0], cwd=top).code == 0
    assert "everything is up to date" in project.run("-C", "proj/sub", "status", cwd=top).err


def test_a_refused_commit_names_the_build_that_records_the_stage(project: Project) -> None:
    project.pivotfile(PIPELINE)
    assert project.run("--no-commit").code == 0
    (project.root / "a.txt").write_text("edited after the run\n")
    refused = project.run("commit")
    assert refused.code == 1
    assert hints(refused.err) == ["pivotbuild a"]
    assert run_hint(project, "pivotbuild a").code == 0
    assert project.run("verify").code == 0


# -- checkout of uncached outputs --------------------------------------------------------------------

UNCACHED = """
stage a:
    outs: a.txt scratch.txt (cache=false)
    run: echo a > a.txt && echo scratch > scratch.txt
"""


def test_checkout_skips_missing_uncached_outputs(project: Project) -> None:
    project.pivotfile(UNCACHED)
    assert project.run().code == 0
    (project.root / "a.txt").unlink()
    (project.root / "scratch.txt").unlink()
    r = project.run("checkout")
    assert r.code == 0, r.err
    assert (project.root / "a.txt").read_text() == "a\n"
    assert "not in the cache" not in r.err


# -- commit after the outs changed -----------------------------------------------------------------


def test_commit_refuses_a_stage_whose_outs_changed_since_the_no_commit_run(project: Project) -> None:
    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo a > a.txt && echo b > b.txt\n")
    assert project.run("--no-commit").code == 0
    project.pivotfile("stage a:\n    outs: a.txt b.txt\n    run: echo a > a.txt && echo b > b.txt\n")
    r = project.run("commit")
    assert r.code == 1
    assert "internal error" not in r.err
    assert "a: its outs changed since it ran" in r.err
    assert "rebuild" in r.err
    assert not (project.root / "Pivotfile.lock").exists()
    assert project.run().code == 0
    assert project.run("verify").code == 0


def test_checkout_replaces_a_modified_output_whose_content_is_in_the_cache(project: Project) -> None:
    # As after `git checkout` of another branch: the workspace holds a newer
    # build's outputs (cached by that build), the lockfile an older one's.
    built(project)
    old_pivotfile, old_lock = (project.root / "Pivotfile").read_text(), (project.root / "Pivotfile.lock").read_bytes()
    project.pivotfile(PIPELINE.replace("echo a >", "echo changed >"))
    assert project.run().code == 0
    assert (project.root / "out/copy.txt").read_text() == "changed\n"
    (project.root / "Pivotfile").write_text(old_pivotfile)
    (project.root / "Pivotfile.lock").write_bytes(old_lock)
    r = project.run("checkout")
    assert r.code == 0, r.err
    assert sorted(r.out.split()) == ["a.txt", "out", "restored", "restored"]
    assert (project.root / "a.txt").read_text() == "a\n"
    assert (project.root / "out/copy.txt").read_text() == "a\n"
    assert project.run("-q").code == 0
