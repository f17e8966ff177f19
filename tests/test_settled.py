"""Which stages of a build are settled (build/settled.py): sealed, with every
stage upstream of them settled too, and never a `py:` stage."""

from __future__ import annotations

from pathlib import Path

from conftest import compile_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pivotbuild.build.settled import unsettled
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId

# a -> b -> d, c -> d; e alone; p a `py:` stage reading a, q after it.
TEXT = """
stage a:
    outs: a.txt
    run: touch a.txt

stage b:
    deps: a.txt
    outs: b.txt
    run: cp a.txt b.txt

stage c:
    outs: c.txt
    run: touch c.txt

stage d:
    deps: b.txt c.txt
    outs: d.txt
    run: cat b.txt c.txt > d.txt

stage e:
    outs: e.txt
    run: touch e.txt

stage p:
    deps: a.txt
    outs: p.txt
    py: steps:p

stage q:
    deps: p.txt
    outs: q.txt
    run: cp p.txt q.txt
"""


def split(tmp_path: Path, sealed: set[str]) -> tuple[list[str], list[str]]:
    graph = BuildGraph(compile_text(TEXT, tmp_path).stages)
    closure = graph.order()
    indices = frozenset(graph.index_of(s) for s in closure if graph.label(s) in sealed)
    moving, settled = unsettled(graph, closure, indices)
    return sorted(graph.label(s) for s in moving), sorted(graph.label(s) for s in settled)


def test_every_stage_sealed_but_the_py_one_and_what_follows_it_is_settled(tmp_path: Path) -> None:
    assert split(tmp_path, set("abcdepq")) == (["p", "q"], ["a", "b", "c", "d", "e"])


def test_a_stage_not_sealed_unsettles_everything_after_it_and_nothing_else(tmp_path: Path) -> None:
    assert split(tmp_path, set("acdepq")) == (["b", "d", "p", "q"], ["a", "c", "e"])
    assert split(tmp_path, set("bcdepq")) == (["a", "b", "d", "p", "q"], ["c", "e"])


def test_nothing_sealed_settles_nothing(tmp_path: Path) -> None:
    assert split(tmp_path, set()) == (["a", "b", "c", "d", "e", "p", "q"], [])


def _by_the_definition(
    graph: BuildGraph, closure: list[StageId], sealed: frozenset[int]
) -> tuple[list[StageId], list[StageId]]:
    """What `unsettled` must say, as its docstring says it, stage by stage in build order."""
    moving: set[StageId] = set()
    undecided, settled = [], []
    for sid in closure:
        if graph.index_of(sid) not in sealed or graph.runs_python(sid) or moving & set(graph.upstream_stages(sid)):
            moving.add(sid)
            undecided.append(sid)
        else:
            settled.append(sid)
    return undecided, settled


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_split_is_the_definition_s_on_any_graph_targets_and_seal(tmp_path: Path, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12))
    text = ""
    for i in range(n):
        reads = data.draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        deps = " ".join(f"s{j}.txt" for j in sorted(reads))
        run = "py: steps:f" if data.draw(st.booleans()) and data.draw(st.booleans()) else f"run: touch s{i}.txt"
        text += f"stage s{i}:\n" + (f"    deps: {deps}\n" if deps else "") + f"    outs: s{i}.txt\n    {run}\n\n"
    graph = BuildGraph(compile_text(text, tmp_path).stages)
    targets = data.draw(st.sets(st.sampled_from(graph.order()), min_size=1))
    closure = graph.upstream(targets)
    sealed = frozenset(data.draw(st.sets(st.sampled_from(range(n)))))
    assert unsettled(graph, closure, sealed) == _by_the_definition(graph, closure, sealed)
