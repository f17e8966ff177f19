"""`check`, `list` and `graph`: look at a project without running anything."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pivotbuild.build.selection import selected
from pivotbuild.cli.common import all_option, load, project_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage
from pivotbuild.pivotfile.units import format_size
from pivotbuild.report.graph import FORMATS

_CTX = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=_CTX)
@all_option
@project_options
@click.pass_context
def check(ctx: click.Context, all_pipelines: bool) -> int:
    """Parse and validate the Pivotfiles and the graph; run nothing.

    Prints every error found and exits 2 if there is any (a `py:` stage
    whose module or function cannot be found is one).  A dep that no stage
    writes and that does not exist yet is a warning here (an error when building).
    """
    from pivotbuild.build.checks import check_runnable

    project, graph = load(ctx, all_pipelines=all_pipelines)
    selected(project, graph, ())  # validates the `default` targets
    for warning in graph.missing_inputs(lambda p: os.path.lexists(project.root / p), severity="warning"):
        click.echo(warning.render(), err=True)
    check_runnable(project.root, graph, graph.order())
    n, m = len(graph.stages), len(project.pipelines)
    click.echo(f"pivotbuild: ok: {n} stage{'s' * (n != 1)} in {m} pipeline{'s' * (m != 1)}", err=True)
    return 0


@click.command("list", context_settings=_CTX)
@click.argument("targets", nargs=-1, shell_complete=complete_targets)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of stages.")
@all_option
@project_options
@click.pass_context
def list_(ctx: click.Context, targets: tuple[str, ...], as_json: bool, all_pipelines: bool) -> int:
    """The stages, in build order, with their description, deps and outs."""
    project, graph = load(ctx, all_pipelines=all_pipelines)
    ids = graph.order(graph.select(targets, project.cwd_dir)) if targets else graph.order()
    stages = [graph.stages[s] for s in ids]
    if as_json:
        click.echo(json.dumps([describe(s, graph) for s in stages], indent=2))
        return 0
    for stage in stages:
        click.echo(f"{graph.label(stage.id)}" + (f"  {stage.desc}" if stage.desc else ""))
        if stage.deps:
            click.echo(f"    deps: {' '.join(d.path for d in stage.deps)}")
        if stage.outs:
            click.echo(f"    outs: {' '.join(o.path + ('/' if o.is_dir else '') for o in stage.outs)}")
    return 0


@click.command(context_settings=_CTX)
@click.argument("targets", nargs=-1, shell_complete=complete_targets)
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="text", show_default=True)
@all_option
@project_options
@click.pass_context
def graph(ctx: click.Context, targets: tuple[str, ...], fmt: str, all_pipelines: bool) -> int:
    """The stage graph (of TARGETS and what they need, or of every stage).

    `text` lists each stage with the stages it reads from; `dot` is for
    Graphviz; `mermaid` pastes into Markdown.
    """
    project, g = load(ctx, all_pipelines=all_pipelines)
    ids = g.upstream(g.select(targets, project.cwd_dir)) if targets else g.order()
    click.echo(FORMATS[fmt](g, ids))
    return 0


def describe(stage: Stage, graph: BuildGraph) -> dict[str, Any]:
    """A stage as plain JSON data (the `list --json` schema)."""
    return {
        "name": graph.label(stage.id),
        "pipeline": stage.id.pipeline,
        "stage": stage.id.name,
        "base": stage.base,
        "matrix": dict(stage.matrix),
        "desc": stage.desc,
        "deps": [{"path": d.path, "glob": d.is_glob} for d in stage.deps],
        "outs": [
            {"path": o.path, "dir": o.is_dir, "cache": o.cache, "persist": o.persist, "incremental": o.incremental}
            for o in stage.outs
        ],
        "params": {f"{p.file}:{p.key}": json.loads(p.value_json) for p in stage.params},
        "command": stage.render_command() if stage.command is not None else None,
        "py": stage.py,
        "shell": list(stage.shell),
        "dir": stage.workdir,
        "env": dict(stage.env),
        "mutex": list(stage.mutex),
        "jobs": stage.jobs,
        "mem": format_size(stage.mem) if stage.mem else None,
        "timeout_s": stage.timeout,
        "retry": stage.retry,
        "always": stage.always,
        "upstream": [graph.label(u) for u in graph.upstream_stages(stage.id)],
    }
