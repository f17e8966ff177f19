"""The program's layers, read from its source with `ast`: the core (everything
outside `pivotbuild/cli/` and `pivotbuild/report/`) never imports the command
line, never prints and never exits; only the command line does that."""

from __future__ import annotations

import ast
from pathlib import Path

import pivotbuild

PACKAGE = Path(pivotbuild.__file__).parent


def modules(*outside: str) -> list[tuple[str, ast.Module]]:
    """Each module of the package but those under `outside`, parsed."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith(outside):
            found.append((rel, ast.parse(path.read_text(encoding="utf-8"), rel)))
    return found


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_nothing_outside_the_command_line_imports_it() -> None:
    # (__main__.py is the command line's entry point: `python -m pivotbuild`.)
    wrong = [
        f"{rel} imports {name}"
        for rel, tree in modules("cli/", "__main__.py")
        for name in sorted(imported(tree))
        if name == "pivotbuild.cli" or name.startswith("pivotbuild.cli.")
    ]
    assert wrong == []


def test_the_core_never_prints_or_exits() -> None:
    wrong = []
    # (pyworker.py and pyrunner.py are the program a py: stage runs in, not the
    # core: its stdout and stderr are the stage's, where its traceback belongs)
    skip = ("cli/", "report/", "__main__.py", "build/executors/pyworker.py", "build/executors/pyrunner.py")
    for rel, tree in modules(*skip):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "exit"):
                wrong.append(f"{rel}:{node.lineno}: {node.func.id}()")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
                and node.attr in ("stdout", "stderr", "__stdout__", "__stderr__", "exit")
            ):
                wrong.append(f"{rel}:{node.lineno}: sys.{node.attr}")
    assert wrong == []


def test_the_checks_see_the_fast_path_core() -> None:
    """The fast path's core is among the modules checked (it was the one that printed)."""
    assert "build/fastpath.py" in dict(modules("cli/", "report/", "__main__.py"))
