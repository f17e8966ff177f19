"""memtemp.py, run small: it writes, reports each write's cost and leaves
no memory behind (no timings are asserted)."""

from __future__ import annotations

import os
from pathlib import Path

import memtemp
import pytest


def test_it_reports_both_kinds_of_write_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    assert memtemp.main(["--mb", "2", "--rounds", "3"]) == 0
    assert sorted(os.listdir("/proc/self/fd")) == before  # every in-memory file closed
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 MB per write, ms per MB"
    assert [len(line.split("  ")[-1].split()) for line in lines[1:3]] == [3, 3]
    assert lines[4].split("  ")[-1] in (
        "no virtio balloon",
        "a virtio balloon that reports free pages to the host",
        "a virtio balloon, not reporting free pages",
    )


def test_the_balloon_is_read_from_its_feature_bits(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    for name, device, features in (("virtio0", "0x0005", "0110010100"), ("virtio1", "0x0002", "0000011111")):
        (devices / name).mkdir(parents=True)
        (devices / name / "device").write_text(device + "\n")
        (devices / name / "features").write_text(features + "\n")
    assert memtemp.free_page_reporting(str(devices)) is True
    (devices / "virtio0" / "features").write_text("0110000100\n")
    assert memtemp.free_page_reporting(str(devices)) is False
    (devices / "virtio0" / "device").write_text("0x0001\n")
    assert memtemp.free_page_reporting(str(devices)) is None
