"""build/elsewhere.py: which outputs a --no-checkout build may leave on the
remote, and whether the remote holds every object of recorded outputs (the
end-to-end behaviour is in test_dask_no_checkout.py)."""

from __future__ import annotations

from pathlib import Path

from conftest import compile_text

from pivotbuild.build.elsewhere import left_on_remote
from pivotbuild.graph import BuildGraph
from pivotbuild.remote import open_remote
from pivotbuild.remote.transfer import holds, object_rel
from pivotbuild.state.hashing import ENTRY_FILE, ManifestEntry, hash_bytes, manifest_bytes
from pivotbuild.state.kinds import DIR, FILE
from pivotbuild.state.records import FileRecord

PIPELINE = """
stage tree:
    outs: tree/
    run: x
stage parts:
    matrix: n=1 2
    outs: parts/${n}.txt
    run: x
stage plain:
    outs: plain.txt
    run: x
stage uncached:
    outs: u.txt (cache=false)
    run: x
stage grows:
    outs: log.txt (incremental)
    run: x
stage one:
    deps: tree/one.txt plain.txt
    outs: one.txt
    run: x
stage all:
    deps: parts/*.txt u.txt
    outs: all.txt
    run: x
"""


def test_only_outputs_every_reader_names_exactly_and_cached_ones_are_left(tmp_path: Path) -> None:
    graph = BuildGraph(compile_text(PIPELINE, tmp_path).stages)
    left = {graph.label(sid) for sid in left_on_remote(graph, graph.order())}
    # tree is read inside, parts through a glob, u.txt is not cached, log.txt is built on
    assert left == {"plain", "one", "all"}


def test_the_remote_holds_outputs_only_with_every_object_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    remote = open_remote(tmp_path, "r", str(tmp_path / "remote"), {})
    one, two = b"one\n", b"two\n"
    manifest = manifest_bytes(
        [ManifestEntry("a.txt", ENTRY_FILE, hash_bytes(one)), ManifestEntry("b.txt", ENTRY_FILE, hash_bytes(two))]
    )
    tree = FileRecord("tree", DIR, hash_bytes(manifest))
    plain = FileRecord("plain.txt", FILE, hash_bytes(one))
    assert not holds(remote, [plain])
    remote.write(object_rel(hash_bytes(one)), one)
    assert holds(remote, [plain])
    remote.write(object_rel(tree.hash), manifest)
    assert not holds(remote, [plain, tree])  # b.txt's object is missing
    remote.write(object_rel(hash_bytes(two)), two)
    assert holds(remote, [plain, tree])
    remote.write(object_rel(tree.hash), b"not the manifest\n")  # (corrupt on the remote)
    assert not holds(remote, [tree])
