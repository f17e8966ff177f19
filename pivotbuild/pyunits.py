"""One Python source file read into units, for a `py:` stage's fingerprint
(pysource.py walks them): each top-level def or class, the assignments to each
top-level name, and the rest of the top-level code; each with the digest of
its normalised text and the names it uses.

Normalised: the text of `ast.dump` without positions and docstrings, so
comments, docstrings and formatting do not count.  The dump is the running
Python's `ast`, so another Python version may change every digest.
"""

from __future__ import annotations

import ast
from typing import Any

from pivotbuild.state.hashing import hash_bytes
from pivotbuild.structs import struct

# A name a unit uses and the attributes read off it: `helpers.fmt(x)` uses ("helpers", ("fmt",)).
Use = tuple[str, tuple[str, ...]]


@struct(frozen=True, slots=True)
class Import:
    """What an import binds a name to: module `module` (`import a.b as m`:
    name None), or its attribute or submodule `name` (`from a.b import name`);
    `level` counts the leading dots of a relative import."""

    level: int
    module: str
    name: str | None


@struct(frozen=True, slots=True)
class Unit:
    """One part of a fingerprint: the digest of its normalised text, what it uses, what it imports."""

    digest: str
    uses: tuple[Use, ...]  # sorted, so that the walk (and which error it meets first) is reproducible
    imports: dict[str, tuple[Import, ...]]  # names bound by imports inside a function or class


@struct(frozen=True, slots=True)
class Parsed:
    """One source file, as the walk needs it (independent of the name it is imported by)."""

    units: dict[str, Unit]  # top-level name -> the def, class or assignments binding it
    body: Unit  # the rest of the top-level code
    imports: dict[str, tuple[Import, ...]]  # names bound by top-level imports (not under TYPE_CHECKING)
    stars: tuple[Import, ...]  # `from x import *`
    bound: frozenset[str]  # every name the module may bind at top level


def parse(data: bytes, path: str) -> Parsed:
    """The units of the Python source `data` (from file `path`, for messages).
    Raises SyntaxError, or ValueError for a null byte, as `ast.parse` does."""
    tree = ast.parse(data, filename=path)
    grouped: dict[str, list[ast.stmt]] = {}
    rest: list[ast.stmt] = []
    for st in tree.body[1:] if tree.body and _is_doc(tree.body[0]) else tree.body:
        names = _binds(st)
        for n in names:
            grouped.setdefault(n, []).append(st)
        if not names:
            rest.append(st)
    imports: dict[str, list[Import]] = {}
    stars: list[Import] = []
    _top_imports(rest, imports, stars)
    declared: set[str] = set()  # names a `global` statement binds
    body = _read(rest, declared)
    units = {n: _read(stmts, declared) for n, stmts in grouped.items()}
    bound = frozenset(grouped.keys() | imports.keys() | _stores(rest) | declared)
    return Parsed(units, body, {n: tuple(i) for n, i in imports.items()}, tuple(stars), bound)


def _is_doc(st: ast.stmt) -> bool:
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)


def _binds(st: ast.stmt) -> list[str]:
    """The top-level names a statement is the unit of: a def's or class's,
    or those a plain assignment to names binds; [] for anything else."""
    if isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [st.name]
    if isinstance(st, ast.Assign):
        names = [n for t in st.targets for n in _target_names(t)]
        return names if all(names) else []
    if isinstance(st, ast.AnnAssign | ast.AugAssign) and isinstance(st.target, ast.Name):
        return [st.target.id] if not isinstance(st, ast.AnnAssign) or st.value is not None else []
    return []


def _target_names(t: ast.expr) -> list[str]:
    """The names an assignment target binds; "" for a target that is not a name (`a.b = `, `a[0] = `)."""
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, ast.Starred):
        return _target_names(t.value)
    if isinstance(t, ast.Tuple | ast.List):
        return [n for e in t.elts for n in _target_names(e)]
    return [""]


class _Quiet:
    """The value of an attribute read: serialised, not recorded as a use on its
    own (`helpers.fmt` uses ("helpers", ("fmt",)), not also ("helpers", ()))."""

    __slots__ = ("node",)

    def __init__(self, node: ast.expr) -> None:
        self.node = node


_DEAD, _LIVE = object(), object()  # around an `if TYPE_CHECKING:` body: code that never runs
_DOC_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SHAPES: dict[type, tuple[str, tuple[str, ...]]] = {}


