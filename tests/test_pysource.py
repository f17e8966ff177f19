"""The fingerprint of a `py:` stage by source (pysource.py): real files in a
temporary project, read with `ast`; what changes a part, and what does not."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from pivotbuild.pysource import SourceCache, SourceError, SourceFingerprint, fingerprint, imported_files

# Comfortably longer than the racy window of nanosecond timestamps (tests/test_statcache.py).
LEAVE_RACY_WINDOW_S = 0.1


class Tree:
    """A project root holding the pipeline directory itself."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = SourceCache()

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def fp(self, ref: str = "steps:square") -> SourceFingerprint:
        return fingerprint(ref, self.root, self.root, cache=self.cache)

    def parts(self, ref: str = "steps:square") -> dict[str, str]:
        return dict(self.fp(ref).parts)

    def changed(self, rel: str, text: str, ref: str = "steps:square") -> set[str]:
        """The parts that differ (or appear, or go) when `rel` is rewritten to `text`."""
        before = self.parts(ref)
        self.write(rel, text)
        after = self.parts(ref)
        return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


STEPS = textwrap.dedent("""
    import json

    import helpers
    from helpers import fmt

    SCALE = 3
    UNUSED = 4


    def square(ctx):
        return json.dumps(helpers.pad(ctx) + fmt(ctx) + local(ctx) * SCALE)


    def local(x):
        return x + 1


    def other(ctx):
        return UNUSED
""")

HELPERS = textwrap.dedent("""
    WIDTH = 8


    def pad(x):
        return str(x).rjust(WIDTH)


    def fmt(x):
        return f"{x:>4}"


    def unrelated():
        return 0
""")


@pytest.fixture
def stage(tree: Tree) -> Tree:
    tree.write("steps.py", STEPS)
    tree.write("helpers.py", HELPERS)
    return tree


def test_parts_name_every_unit_the_function_reaches(stage: Tree) -> None:
    assert sorted(stage.parts()) == [
        "helpers",
        "helpers.WIDTH",
        "helpers.fmt",
        "helpers.pad",
        "steps",
        "steps.SCALE",
        "steps.local",
        "steps.square",
    ]


def test_comments_docstrings_blank_lines_and_formatting_change_no_part(stage: Tree) -> None:
    reformatted = '''
        """The steps of the pipeline."""
        import json  # for the output

        import helpers
        from helpers import (
            fmt,
        )

        SCALE = (3)  # how much
        UNUSED = 4

        def square(ctx):
            """Square it.

            At length."""


            return json.dumps(
                helpers.pad(ctx) + fmt(ctx) + local(ctx) * SCALE  # all of it
            )

        def local(x):
            'One more.'
            return (x + 1)

        def other(ctx): return UNUSED
    '''
    assert stage.changed("steps.py", reformatted) == set()
    assert stage.changed("helpers.py", HELPERS.replace("def fmt(x):", "def fmt(x):  # !\n    '''Doc.'''")) == set()


def test_a_change_in_the_function_body_changes_its_part_only(stage: Tree) -> None:
    assert stage.changed("steps.py", STEPS.replace("* SCALE", "* SCALE * 2")) == {"steps.square"}


def test_a_change_in_an_unrelated_function_or_constant_changes_nothing(stage: Tree) -> None:
    assert stage.changed("steps.py", STEPS.replace("return UNUSED", "return UNUSED + 1")) == set()
    assert stage.changed("steps.py", STEPS.replace("UNUSED = 4", "UNUSED = 5")) == set()
    assert stage.changed("helpers.py", HELPERS.replace("return 0", "return 1")) == set()


def test_a_change_in_a_helper_of_the_same_module_changes_its_part(stage: Tree) -> None:
    assert stage.changed("steps.py", STEPS.replace("x + 1", "x + 2")) == {"steps.local"}


def test_a_helper_reached_through_import_module_changes_its_part(stage: Tree) -> None:
    assert stage.changed("helpers.py", HELPERS.replace("rjust", "ljust")) == {"helpers.pad"}


