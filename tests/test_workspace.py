"""`verify`, `checkout` and `clean`, through the real command."""

from __future__ import annotations

from conftest import Project

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
    assert not (project.root / ".pivot/cache/objects").exists()  # and not cached
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
