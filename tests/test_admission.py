"""admission: the token pool, and admission by jobs, mutex groups, memory and load."""

from __future__ import annotations

from pathlib import Path

from conftest import compile_text

from pivotbuild.build.admission import Admission, TokenPool
from pivotbuild.errors import Location
from pivotbuild.model import Stage, StageId

GiB = 1024**3


def stage(name: str, *, jobs: int = 1, mutex: tuple[str, ...] = (), mem: int = 0) -> Stage:
    return Stage(
        id=StageId("", name),
        base=name,
        loc=Location("Pivotfile", 1, 1),
        command=("true",),
        jobs=jobs,
        mutex=mutex,
        mem=mem,
    )


class Resources:
    """Injected memory and load readings."""

    def __init__(self, memory: int = 64 * GiB, load: float = 0.0) -> None:
        self.memory = memory
        self.load = load
        self.memory_calls = 0
        self.load_calls = 0

    def available_memory(self) -> int:
        self.memory_calls += 1
        return self.memory

    def load_average(self) -> float:
        self.load_calls += 1
        return self.load


def admission(capacity: int, res: Resources | None = None, load_limit: float | None = None) -> Admission:
    res = res or Resources()
    return Admission(
        TokenPool(capacity),
        load_limit=load_limit,
        available_memory=res.available_memory,
        load_average=res.load_average,
    )


def free(adm: Admission) -> int:
    pool = adm.jobserver
    assert isinstance(pool, TokenPool)
    return pool.free


# -- TokenPool -------------------------------------------------------------------------


def test_token_pool_accounting() -> None:
    pool = TokenPool(4)
    assert (pool.capacity, pool.free) == (4, 4)
    assert pool.try_acquire(3)
    assert pool.free == 1
    assert not pool.try_acquire(2)
    assert pool.free == 1  # a refusal takes nothing
    assert pool.try_acquire(1)
    assert pool.free == 0
    assert not pool.try_acquire(1)
    pool.release(3)
    assert pool.free == 3
    pool.release(1)
    assert pool.free == 4


def test_admission_is_saturated_exactly_while_every_token_is_taken() -> None:
    adm = admission(2)
    assert not adm.saturated
    assert adm.try_start(stage("a"))
    assert not adm.saturated
    assert adm.try_start(stage("b"))
    assert adm.saturated  # the scheduler stops trying the other ready stages
    adm.finished(stage("a"))
    assert not adm.saturated and adm.jobserver.available() == 1


def test_token_pool_never_exceeds_capacity() -> None:
    pool = TokenPool(2)
    pool.release(5)
    assert pool.free == 2
    assert not pool.try_acquire(3)
    assert pool.try_acquire(2)


# -- jobs ------------------------------------------------------------------------------


def test_jobs_limit_concurrency() -> None:
    adm = admission(8)
    four = [stage(f"t{i}", jobs=4) for i in range(3)]
    assert adm.try_start(four[0])
    assert adm.try_start(four[1])
    assert not adm.try_start(four[2])  # -j8 runs at most two `jobs: 4` stages
    assert free(adm) == 0
    adm.finished(four[0])
    assert adm.try_start(four[2])


def test_one_token_per_stage_by_default() -> None:
    adm = admission(3)
    stages = [stage(f"s{i}") for i in range(4)]
    assert [adm.try_start(s) for s in stages] == [True, True, True, False]
    assert set(adm.running) == {s.id for s in stages[:3]}


def test_jobs_are_capped_by_capacity() -> None:
    adm = admission(4)
    big = stage("big", jobs=16)
    assert adm.tokens(big) == 4
    assert adm.try_start(big)  # would never start if it asked for 16 of 4
    assert not adm.try_start(stage("small"))
    adm.finished(big)
    assert free(adm) == 4


def test_capped_stage_waits_for_a_full_pool() -> None:
    adm = admission(4)
    small = stage("small")
    big = stage("big", jobs=16)
    assert adm.try_start(small)
    assert not adm.try_start(big)
    adm.finished(small)
    assert adm.try_start(big)


def test_finished_releases_exactly_once() -> None:
    adm = admission(2)
    s = stage("s", jobs=2)
    assert adm.try_start(s)
    adm.finished(s)
    adm.finished(s)  # a second report changes nothing
    assert free(adm) == 2
    assert adm.running == {}


def test_unknown_stage_finishing_changes_nothing() -> None:
    adm = admission(2)
    assert adm.try_start(stage("a"))
    adm.finished(stage("never-started"))
    assert free(adm) == 1


