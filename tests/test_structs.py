"""`@struct` (pivotbuild.structs) behaves as the `dataclass` it replaces, in what pivotbuild relies on."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest

from pivotbuild import structs
from pivotbuild.structs import FrozenInstanceError, field, replace, struct


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


def test_positional_keyword_and_default_arguments() -> None:
    assert Point(1) == Point(x=1) == Point(1, 0, (), None)
    p = Point(1, tags=("a",), y=2)
    assert (p.x, p.y, p.tags, p.where) == (1, 2, ("a",), None)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, z=2)  # type: ignore[call-arg]


def test_equality_compares_the_compared_fields_of_the_same_class() -> None:
    assert Point(1, 2, where="here") == Point(1, 2, where="there")
    assert Point(1, 2) != Point(1, 3)
    other: object = Other(1)  # same fields, another class
    assert Point(1) != other
    assert Point(1) != cast(object, (1, 0, (), None))
    assert Bag("a", [1]) == Bag("a", [1]) != Bag("a", [2])
    nan = float("nan")  # the same object compares equal inside a tuple, as in a dataclass
    assert Point(1, tags=(str(nan),)) == Point(1, tags=(str(nan),))


def test_eq_false_is_identity() -> None:
    m = Message("hi")
    assert m == copy.copy([m])[0]
    assert m != Message("hi")
    assert len({m, Message("hi")}) == 2


def test_frozen_instances_hash_by_their_compared_fields() -> None:
    assert hash(Point(1, 2, where="a")) == hash(Point(1, 2, where="b"))
    seen = {Point(1, 2): "first"}
    seen[Point(1, 2, where="elsewhere")] = "again"
    assert seen == {Point(1, 2): "again"}
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_a_mutable_struct_with_eq_is_unhashable() -> None:
    with pytest.raises(TypeError):
        hash(Bag("a"))


def test_assigning_or_deleting_a_field_of_a_frozen_struct_raises() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):  # what callers catching dataclasses' error catch
        p.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del p.x
    with pytest.raises(FrozenInstanceError):
        Derived(1).a = 3  # type: ignore[misc]
    assert p.x == 1


def test_slots_leave_no_instance_dict() -> None:
    assert not hasattr(Point(1), "__dict__")
    assert set(Point.__slots__) == {"x", "y", "tags", "where"}
    b = Bag("a")
    b.name = "b"  # a mutable struct assigns
    assert b.name == "b"


def test_default_factories_and_defaults_are_not_shared() -> None:
    one, two = Bag("one"), Bag("two")
    one.items.append(1)
    assert two.items == [] and Bag("three").items == []
    given = [5]
    assert Bag("x", given).items is given


def test_repr_shows_the_fields_in_order_but_those_left_out() -> None:
    assert repr(Point(1, 2, ("a",))) == "Point(x=1, y=2, tags=('a',), where=None)"
    assert repr(Bag("a", [1], secret="s")) == "Bag(name='a', items=[1])"


def test_replace_copies_with_changes() -> None:
    p = Point(1, 2, ("a",), where="here")
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags, q.where) == (1, 5, ("a",), "here")
    assert p.y == 2
    assert replace(Derived(1), a=2) == Derived(2, "b")
    with pytest.raises(TypeError):
        replace(p, z=1)


def test_fields_in_declaration_order_base_class_first() -> None:
    assert [f.name for f in structs.fields(Point)] == ["x", "y", "tags", "where"]
    assert [f.name for f in structs.fields(Derived(1))] == ["a", "b"]
    assert Derived(1) == Derived(1, "b") != Derived(1, "c")
    assert structs.is_struct(Point(1)) and structs.is_struct(Point)
    assert not structs.is_struct(object())


def test_post_init_runs_after_the_fields_are_set() -> None:
    assert Checked(3).doubled == 6


def test_frozen_slotted_instances_copy_and_pickle() -> None:
    p = Point(1, 2, ("a",), "here")
    for again in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert again == p and again.where == "here"


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
    checkout = Path(structs.__file__).parents[1]  # mypy reads pivotbuild from here (it has no py.typed)
    use, cache = str(tmp_path / "use.py"), str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", cache, use]
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, check=False, timeout=300)
    errors = [line.split(": error: ")[1] for line in proc.stdout.splitlines() if ": error: " in line]
    lines = [int(line.split(":")[1]) for line in proc.stdout.splitlines() if ": error: " in line]
    assert lines == [12, 13, 14, 15, 16], proc.stdout
    assert 'Missing positional argument "a"' in errors[0]
    assert 'Unexpected keyword argument "zz"' in errors[2]
    assert "read-only" in errors[4]
