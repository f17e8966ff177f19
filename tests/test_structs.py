"""`@struct` (pivotbuild.structs) behaves as the `dataclass` it replaces, in what pivotbuild relies on."""

from __future__ import annotations

import copy
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pivotbuild import structs
from pivotbuild.structs import FrozenInstanceError, field, replace, struct


def _classes() -> SimpleNamespace:
    """Struct classes made afresh: a class's methods are generic until it is hot (structs.HOT calls)."""

    @struct(frozen=True, slots=True)
    class Point:
        """doc"""

        x: int
        y: int = 0
        tags: tuple[str, ...] = ()
        where: str | None = field(default=None, compare=False)

    @struct(frozen=True, slots=True)
    class Other:
        x: int
        y: int = 0
        tags: tuple[str, ...] = ()
        where: str | None = None

    @struct
    class Bag:
        name: str
        items: list[int] = field(default_factory=list)
        secret: str = field(default="", repr=False)

    @struct(frozen=True, slots=True, eq=False)
    class Message:
        text: str

    @struct(frozen=True)
    class Base:
        a: int

    @struct(frozen=True)
    class Derived(Base):
        b: str = "b"

    @struct
    class Checked:
        n: int
        doubled: int = 0

        def __post_init__(self) -> None:
            self.doubled = 2 * self.n

    return SimpleNamespace(**{k: v for k, v in locals().items() if isinstance(v, type)})


