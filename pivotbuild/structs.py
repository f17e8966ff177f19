"""`@struct`: the records of pivotbuild, without the start-up cost of `dataclasses`.

Every command imports dozens of record classes, and `dataclasses` made them
the largest part of a build's start-up: `import dataclasses` pulls `inspect`
(ast, dis, tokenize...: 10 to 25 ms here), and each `@dataclass` writes and
compiles the source of its methods when its module is imported (40 classes of
5 fields: 14 ms plain, 21 ms frozen, 33 ms frozen and slotted, as `slots=True`
creates the class twice).  A one-stage build spent a third of its time in
`dataclasses._process_class`.

`struct` keeps what pivotbuild uses of `dataclass`, with the same keywords
(`frozen`, `slots`, `eq`) and the same `field(default=, default_factory=,
compare=, repr=)`, and mypy checks constructors alike (`dataclass_transform`).
Nothing is compiled when a class is created (40 classes: about 1 ms):
`__init__`, `__eq__` and `__hash__` are shared functions driven by the
class's fields until the class is hot (`HOT` calls), when its own are
compiled, so a class created a few times per command costs no compiling, and
one created per stage or per file gets the straight-line `__init__` of a
dataclass (a frozen one's faster: it sets each slot directly).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from types import MemberDescriptorType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform, overload
    from typing import Protocol as Protocol  # noqa: PLC0414 (re-exported, for mypy: see below)

    T = TypeVar("T")
else:
    # typing's decorator and base class only describe, to the type checker, and
    # a build does not import typing (2 to 3 ms): the modules that define
    # Protocols take `Protocol` from here.
    Protocol = object

    def dataclass_transform(**_: object) -> object:
        return lambda f: f


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # no default
_FACTORY: Any = _Missing()  # the __init__ default of a field with a default_factory


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen struct (as `dataclasses.FrozenInstanceError`)."""


class Field:
    """One field of a struct, in declaration order (`fields()`)."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, compare: bool, repr: bool) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


if TYPE_CHECKING:

    @overload
    def field(*, default: T, compare: bool = True, repr: bool = True) -> T: ...
    @overload
    def field(*, default_factory: Callable[[], T], compare: bool = True, repr: bool = True) -> T: ...
    @overload
    def field(*, compare: bool = True, repr: bool = True) -> Any: ...


def field(
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    compare: bool = True,
    repr: bool = True,
) -> Any:
    """A field's options, as the value of its class attribute (as `dataclasses.field`)."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, compare, repr)


if TYPE_CHECKING:

    @overload
    def struct(cls: type[T], /) -> type[T]: ...
    @overload
    def struct(*, frozen: bool = False, slots: bool = False, eq: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field, Field))
def struct(
    cls: type[T] | None = None, /, *, frozen: bool = False, slots: bool = False, eq: bool = True
) -> type[T] | Callable[[type[T]], type[T]]:
    """Make `cls` a record of its annotated fields, as `dataclasses.dataclass` with the same keywords:
    `frozen` (assigning a field raises FrozenInstanceError; instances hash by their compared fields),
    `slots` (`__slots__` of the fields), `eq` (`==` compares the fields that are `compare`d;
    `eq=False` leaves identity)."""

    def wrap(cls: type[T]) -> type[T]:
        return _process(cls, frozen, slots, eq)

    return wrap if cls is None else wrap(cls)


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a struct or struct class, in order."""
    found: tuple[Field, ...] = getattr(obj, "__struct_fields__")  # noqa: B009 (not an attribute mypy knows)
    return found


def is_struct(obj: object) -> bool:
    """Whether `obj` is a struct or a struct class."""
    return hasattr(obj, "__struct_fields__")


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of struct `obj` with `changes` (as `dataclasses.replace`)."""
    cls = type(obj)
    known = _readers.get(cls)
    if known is None:
        names = tuple(f.name for f in fields(obj))
        known = _readers[cls] = (names, _reader(names))
    names, get = known
    values = dict(zip(names, get(obj), strict=True))  # (every field read in one call: a copy is made per stage)
    values.update(changes)
    return cls(**values)


