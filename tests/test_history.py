"""The build history's durations as a build reads them (state/history.py):
from the end of the file, newest first, stopping once every stage asked
for is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pivotbuild.state import history


def line(**stages: float) -> bytes:
    entry = {"result": "ok", "stages": {name: {"status": "ran", "duration_s": s} for name, s in stages.items()}}
    return json.dumps(entry).encode() + b"\n"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path


def write(state: Path, *lines: bytes) -> None:
    (state / history.HISTORY).write_bytes(b"".join(lines))


def test_the_newest_run_of_each_stage_counts(state: Path) -> None:
    write(state, line(a=1.0, b=2.0), line(a=3.0), line(c=4.0))
    assert history.durations(state, {"a", "b", "c", "d"}) == ({"a": 3.0, "b": 2.0, "c": 4.0}, 0)


def test_it_parses_lines_until_every_stage_is_found_and_still_sees_one_cut_short(state: Path) -> None:
    write(state, b'{"result": "ok", "stag\n', line(a=1.0), line(a=2.0))
    assert history.durations(state, {"a"}) == ({"a": 2.0}, 1)  # (the torn line, looked at, not parsed)
    assert history.durations(state, {"a", "b"}) == ({"a": 2.0}, 1)  # (b is looked for to the start)
    write(state, b'{"result": [1}\n', line(a=2.0))
    assert history.durations(state, {"a"}) == ({"a": 2.0}, 0)  # (whole in shape: found only when parsed)
    assert history.durations(state, {"b"}) == ({}, 1)


def test_only_the_last_builds_count(state: Path) -> None:
    write(state, line(old=9.0), *(line(a=float(i)) for i in range(history.RECENT)))
    assert history.durations(state, {"a", "old"}) == ({"a": float(history.RECENT - 1)}, 0)


def test_lines_longer_than_what_is_read_at_a_time_and_a_last_line_cut_short(state: Path) -> None:
    many = {f"s{i}": float(i) for i in range(5000)}  # (a line of some 200 KB)
    write(state, line(**many), line(**many), line(a=1.0), b'{"result": "ok", "stag')
    found, skipped = history.durations(state, {"a", "s4999"}, limit=3)
    assert found == {"a": 1.0, "s4999": 4999.0}
    assert skipped == 1  # the line cut short, the newest
    assert history.durations(state, {"s1"}, limit=1) == ({}, 1)


def test_no_history_no_durations(state: Path) -> None:
    assert history.durations(state, {"a"}) == ({}, 0)


def test_lines_are_read_as_json_reads_them_without_importing_json() -> None:
    # The history is read by json's C scanner alone (a build does not import
    # json); good and damaged lines come out as json.loads says, also in a
    # process where json itself was never imported (3.11's scanner reports a
    # damaged line only through json.decoder).
    import subprocess
    import sys

    lines = ['{"a": 1, "b": [1.5, "x\\u00e9", null]}', '  {"a": 1}\n', '{"a": 1} x', '{"a": ', "", '{"a": tru}']
    lines += ['{"a": "x', "NaN", '{"a":1}{"b":2}', '{"a": 1,}', '\t{"k": {"k": "k"}}\r\n']
    script = (
        "import sys\n"
        "from pivotbuild.state import history\n"
        "assert 'json.decoder' not in sys.modules\n"
        "for line in sys.argv[1:]:\n"
        "    try: print(repr(history._loads(line)))\n"
        "    except ValueError: print('damaged')\n"
        "print('json' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *lines], capture_output=True, text=True, check=True).stdout
    want = []
    for text in lines:
        try:
            want.append(repr(json.loads(text)))
        except ValueError:
            want.append("damaged")
    assert out.splitlines()[:-1] == want
    assert out.splitlines()[-1] == "True"  # (json imported at last, to say what was damaged)