@pytest.fixture(params=["generic", "compiled"])
def k(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The classes in either form of their methods: generic (a cold class) or compiled (a hot one)."""
    monkeypatch.setattr(structs, "HOT", 10**9 if request.param == "generic" else 1)
    return _classes()


@struct(frozen=True, slots=True)
class Pickled:
    x: int
    where: str | None = field(default=None, compare=False)


def test_positional_keyword_and_default_arguments(k: Any) -> None:
    assert k.Point(1) == k.Point(x=1) == k.Point(1, 0, (), None)
    p = k.Point(1, tags=("a",), y=2)
    assert (p.x, p.y, p.tags, p.where) == (1, 2, ("a",), None)
    for wrong in ((), (1, 2, (), None, 5)):
        with pytest.raises(TypeError):
            k.Point(*wrong)
    for wrong_kw in ({"z": 2}, {"x": 2}):  # unknown, or given twice
        with pytest.raises(TypeError):
            k.Point(1, **wrong_kw)


def test_equality_compares_the_compared_fields_of_the_same_class(k: Any) -> None:
    assert k.Point(1, 2, where="here") == k.Point(1, 2, where="there")
    assert k.Point(1, 2) != k.Point(1, 3)
    other: object = k.Other(1)  # same fields, another class
    assert k.Point(1) != other
    assert k.Point(1) != cast(object, (1, 0, (), None))
    assert k.Bag("a", [1]) == k.Bag("a", [1]) != k.Bag("a", [2])
    nan = float("nan")  # the same object is equal to itself inside a tuple, as in a dataclass
    assert k.Base(nan) == k.Base(nan)


def test_eq_false_is_identity(k: Any) -> None:
    m = k.Message("hi")
    assert m.__eq__(m) is True
    assert m != k.Message("hi")
    assert len({m, k.Message("hi")}) == 2


def test_frozen_instances_hash_by_their_compared_fields(k: Any) -> None:
    assert hash(k.Point(1, 2, where="a")) == hash(k.Point(1, 2, where="b"))
    seen = {k.Point(1, 2): "first"}
    seen[k.Point(1, 2, where="elsewhere")] = "again"
    assert seen == {k.Point(1, 2): "again"}
    assert len({k.Point(1), k.Point(1), k.Point(2)}) == 2


def test_a_mutable_struct_with_eq_is_unhashable(k: Any) -> None:
    with pytest.raises(TypeError):
        hash(k.Bag("a"))


def test_assigning_or_deleting_a_field_of_a_frozen_struct_raises(k: Any) -> None:
    p = k.Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2
    with pytest.raises(AttributeError):  # what callers catching dataclasses' error catch
        p.x = 2
    with pytest.raises(FrozenInstanceError):
        del p.x
    with pytest.raises(FrozenInstanceError):
        k.Derived(1).a = 3
    assert p.x == 1


def test_slots_leave_no_instance_dict(k: Any) -> None:
    assert not hasattr(k.Point(1), "__dict__")
    assert set(k.Point.__slots__) == {"x", "y", "tags", "where"}
    b = k.Bag("a")
    b.name = "b"  # a mutable struct assigns
    assert b.name == "b"


def test_default_factories_and_defaults_are_not_shared(k: Any) -> None:
    one, two = k.Bag("one"), k.Bag("two")
    one.items.append(1)
    assert two.items == [] and k.Bag("three").items == []
    given = [5]
    assert k.Bag("x", given).items is given


def test_repr_shows_the_fields_in_order_but_those_left_out(k: Any) -> None:
    assert repr(k.Point(1, 2, ("a",))) == f"{k.Point.__qualname__}(x=1, y=2, tags=('a',), where=None)"
    assert repr(k.Bag("a", [1], secret="s")) == f"{k.Bag.__qualname__}(name='a', items=[1])"


def test_replace_copies_with_changes(k: Any) -> None:
    p = k.Point(1, 2, ("a",), where="here")
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags, q.where) == (1, 5, ("a",), "here")
    assert p.y == 2
    assert replace(k.Derived(1), a=2) == k.Derived(2, "b")
    with pytest.raises(TypeError):
        replace(p, z=1)


def test_replace_of_one_field_and_of_none() -> None:
    @struct(frozen=True, slots=True)
    class One:
        only: tuple[int, ...]

    @struct
    class Empty:
        pass

    one = One((1, 2))
    assert replace(one).only == (1, 2) and replace(one) is not one
    assert replace(one, only=(3,)) == One((3,)) and one.only == (1, 2)
    assert replace(Empty()) == Empty()


def test_fields_in_declaration_order_base_class_first(k: Any) -> None:
    assert [f.name for f in structs.fields(k.Point)] == ["x", "y", "tags", "where"]
    assert [f.name for f in structs.fields(k.Derived(1))] == ["a", "b"]
    assert k.Derived(1) == k.Derived(1, "b") != k.Derived(1, "c")
    assert structs.is_struct(k.Point(1)) and structs.is_struct(k.Point)
    assert not structs.is_struct(object())


def test_post_init_runs_after_the_fields_are_set(k: Any) -> None:
    assert k.Checked(3).doubled == 6


def test_frozen_slotted_instances_copy_and_pickle() -> None:
    p = Pickled(1, "here")
    for again in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert again == p and again.where == "here"


def test_a_class_turning_hot_behaves_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(structs, "HOT", 3)
    k = _classes()
    made = []
    for i in range(6):  # generic for the first two calls of each method, compiled from the third
        bag, point = k.Bag(str(i)), k.Point(i, where="w")
        bag.items.append(i)
        made.append(bag)
        assert point == k.Point(i) and hash(point) == hash(k.Point(i)) and point != k.Point(i + 1)
    assert [b.items for b in made] == [[i] for i in range(6)]
    for cls, method in ((k.Bag, "__init__"), (k.Point, "__eq__"), (k.Point, "__hash__")):
        assert cls.__dict__[method].__qualname__ == f"{cls.__qualname__}.{method}"  # its own compiled method


def test_methods_the_class_defines_stay() -> None:
    @struct(frozen=True)
    class Own:
        a: int

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Own) and other.a % 2 == self.a % 2

        def __hash__(self) -> int:
            return self.a % 2

        def __repr__(self) -> str:
            return "own"

    assert Own(1) == Own(3) and hash(Own(1)) == hash(Own(3)) and repr(Own(1)) == "own"
    with pytest.raises(TypeError):

        @struct(frozen=True)
        class Settable:
            a: int

            def __setattr__(self, name: str, value: object) -> None: ...


def test_a_field_without_a_default_after_one_with_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="'b' follows"):

        @struct
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


def test_mypy_checks_a_structs_constructor_and_its_frozen_fields(tmp_path: Path) -> None:
    # as it checks a dataclass's (typing.dataclass_transform): a wrong call is a type error
    (tmp_path / "use.py").write_text(
        textwrap.dedent(
            """
            from pivotbuild.structs import field, struct

            @struct(frozen=True, slots=True)
            class P:
                a: int
                b: str = "x"
                c: list[int] = field(default_factory=list)

            P(1, "y", [2])
            P(a=1, c=[2])
            P()
            P("1")
            P(1, zz=3)
            P(1, c=["no"])
            P(1).a = 2
            """
        )
    )
    # pivotbuild has no py.typed: mypy reads structs.py as a local module, copied
    # beside use.py (an installed, not editable, pivotbuild sits in site-packages,
    # where mypy would take every other module for the project's own).
    (tmp_path / "pivotbuild").mkdir()
    (tmp_path / "pivotbuild" / "__init__.py").write_text("")
    shutil.copy(structs.__file__, tmp_path / "pivotbuild" / "structs.py")
    use, cache = str(tmp_path / "use.py"), str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", cache, use]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300)
    errors = [line.split(": error: ")[1] for line in proc.stdout.splitlines() if ": error: " in line]
    lines = [int(line.split(":")[1]) for line in proc.stdout.splitlines() if ": error: " in line]
    assert lines == [12, 13, 14, 15, 16], proc.stdout
    assert 'Missing positional argument "a"' in errors[0]
    assert 'Unexpected keyword argument "zz"' in errors[2]
    assert "read-only" in errors[4]