def test_a_helper_reached_through_from_import_changes_its_part(stage: Tree) -> None:
    assert stage.changed("helpers.py", HELPERS.replace(">4", ">5")) == {"helpers.fmt"}


def test_a_module_constant_it_uses_is_a_part(stage: Tree) -> None:
    assert stage.changed("steps.py", STEPS.replace("SCALE = 3", "SCALE = 4")) == {"steps.SCALE"}
    assert stage.changed("helpers.py", HELPERS.replace("WIDTH = 8", "WIDTH = 9")) == {"helpers.WIDTH"}


def test_top_level_code_of_a_reached_module_is_its_part(stage: Tree) -> None:
    assert stage.changed("helpers.py", "import os\n" + HELPERS) == {"helpers"}
    assert stage.changed("steps.py", STEPS + "\nprint('loaded')\n") == {"steps"}


def test_a_package_module_and_its_package_are_parts(tree: Tree) -> None:
    tree.write("steps.py", "from lib.text import fmt\ndef square(ctx):\n    return fmt(ctx)\n")
    tree.write("lib/__init__.py", "VERSION = 1\n")
    tree.write("lib/text.py", "def fmt(x):\n    return str(x)\ndef other():\n    return 1\n")
    assert sorted(tree.parts()) == ["lib", "lib.text", "lib.text.fmt", "steps", "steps.square"]
    assert tree.changed("lib/text.py", "def fmt(x):\n    return repr(x)\ndef other():\n    return 1\n") == {
        "lib.text.fmt"
    }
    # Importing lib.text runs lib/__init__.py first.
    assert tree.changed("lib/__init__.py", "import os\nVERSION = 1\n") == {"lib"}


def test_a_namespace_package_has_no_part_of_its_own(tree: Tree) -> None:
    tree.write("steps.py", "from lib.text import fmt\ndef square(ctx):\n    return fmt(ctx)\n")
    tree.write("lib/text.py", "def fmt(x):\n    return str(x)\n")
    assert sorted(tree.parts()) == ["lib.text", "lib.text.fmt", "steps", "steps.square"]


def test_imports_in_top_level_blocks_are_followed(tree: Tree) -> None:
    tree.write(
        "steps.py",
        """
        try:
            import fast as impl
        except ImportError:
            import slow as impl
        def square(ctx):
            return impl.run(ctx)
        """,
    )
    tree.write("fast.py", "def run(x):\n    return 1\n")
    tree.write("slow.py", "def run(x):\n    return 2\n")
    assert sorted(tree.parts()) == ["fast", "fast.run", "slow", "slow.run", "steps", "steps.square"]


def test_code_nested_deeper_than_the_recursion_limit_is_read(tree: Tree) -> None:
    # Python compiles it (up to about 3,000 levels); ast.dump would hit the recursion limit.
    tree.write("steps.py", "def square(ctx):\n    return " + " + ".join(["ctx"] * 2000) + "\n")
    assert sorted(tree.parts()) == ["steps", "steps.square"]
    assert tree.changed("steps.py", "def square(ctx):\n    return " + " - ".join(["ctx"] * 2000) + "\n") == {
        "steps.square"
    }


def test_a_name_a_package_reexports_is_named_by_its_module(tree: Tree) -> None:
    tree.write("steps.py", "from lib import fmt\ndef square(ctx):\n    return fmt(ctx)\n")
    tree.write("lib/__init__.py", "from .text import fmt\n")
    tree.write("lib/text.py", "def fmt(x):\n    return str(x)\n")
    assert sorted(tree.parts()) == ["lib", "lib.text", "lib.text.fmt", "steps", "steps.square"]


def test_dotted_imports_aliases_and_relative_imports(tree: Tree) -> None:
    tree.write("steps.py", "import lib.text as t\nimport lib.num\ndef square(ctx):\n    return t.fmt(lib.num.f())\n")
    tree.write("lib/__init__.py", "")
    tree.write("lib/text.py", "from . import num\nfrom .num import g as gee\ndef fmt(x):\n    return num.f() + gee()\n")
    # `from .. import` past the top-level package fails when run: it reaches nothing.
    tree.write("lib/num.py", "from .. import lib\ndef f():\n    return 1\ndef g():\n    return 2\n")
    assert sorted(tree.parts()) == [
        "lib",
        "lib.num",
        "lib.num.f",
        "lib.num.g",
        "lib.text",
        "lib.text.fmt",
        "steps",
        "steps.square",
    ]


