"""dask_stages.py, run small: it starts its own cluster, builds the lattice
with the local and the Dask executor (checking every output each time), and
prints a row for each (no timings are asserted)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import dask_stages
import pytest


def test_it_builds_the_lattice_locally_and_on_its_own_cluster_and_prints_a_row_for_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--width", "3", "--depth", "2", "--runs", "1", "-j", "4", "--dir", str(tmp_path)]
    assert dask_stages.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("6 stages (3 x 2, md5sum), 2 Dask workers on loopback")
    assert [line.split()[:2] for line in lines[3:]] == [["local", "2"], ["dask", "4"]]
    # (main checked every output against its deps; they travelled through the remote)
    assert (tmp_path / "dask" / "out" / "1_2.txt").read_text().count("\n") == 3
    assert any((tmp_path / "dask-remote" / "objects").iterdir())
    # The script stopped its cluster: its scheduler no longer listens.
    said = re.search(
        r"Scheduler at:\s+tcp://127.0.0.1:(\d+)", (tmp_path / "dask-cluster/scheduler/log.txt").read_text()
    )
    assert said is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(said[1])), timeout=5).close()
