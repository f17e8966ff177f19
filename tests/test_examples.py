"""The shipped examples, end to end: they validate, build, rebuild nothing, and
rebuild exactly what an edit affects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Project
from helpers import statuses

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def copy_example(name: str, tmp_path: Path) -> Project:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns(".pivot", "Pivotfile.lock", "build", "data"))
    (root / ".pivot").mkdir(exist_ok=True)
    return Project(root)


@pytest.mark.parametrize("name", ["data-pipeline", "c-project"])
def test_example_checks_lists_and_graphs(name: str, tmp_path: Path) -> None:
    p = copy_example(name, tmp_path)
    check = p.run("check")
    assert check.code == 0, check.err
    assert "ok:" in check.err
    listed = p.run("list", "--json")
    assert listed.code == 0
    assert len(json.loads(listed.out)) >= 3
    for fmt in ("text", "dot", "mermaid"):
        assert p.run("graph", "--format", fmt).code == 0


def test_data_pipeline_builds_then_rebuilds_only_what_an_edit_affects(tmp_path: Path) -> None:
    p = copy_example("data-pipeline", tmp_path)
    first = p.run("-j2", "--json")
    assert first.code == 0, first.err
    assert set(statuses(first.out).values()) == {"ran"}
    summary = (p.root / "summary.md").read_text()
    assert summary

    again = p.run("--json")
    assert set(statuses(again.out).values()) == {"skipped"}
    assert json.loads(again.out.splitlines()[-1])["files_read"] == 0  # a no-op reads no file contents

    # Choosing the best model by another metric touches only the report.
    params = p.root / "params.toml"
    params.write_text(params.read_text().replace('metric = "rmse"', 'metric = "mae"'))
    edited = statuses(p.run("--json").out)
    assert {s for s, status in edited.items() if status == "ran"} == {"report"}


def test_c_project_builds_and_recompiles_one_unit(tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.fail("the C example needs a C compiler on PATH as 'cc'")
    p = copy_example("c-project", tmp_path)
    first = p.run("--json")
    assert first.code == 0, first.out + first.err
    assert statuses(first.out)["test"] == "ran"
    assert p.run("-q").code == 0

    main_c = p.root / "src/main.c"
    main_c.write_text(main_c.read_text() + "\n/* a comment changes the source, not the program */\n")
    rebuilt = statuses(p.run("--json").out)
    assert rebuilt["compile@main"] == "ran"
    assert rebuilt["compile@stats"] == "skipped"
    assert rebuilt["compile@strutil"] == "skipped"
