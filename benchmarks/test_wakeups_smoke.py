"""wakeups.py's reading of a trace: the loop's wakeups, those queued on a core
other than the waker's, and the idle that follows a stage's exit, from
`perf script`'s lines as perf 6 prints them (no perf needed here)."""

from __future__ import annotations

import pytest
import wakeups


def _line(comm: str, pid: int, cpu: int, t: float, *, event: str, rest: str) -> str:
    return f"{comm:>8} {pid:5d} [{cpu:03d}] {t:12.6f}: sched:{event}: {rest}"


def _switch(cpu: int, t: float, prev: tuple[str, int, str], nxt: tuple[str, int]) -> str:
    rest = f"prev_comm={prev[0]} prev_pid={prev[1]} prev_prio=120 prev_state={prev[2]} ==> "
    return _line(
        prev[0], prev[1], cpu, t, event="sched_switch", rest=f"{rest}next_comm={nxt[0]} next_pid={nxt[1]} next_prio=120"
    )


def _fork(t: float, child: int) -> str:
    return _line(
        "python", 100, 0, t, event="sched_process_fork", rest=f"comm=python pid=100 child_comm=python child_pid={child}"
    )


def _woken(by: int, cpu: int, t: float, target: int) -> str:
    return _line(
        "md5sum", by, cpu, t, event="sched_wakeup", rest=f"comm=python pid=100 prio=120 target_cpu={target:03d}"
    )


def _exit(pid: int, cpu: int, t: float) -> str:
    return _line(
        "md5sum", pid, cpu, t, event="sched_process_exit", rest=f"comm=md5sum pid={pid} prio=120 group_dead=true"
    )


# The loop (pid 100) starts stages 101 and 102.  101 exits on core 0 and
# wakes the loop, queued on core 1, where 102 runs: core 0 idles 0.5 ms
# until 102 moves there, and the loop waits 0.5 ms.  102 then exits on core
# 0 and wakes the loop on its own core.
TRACE = [
    _fork(1.0, 101),
    _fork(1.0001, 102),
    _switch(0, 1.0002, ("python", 100, "S"), ("md5sum", 101)),
    _woken(101, 0, 1.001, 1),
    _exit(101, 0, 1.00101),
    _switch(0, 1.00102, ("md5sum", 101, "Z"), ("swapper/0", 0)),
    _switch(1, 1.0015, ("md5sum", 102, "R"), ("python", 100)),
    _switch(0, 1.00152, ("swapper/0", 0, "R"), ("md5sum", 102)),
    _woken(102, 0, 1.002, 0),
    _exit(102, 0, 1.002005),
    _switch(0, 1.00201, ("md5sum", 102, "Z"), ("python", 100)),
]


def test_a_wakeup_queued_on_the_other_core_and_the_idle_after_an_exit_are_counted() -> None:
    found = wakeups.analyse(TRACE)
    assert found.stages == 2
    assert found.wakeups == 2
    assert found.elsewhere == 1  # (the first: queued on core 1, woken from core 0)
    assert found.elsewhere_ms == pytest.approx(0.5)
    assert found.latency_us == pytest.approx((500 + 10) / 2)
    assert found.after_exit_ms == pytest.approx(0.5)  # (core 0, from 101's exit to the next stage)
    assert found.idle_cores == pytest.approx(0.0005 / 0.002005)


def test_a_trace_without_the_build_says_so() -> None:
    with pytest.raises(SystemExit, match="no fork in the trace"):
        wakeups.analyse(["nothing here"])