# -- mutex -----------------------------------------------------------------------------


def test_mutex_groups_exclude_each_other() -> None:
    adm = admission(8)
    gpu1 = stage("gpu1", mutex=("gpu",))
    gpu2 = stage("gpu2", mutex=("gpu",))
    cpu = stage("cpu", mutex=("cpu",))
    plain = stage("plain")
    assert adm.try_start(gpu1)
    assert not adm.try_start(gpu2)
    assert adm.try_start(cpu)
    assert adm.try_start(plain)
    adm.finished(gpu1)
    assert adm.try_start(gpu2)


def test_stage_in_several_groups() -> None:
    adm = admission(8)
    both = stage("both", mutex=("gpu", "licence"))
    lic = stage("lic", mutex=("licence",))
    gpu = stage("gpu", mutex=("gpu",))
    other = stage("other", mutex=("net",))
    assert adm.try_start(both)
    assert not adm.try_start(lic)
    assert not adm.try_start(gpu)
    assert adm.try_start(other)
    adm.finished(both)
    assert adm.try_start(lic)
    assert adm.try_start(gpu)
    assert not adm.try_start(stage("both2", mutex=("licence", "gpu")))


def test_refused_start_reserves_nothing() -> None:
    adm = admission(4)
    assert adm.try_start(stage("gpu1", mutex=("gpu",)))
    before = free(adm)
    running = dict(adm.running)
    assert not adm.try_start(stage("gpu2", mutex=("gpu",), jobs=2))
    assert free(adm) == before
    assert adm.running == running


def test_star_does_not_start_while_anything_runs() -> None:
    adm = admission(8)
    plain = stage("plain")
    alone = stage("alone", mutex=("*",))
    assert adm.try_start(plain)
    assert not adm.try_start(alone)
    adm.finished(plain)
    assert adm.try_start(alone)


def test_star_lets_nothing_else_start() -> None:
    adm = admission(8)
    alone = stage("alone", mutex=("*",))
    assert adm.try_start(alone)
    assert free(adm) == 7  # it holds one token, yet runs alone
    assert not adm.try_start(stage("plain"))
    assert not adm.try_start(stage("gpu", mutex=("gpu",)))
    assert not adm.try_start(stage("alone2", mutex=("*",)))
    adm.finished(alone)
    assert adm.try_start(stage("plain"))


def test_star_with_other_groups() -> None:
    adm = admission(8)
    alone = stage("alone", mutex=("gpu", "*"))
    assert adm.try_start(alone)
    assert not adm.try_start(stage("plain"))
    adm.finished(alone)
    assert adm.try_start(stage("gpu", mutex=("gpu",)))
    assert not adm.try_start(alone)


# -- memory ----------------------------------------------------------------------------


def test_memory_reservation() -> None:
    res = Resources(memory=10 * GiB)
    adm = admission(8, res)
    a = stage("a", mem=4 * GiB)
    b = stage("b", mem=4 * GiB)
    c = stage("c", mem=4 * GiB)
    assert adm.try_start(a)
    assert adm.try_start(b)  # 10 - 4 >= 4
    assert not adm.try_start(c)  # 10 - 8 < 4
    assert adm.try_start(stage("no-mem"))  # a stage that reserves nothing is not held back
    adm.finished(a)
    assert adm.try_start(c)


def test_memory_readings_are_rechecked() -> None:
    res = Resources(memory=1 * GiB)
    adm = admission(8, res)
    assert adm.try_start(stage("running"))
    big = stage("big", mem=2 * GiB)
    assert not adm.try_start(big)
    res.memory = 3 * GiB
    assert adm.try_start(big)
    assert res.memory_calls >= 2


def test_memory_never_holds_back_an_idle_build() -> None:
    res = Resources(memory=0)
    adm = admission(2, res)
    huge = stage("huge", mem=1024 * GiB)
    assert adm.try_start(huge)
    assert not adm.try_start(stage("other", mem=1))


def test_mem_limit_caps_what_the_running_stages_reserve_in_all() -> None:
    res = Resources(memory=64 * GiB)
    adm = Admission(TokenPool(8), mem_limit=6 * GiB, available_memory=res.available_memory)
    a, b = stage("a", mem=4 * GiB), stage("b", mem=2 * GiB)
    assert adm.try_start(a)
    assert not adm.try_start(stage("c", mem=3 * GiB))  # 4 + 3 > 6, though the machine has 60 free
    assert adm.try_start(b)  # 4 + 2 fits exactly
    assert adm.try_start(stage("no-mem"))  # a stage that reserves nothing is not held back
    adm.finished(a)
    assert adm.try_start(stage("c", mem=3 * GiB))