# A struct class -> its fields' names and a reader of all their values at once (`replace`).
_readers: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _reader(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function reading these attributes of an object, as a tuple (one C call
    where there are two or more: `operator.attrgetter`)."""
    if len(names) >= 2:
        return operator.attrgetter(*names)

    def read(obj: Any) -> tuple[Any, ...]:
        return tuple(getattr(obj, name) for name in names)

    return read


def _process(cls: type[T], frozen: bool, slots: bool, eq: bool) -> type[T]:
    own: list[Field] = []
    # The class's own annotations (`inspect.get_annotations` would import inspect); with
    # `from __future__ import annotations` they are strings, never evaluated.
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if isinstance(annotation, str) and annotation.startswith(("ClassVar", "typing.ClassVar")):
            continue
        spec = cls.__dict__.get(name, MISSING)
        f = spec if isinstance(spec, Field) else Field(spec, MISSING, True, True)
        f.name = name
        own.append(f)
    inherited = {f.name: f for base in reversed(cls.__mro__[1:]) for f in getattr(base, "__struct_fields__", ())}
    all_fields = tuple({**inherited, **{f.name: f for f in own}}.values())
    required_after_default = False
    for f in all_fields:
        if f.default is MISSING and f.default_factory is MISSING:
            if required_after_default:
                raise TypeError(f"{cls.__qualname__}: non-default field {f.name!r} follows a field with a default")
        else:
            required_after_default = True
    ns: dict[str, Any] = {
        "__struct_fields__": all_fields,
        "__match_args__": tuple(f.name for f in all_fields),
        "__struct_repr__": tuple(f.name for f in all_fields if f.repr),
    }
    if "__init__" not in cls.__dict__:
        ns["__init__"] = _lazy_init
    if "__repr__" not in cls.__dict__:
        ns["__repr__"] = _repr
    if frozen:
        if "__setattr__" in cls.__dict__ or "__delattr__" in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: a frozen struct cannot define __setattr__ or __delattr__")
        ns["__setattr__"] = _frozen_setattr
        ns["__delattr__"] = _frozen_delattr
        if slots:
            ns["__getstate__"] = _getstate
            ns["__setstate__"] = _setstate
    if eq and "__eq__" not in cls.__dict__:  # methods the class defines stay
        ns["__eq__"] = _lazy_eq
        if "__hash__" not in cls.__dict__:
            # As dataclasses: a frozen record hashes by what it compares; a mutable one is unhashable.
            ns["__hash__"] = _lazy_hash if frozen else None
    for f in own:  # a default lives in __init__, not as a class attribute (which a slot would clash with)
        if f.name in cls.__dict__:
            delattr(cls, f.name)
    if slots and "__slots__" not in cls.__dict__:
        return _slotted(cls, ns, tuple(f.name for f in own))
    for name, value in ns.items():
        setattr(cls, name, value)
    return cls


def _slotted(cls: type[T], ns: dict[str, Any], names: tuple[str, ...]) -> type[T]:
    """`cls` created again with `__slots__`: slots exist only from a class's creation."""
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    body.update(ns, __slots__=names)
    meta: Any = type(cls)
    new: type[T] = meta(cls.__name__, cls.__bases__, body)
    new.__qualname__ = cls.__qualname__
    return new


# `__init__`, `__eq__` and `__hash__` start as these stubs, which do the work generically
# and count; a class's method called HOT times gets its own compiled code (the
# straight-line code a dataclass has, 4 to 5 times faster), which replaces the stub.
# Compiling one costs 100 to 200 us, and most classes are created a few times per
# command: a one-stage build compiled 30 methods (5 ms) when all were compiled on
# their first call.  Counted in instructions (valgrind), a one-stage build is the
# same with HOT at 10 as at 50 (204.8 against 205.2 million; at 1, 225), and an
# incremental build of 1,000 stages 2% cheaper (675 against 690 million): the
# records made per stage or per file (a 21-field Stage first of all) cost more
# in their first generic calls than their compiling.
HOT = 10
_calls: dict[tuple[type, str], int] = {}


def _owner(obj: object, method: str) -> type:
    """The class whose stub was called (counted)."""
    owner = next(c for c in type(obj).__mro__ if method in c.__dict__)
    _calls[owner, method] = _calls.get((owner, method), 0) + 1
    return owner


def _lazy_init(self: Any, *args: Any, **kwargs: Any) -> None:
    owner = _owner(self, "__init__")
    if _calls[owner, "__init__"] >= HOT:
        _install(owner, "__init__")(self, *args, **kwargs)
        return
    fields_ = fields(owner)
    if len(args) > len(fields_):
        raise TypeError(f"{owner.__qualname__}() takes {len(fields_)} positional arguments but {len(args)} were given")
    store = object.__setattr__ if owner.__dict__.get("__setattr__") is _frozen_setattr else setattr
    for i, f in enumerate(fields_):
        if i < len(args):
            if f.name in kwargs:
                raise TypeError(f"{owner.__qualname__}() got multiple values for argument {f.name!r}")
            value = args[i]
        elif f.name in kwargs:
            value = kwargs.pop(f.name)
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        elif f.default is not MISSING:
            value = f.default
        else:
            raise TypeError(f"{owner.__qualname__}() missing required argument: {f.name!r}")
        store(self, f.name, value)
    if kwargs:
        raise TypeError(f"{owner.__qualname__}() got an unexpected keyword argument {next(iter(kwargs))!r}")
    if hasattr(self, "__post_init__"):
        self.__post_init__()


def _lazy_eq(self: Any, other: object) -> Any:
    owner = _owner(self, "__eq__")
    if _calls[owner, "__eq__"] >= HOT:
        return _install(owner, "__eq__")(self, other)
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared_values(owner, self) == _compared_values(owner, other)


def _lazy_hash(self: Any) -> Any:
    owner = _owner(self, "__hash__")
    if _calls[owner, "__hash__"] >= HOT:
        return _install(owner, "__hash__")(self)
    return hash(_compared_values(owner, self))


def _compared_values(cls: type, obj: object) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.name) for f in fields(cls) if f.compare)


