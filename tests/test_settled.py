"""Which stages of a build are settled (build/settled.py): sealed, with every
stage upstream of them settled too, and never a `py:` stage."""

from __future__ import annotations

from pathlib import Path

from conftest import compile_text

from pivotbuild.build.settled import unsettled
from pivotbuild.graph import BuildGraph

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