def test_a_stage_reserving_more_than_mem_limit_is_unfit() -> None:
    adm = Admission(TokenPool(2), mem_limit=1 * GiB, total_memory=lambda: 16 * GiB)
    assert adm.unfit(stage("big", mem=2 * GiB)) == "mem: 2G exceeds --mem-limit 1G; raise the limit or reserve less"
    assert adm.unfit(stage("fits", mem=1 * GiB)) == ""


def test_a_stage_reserving_more_than_the_machine_has_is_unfit() -> None:
    adm = Admission(TokenPool(2), total_memory=lambda: 16 * GiB)
    assert adm.unfit(stage("huge", mem=64 * GiB)) == (
        "mem: 64G exceeds this machine's total memory of 16G; reserve at most that"
    )
    assert adm.unfit(stage("fits", mem=16 * GiB)) == ""
    assert adm.unfit(stage("none")) == ""


# -- load ------------------------------------------------------------------------------


def test_load_limit() -> None:
    res = Resources(load=3.0)
    adm = admission(8, res, load_limit=4.0)
    assert adm.try_start(stage("a"))
    assert adm.try_start(stage("b"))
    res.load = 4.0
    assert not adm.try_start(stage("c"))
    res.load = 3.9
    assert adm.try_start(stage("c"))


def test_no_load_limit_ignores_load() -> None:
    res = Resources(load=1000.0)
    adm = admission(8, res)
    assert adm.try_start(stage("a"))
    assert adm.try_start(stage("b"))
    assert res.load_calls == 0


def test_load_never_holds_back_an_idle_build() -> None:
    res = Resources(load=1000.0)
    adm = admission(8, res, load_limit=1.0)
    a = stage("a")
    assert adm.try_start(a)
    assert not adm.try_start(stage("b"))
    adm.finished(a)
    assert adm.try_start(stage("b"))


def test_idle_build_always_admits_whatever_the_stage_asks() -> None:
    res = Resources(memory=0, load=1000.0)
    adm = admission(2, res, load_limit=0.5)
    greedy = stage("greedy", jobs=64, mutex=("*", "gpu"), mem=1024 * GiB)
    assert adm.try_start(greedy)
    adm.finished(greedy)
    assert adm.running == {}
    assert free(adm) == 2


def test_build_under_pressure_runs_every_stage() -> None:
    # Memory and load say "no" whenever anything runs: stages go one by one,
    # but they all go.
    res = Resources(memory=0, load=99.0)
    adm = admission(4, res, load_limit=1.0)
    ready = [
        stage("a", mem=GiB),
        stage("b", jobs=8),
        stage("c", mutex=("*",)),
        stage("d", mutex=("gpu",), mem=GiB),
        stage("e"),
    ]
    done: list[str] = []
    for _ in range(100):
        if not ready:
            break
        started = [s for s in ready if adm.try_start(s)]
        assert started, "deadlock: nothing running and nothing admitted"
        for s in started:
            ready.remove(s)
            adm.finished(s)
            done.append(s.name)
    assert sorted(done) == ["a", "b", "c", "d", "e"]


def test_waits_on_resources() -> None:
    assert not admission(2).waits_on_resources
    assert admission(2, load_limit=2.0).waits_on_resources
    adm = admission(2)
    assert adm.try_start(stage("m", mem=GiB))
    assert adm.waits_on_resources


# -- compiled stages -------------------------------------------------------------------


def test_admission_of_compiled_stages(tmp_path: Path) -> None:
    p = compile_text(
        """
        stage train:
            mutex: gpu
            jobs: 2
            mem: 4G
            run: ./train
        stage eval:
            mutex: gpu
            run: ./eval
        stage alone:
            mutex: *
            run: ./migrate
        """,
        tmp_path,
    )
    train, ev, alone = p.stages
    assert (train.jobs, train.mem, train.mutex) == (2, 4 * GiB, ("gpu",))
    adm = admission(4, Resources(memory=16 * GiB))
    assert adm.try_start(train)
    assert not adm.try_start(ev)
    assert not adm.try_start(alone)
    adm.finished(train)
    assert adm.try_start(alone)
    assert not adm.try_start(ev)