def _read(stmts: list[ast.stmt], declared: set[str]) -> Unit:
    """A unit of `stmts`: the digest of their normalised text, the names they
    use (with the attributes read off each) and the names their imports bind;
    `global` declarations go to `declared`.

    The text is that of `ast.dump` without positions and docstrings, written
    in one pass that also finds the uses, with a stack of its own: code
    nested deeper than the interpreter's recursion limit still compiles."""
    out: list[str] = []
    uses: set[Use] = set()
    imports: dict[str, list[Import]] = {}
    dead = 0  # inside `if TYPE_CHECKING:` bodies: what they use and import is not followed
    todo: list[Any] = list(reversed(stmts))
    while todo:
        node = todo.pop()
        cls = type(node)
        if cls is str:
            out.append(node)
            continue
        quiet = cls is _Quiet
        if quiet:
            node = node.node
            cls = type(node)
        elif node is _DEAD or node is _LIVE:
            dead += 1 if node is _DEAD else -1
            continue
        if cls is ast.Name:
            if not (quiet or dead) and type(node.ctx) is ast.Load:
                uses.add((node.id, ()))
            out.append(f"Name({node.id!r},{type(node.ctx).__name__})")
        elif cls is ast.Constant:
            # hex: repr refuses an int of more than 4300 digits, which a hex literal can write
            text = hex(node.value) if type(node.value) is int else repr(node.value)
            out.append(f"Constant({text},{node.kind!r})")
        elif cls is ast.Attribute:
            if not (quiet or dead):
                chain = []
                value = node
                while type(value) is ast.Attribute:
                    chain.append(value.attr)
                    value = value.value
                if type(value) is ast.Name:
                    uses.add((value.id, tuple(reversed(chain))))
            todo += (f",{node.attr!r},{type(node.ctx).__name__})", _Quiet(node.value), "Attribute(")
        else:
            if dead:
                pass
            elif cls is ast.Import or cls is ast.ImportFrom:
                _bind_import(node, imports, [])
            elif cls is ast.Global:
                declared.update(node.names)
            shape = _SHAPES.get(cls)
            if shape is None:
                shape = _SHAPES[cls] = (cls.__name__ + "(", tuple(getattr(cls, "_fields", ())))
            if not shape[1]:  # Load(), Add(), ...
                out.append(shape[0] + ")")
                continue
            items: list[Any] = [shape[0]]
            for field in shape[1]:
                got = getattr(node, field, None)
                if type(got) is list:
                    if field == "body" and cls in _DOC_OWNERS and got and _is_doc(got[0]):
                        got = got[1:]
                    checking = field == "body" and cls is ast.If and _is_type_checking(node.test)
                    items += ("[", _DEAD) if checking else ("[",)
                    items += (v if isinstance(v, ast.AST) else repr(v) for v in got)
                    items += (_LIVE, "],") if checking else ("],",)
                elif isinstance(got, ast.AST):
                    items += (got, ",")
                else:
                    items.append(f"{got!r},")
            items.append(")")
            todo += reversed(items)
    return Unit(hash_bytes("".join(out).encode()), tuple(sorted(uses)), {n: tuple(i) for n, i in imports.items()})


def _top_imports(stmts: list[ast.stmt], imports: dict[str, list[Import]], stars: list[Import]) -> None:
    """The imports run at top level: in compound statements too, not in
    defs, classes or `if TYPE_CHECKING:` bodies."""
    for st in stmts:
        if isinstance(st, ast.Import | ast.ImportFrom):
            _bind_import(st, imports, stars)
        elif isinstance(st, ast.If) and _is_type_checking(st.test):
            _top_imports(st.orelse, imports, stars)
        elif not isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for field in ("body", "orelse", "finalbody"):
                _top_imports(getattr(st, field, []), imports, stars)
            for clause in getattr(st, "handlers", []) + getattr(st, "cases", []):  # except, match
                _top_imports(clause.body, imports, stars)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _bind_import(node: ast.Import | ast.ImportFrom, imports: dict[str, list[Import]], stars: list[Import]) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                imports.setdefault(alias.asname, []).append(Import(0, alias.name, None))
            else:  # `import a.b` binds `a`
                top = alias.name.partition(".")[0]
                imports.setdefault(top, []).append(Import(0, top, None))
        return
    for alias in node.names:
        imp = Import(node.level, node.module or "", None if alias.name == "*" else alias.name)
        if imp.name is None:
            stars.append(imp)
        else:
            imports.setdefault(alias.asname or alias.name, []).append(imp)


def _stores(stmts: list[ast.stmt]) -> set[str]:
    """Names top-level code binds outside plain assignments (in `if`, `try`, `for`, `with`,
    a `global` declaration...), generously: only for the 'has no function' check."""
    found: set[str] = set()
    for node in (n for st in stmts for n in ast.walk(st)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Global):
            found.update(node.names)
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).partition(".")[0])
    return found