def _install(owner: type, method: str) -> Callable[..., Any]:
    scope: dict[str, Any] = {}
    source = _SOURCES[method](owner, scope)
    exec(compile(source, f"<struct {owner.__qualname__}>", "exec"), scope)
    compiled: Callable[..., Any] = scope[method]
    compiled.__qualname__ = f"{owner.__qualname__}.{method}"
    setattr(owner, method, compiled)
    return compiled


def _init_source(cls: type, scope: dict[str, Any]) -> str:
    """Defaults in the signature, one store per field.  A frozen struct's fields are set
    past its `__setattr__`: by the slot's own setter (twice as fast), else `object.__setattr__`."""
    frozen = cls.__dict__.get("__setattr__") is _frozen_setattr
    scope.update(_FACTORY=_FACTORY, _set=object.__setattr__)
    params, body = ["self"], []
    for i, f in enumerate(fields(cls)):
        store = f"self.{f.name} = {{}}"
        if frozen:
            slot = next((c.__dict__[f.name] for c in cls.__mro__ if f.name in c.__dict__), None)
            if isinstance(slot, MemberDescriptorType):
                scope[f"_set_{i}"] = slot.__set__
                store = f"_set_{i}(self, {{}})"
            else:
                store = f"_set(self, {f.name!r}, {{}})"
        value = f.name
        if f.default_factory is not MISSING:
            scope[f"_factory_{i}"] = f.default_factory
            params.append(f"{f.name}=_FACTORY")
            value = f"_factory_{i}() if {f.name} is _FACTORY else {f.name}"
        elif f.default is not MISSING:
            scope[f"_default_{i}"] = f.default
            params.append(f"{f.name}=_default_{i}")
        else:
            params.append(f.name)
        body.append(store.format(value))
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    return f"def __init__({', '.join(params)}):\n    " + ("\n    ".join(body) or "pass")


def _compared(cls: type, of: str) -> str:
    """`(of.a, of.b,)`: the compared fields as a tuple display."""
    return "(" + "".join(f"{of}.{f.name}," for f in fields(cls) if f.compare) + ")"


def _eq_source(cls: type, scope: dict[str, Any]) -> str:
    return (
        "def __eq__(self, other):\n"
        "    if other.__class__ is self.__class__:\n"
        f"        return {_compared(cls, 'self')} == {_compared(cls, 'other')}\n"
        "    return NotImplemented"
    )


def _hash_source(cls: type, scope: dict[str, Any]) -> str:
    return f"def __hash__(self):\n    return hash({_compared(cls, 'self')})"


_SOURCES: dict[str, Callable[[type, dict[str, Any]], str]] = {
    "__init__": _init_source,
    "__eq__": _eq_source,
    "__hash__": _hash_source,
}


def _repr(self: Any) -> str:
    cls = type(self)
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in cls.__struct_repr__)
    return f"{cls.__qualname__}({shown})"


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> tuple[Any, ...]:
    """A frozen slotted struct's state, for copy and pickle (it has no `__dict__`)."""
    return tuple(getattr(self, f.name) for f in fields(self))


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for f, value in zip(fields(self), state, strict=True):
        object.__setattr__(self, f.name, value)