def test_a_module_used_whole_counts_all_its_units(tree: Tree) -> None:
    tree.write("steps.py", "import helpers\ndef square(ctx):\n    return getattr(helpers, ctx.name)()\n")
    tree.write("helpers.py", "def a():\n    return 1\ndef b():\n    return 2\n")
    assert sorted(tree.parts()) == ["helpers", "helpers.a", "helpers.b", "steps", "steps.square"]
    assert tree.changed("helpers.py", "def a():\n    return 1\ndef b():\n    return 3\n") == {"helpers.b"}


def test_a_star_import_counts_the_whole_module(tree: Tree) -> None:
    tree.write("steps.py", "from helpers import *\ndef square(ctx):\n    return a()\n")
    tree.write("helpers.py", "def a():\n    return 1\ndef b():\n    return 2\n")
    assert sorted(tree.parts()) == ["helpers", "helpers.a", "helpers.b", "steps", "steps.square"]


def test_methods_count_with_their_class_and_reach_what_they_use(tree: Tree) -> None:
    tree.write(
        "steps.py",
        """
        import helpers
        class Scaler:
            def scale(self, x):
                return helpers.fmt(x)
        def square(ctx):
            return Scaler().scale(ctx)
        """,
    )
    tree.write("helpers.py", "def fmt(x):\n    return x\n")
    assert sorted(tree.parts()) == ["helpers", "helpers.fmt", "steps", "steps.Scaler", "steps.square"]


def test_an_import_inside_the_function_is_followed(tree: Tree) -> None:
    tree.write("steps.py", "def square(ctx):\n    from helpers import fmt\n    return fmt(ctx)\n")
    tree.write("helpers.py", "def fmt(x):\n    return x\n")
    assert sorted(tree.parts()) == ["helpers", "helpers.fmt", "steps", "steps.square"]


def test_type_checking_imports_reach_nothing(tree: Tree) -> None:
    tree.write(
        "steps.py",
        """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from helpers import Ctx
        current: Ctx
        def square(ctx: Ctx) -> None:
            if TYPE_CHECKING:
                from helpers import Ctx
            return None
        """,
    )
    tree.write("helpers.py", "class Ctx:\n    pass\n")
    assert sorted(tree.parts()) == ["steps", "steps.square"]


def test_standard_library_and_installed_imports_contribute_nothing(tree: Tree) -> None:
    tree.write(
        "steps.py",
        """
        import json
        import os.path
        import xxhash
        from collections import OrderedDict
        def square(ctx):
            return json.dumps(xxhash.xxh3_64_hexdigest(os.path.join("a", "b"))), OrderedDict()
        """,
    )
    fp = tree.fp()
    assert sorted(dict(fp.parts)) == ["steps", "steps.square"]
    assert fp.files == (str(tree.root / "steps.py"),)


def test_a_project_module_shadows_the_standard_library(tree: Tree) -> None:
    # The pipeline directory is first on sys.path: its json.py is the one imported.
    tree.write("steps.py", "import json\ndef square(ctx):\n    return json.dumps(ctx)\n")
    tree.write("json.py", "def dumps(x):\n    return str(x)\n")
    assert sorted(tree.parts()) == ["json", "json.dumps", "steps", "steps.square"]


def test_the_pipeline_directory_comes_before_the_project_root(tmp_path: Path) -> None:
    pipeline = tmp_path / "sub"
    (pipeline / "steps.py").parent.mkdir()
    (pipeline / "steps.py").write_text("import helpers\ndef square(ctx):\n    return helpers.fmt(ctx)\n")
    (tmp_path / "helpers.py").write_text("def fmt(x):\n    return 1\n")
    cache = SourceCache()
    time.sleep(LEAVE_RACY_WINDOW_S)  # so that the whole fingerprint is kept by its stamps
    fp = fingerprint("steps:square", pipeline, tmp_path, cache=cache)
    assert fp.files == (str(tmp_path / "helpers.py"), str(pipeline / "steps.py"))
    assert fp.dirs == (str(tmp_path), str(pipeline))  # a helpers.py created in sub/ would shadow the root's
    (pipeline / "helpers.py").write_text("def fmt(x):\n    return 2\n")
    new = fingerprint("steps:square", pipeline, tmp_path, cache=cache)
    assert new.files == (str(pipeline / "helpers.py"), str(pipeline / "steps.py"))
    assert dict(new.parts)["helpers.fmt"] != dict(fp.parts)["helpers.fmt"]


def test_a_module_outside_the_project_root_is_not_fingerprinted(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (elsewhere / "vendored.py").write_text("def fmt(x):\n    return x\n")
    (project / "vendored.py").symlink_to(elsewhere / "vendored.py")
    (project / "steps.py").write_text("import vendored\ndef square(ctx):\n    return vendored.fmt(ctx)\n")
    fp = fingerprint("steps:square", project, project, cache=SourceCache())
    assert sorted(dict(fp.parts)) == ["steps", "steps.square"]
    assert fp.files == (str(project / "steps.py"),)


def test_import_cycles_terminate(tree: Tree) -> None:
    tree.write("steps.py", "import helpers\ndef square(ctx):\n    return helpers.a(ctx)\ndef back():\n    return 1\n")
    tree.write(
        "helpers.py",
        "import steps\nfrom helpers import b\ndef a(x):\n    return b(x) + steps.back()\ndef b(x):\n    return a(x)\n",
    )
    tree.write("pkg/__init__.py", "from .m import f\n")
    tree.write("pkg/m.py", "from pkg import f\n")
    assert sorted(tree.parts()) == ["helpers", "helpers.a", "helpers.b", "steps", "steps.back", "steps.square"]
    tree.write("steps.py", "import pkg\ndef square(ctx):\n    return pkg.f()\n")
    assert sorted(tree.parts()) == ["pkg", "pkg.m", "steps", "steps.square"]


def test_files_lists_exactly_the_project_files_read(tree: Tree) -> None:
    tree.write("steps.py", "import lib.text\ndef square(ctx):\n    return lib.text.fmt(ctx)\n")
    tree.write("lib/__init__.py", "")
    tree.write("lib/text.py", "def fmt(x):\n    return x\n")
    tree.write("lib/unused.py", "def fmt(x):\n    return x\n")
    tree.write("other.py", "def fmt(x):\n    return x\n")
    assert tree.fp().files == tuple(str(tree.root / p) for p in ("lib/__init__.py", "lib/text.py", "steps.py"))


def test_a_local_variable_of_a_package_is_not_taken_for_its_submodule(tree: Tree) -> None:
    tree.write("lib/__init__.py", "def square(ctx):\n    text = str(ctx)\n    return text\n")
    tree.write("lib/text.py", "def fmt(x):\n    return x\n")
    fp = tree.fp("lib:square")
    assert sorted(dict(fp.parts)) == ["lib", "lib.square"]
    assert fp.files == (str(tree.root / "lib/__init__.py"),)


def test_a_missing_module_is_an_error_saying_where_it_was_looked_for(tree: Tree) -> None:
    with pytest.raises(SourceError) as err:
        tree.fp("steps:square")
    assert str(err.value) == (
        f"module 'steps' not found under {tree.root} (looked for steps.py and steps/__init__.py); "
        "create it or fix 'py: steps:square'"
    )
    tree.write("lib/__init__.py", "")
    with pytest.raises(SourceError, match=r"module 'lib.steps' not found .*looked for lib/steps.py and lib/steps/"):
        tree.fp("lib.steps:square")


def test_a_missing_function_is_an_error_with_a_suggestion(tree: Tree) -> None:
    tree.write("steps.py", "def squares(ctx):\n    return 1\n")
    with pytest.raises(SourceError) as err:
        tree.fp("steps:square")
    assert str(err.value) == (
        "module 'steps' has no function 'square'; did you mean 'squares'?; define it or fix 'py: steps:square'"
    )


def test_a_function_defined_in_a_way_that_cannot_be_read_is_no_error(tree: Tree) -> None:
    tree.write("steps.py", "import sys\nif sys.platform:\n    def square(ctx):\n        return 1\n")
    assert sorted(tree.parts()) == ["steps"]


def test_a_syntax_error_in_a_reached_file_is_located(stage: Tree) -> None:
    stage.write("helpers.py", "def fmt(x):\n    return x\n\ndef pad(x)\n    return x\n")
    with pytest.raises(SourceError) as err:
        stage.fp()
    path = str(stage.root / "helpers.py")
    assert str(err.value).startswith(f"{path}:4:")
    assert "in module 'helpers'" in str(err.value)
    assert (err.value.path, err.value.line) == (path, 4)


def test_the_memo_reads_unchanged_files_once_and_rereads_a_changed_one(stage: Tree) -> None:
    time.sleep(LEAVE_RACY_WINDOW_S)
    first = stage.fp()
    assert stage.cache.files_parsed == 2
    assert stage.fp() == first
    assert stage.fp("steps:local").parts == tuple(p for p in first.parts if p[0] in ("steps", "steps.local"))
    assert (stage.cache.files_read, stage.cache.files_parsed) == (2, 2)

    path = stage.write("helpers.py", HELPERS.replace("rjust", "ljust"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later stamp, whatever the clock
    second = stage.fp()
    assert stage.cache.files_parsed == 3
    assert {n for (n, d) in set(second.parts) ^ set(first.parts)} == {"helpers.pad"}


def test_a_file_read_within_its_clock_tick_is_read_again(stage: Tree) -> None:
    # Its stamp could stay the same through another change in the same tick, so it proves nothing.
    path = stage.root / "helpers.py"
    time.sleep(LEAVE_RACY_WINDOW_S)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, time.time_ns() + 10_000_000_000))  # "changed" later than now: racy
    first = stage.fp()
    assert stage.fp() == first
    assert (stage.cache.files_read, stage.cache.files_parsed) == (3, 2)  # helpers.py read twice, parsed once


def test_a_submodule_a_package_imports_from_itself_counts(tmp_path: Path) -> None:
    # p1/__init__.py: `from . import sub`; the stage uses p1.sub.W (or imports sub from p1).
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "__init__.py").write_text("from . import sub\n")
    (tmp_path / "p1" / "sub.py").write_text('W = "1"\n')
    (tmp_path / "steps.py").write_text(
        "import p1\nfrom p1 import sub as p1sub\n\n"
        "def a(ctx):\n    return p1.sub.W\n\ndef b(ctx):\n    return p1sub.W\n"
    )
    for ref in ("steps:a", "steps:b"):
        before = dict(fingerprint(ref, tmp_path, tmp_path, SourceCache()).parts)
        assert "p1.sub.W" in before, (ref, before)


def test_imported_files_add_what_reached_modules_import_at_top_level_used_or_not(tree: Tree) -> None:
    tree.write("steps.py", "import json\nimport setup_log\n\ndef square(ctx):\n    return 1\n")
    tree.write("setup_log.py", "from pkg import sub\n")  # (run by importing steps)
    tree.write("pkg/__init__.py", "")
    tree.write("pkg/sub.py", "import deeper\n")
    tree.write("deeper.py", "X = 1\n")
    tree.write("never.py", "X = 2\n")  # imported by nothing
    assert tree.fp().files == (str(tree.root / "steps.py"),)  # (setup_log's code is no part of the stage's)
    assert imported_files("steps:square", tree.root, tree.root) == tuple(
        str(tree.root / rel) for rel in ("deeper.py", "pkg/__init__.py", "pkg/sub.py", "setup_log.py", "steps.py")
    )
