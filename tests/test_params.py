"""Params files: `pivotbuild.pivotfile.params`, and params as the compiler uses them
(`params:` fields, `${params.KEY}`, `Stage.params`, `Pipeline.params_files`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import compile_text
from helpers import assert_at, diagnostics, only_error, the_stage

from pivotbuild.model import Param
from pivotbuild.pivotfile.params import ParamError, Params, ParamsFileError, split_ref, to_text

HAVE_YAML = importlib.util.find_spec("yaml") is not None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = (tmp_path / "proj").resolve()
    path.mkdir()
    return path


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- the module on its own ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "split"),
    [
        ("a.b", (None, "a.b")),
        ("a", (None, "a")),
        ("other.json:a.b", ("other.json", "a.b")),
        ("conf/p.toml:x", ("conf/p.toml", "x")),
        ("P.YAML:x", ("P.YAML", "x")),
        ("p.yml:x.y", ("p.yml", "x.y")),
        ("other:a", (None, "other:a")),  # no params-file suffix: not a file reference
        ("x.toml:", ("x.toml", "")),
    ],
)
def test_split_ref(ref: str, split: tuple[str | None, str]) -> None:
    assert split_ref(ref) == split


@pytest.mark.parametrize(
    ("value", "text"),
    [("abc", "abc"), ("a b", "a b"), (3, "3"), (0.1, "0.1"), (True, "true"), (False, "false"), (None, "null")],
)
def test_to_text(value: object, text: str) -> None:
    assert to_text(value) == text


def test_to_text_of_lists_and_tables() -> None:
    assert to_text(["a", 2, [True, "x y"]]) == "a 2 true x y"
    with pytest.raises(ParamError, match="is a table; name a key inside it"):
        to_text({"a": 1})
    with pytest.raises(ParamError, match="is a table"):
        to_text([1, {"a": 1}])


def test_lookup_reads_toml_before_json(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\n")
    write(root, "params.json", '{"train": {"epochs": 99, "lr": 0.5}, "only_json": "j"}')
    params = Params(root, "")
    value = params.lookup("train.epochs")
    assert (value.file, value.key, value.value) == ("params.toml", "train.epochs", 10)
    assert params.files_read == {"params.toml"}
    value = params.lookup("train.lr")
    assert (value.file, value.key, value.value) == ("params.json", "train.lr", 0.5)
    assert params.lookup("only_json").value == "j"
    assert params.files_read == {"params.toml", "params.json"}


def test_lookup_named_file(root: Path) -> None:
    write(root, "conf/model.json", '{"a": {"b": [1, 2]}}')
    params = Params(root, "")
    value = params.lookup("conf/model.json:a.b")
    assert (value.file, value.key, value.value) == ("conf/model.json", "a.b", [1, 2])
    assert params.files_read == {"conf/model.json"}


def test_lookup_table_value_and_nested_keys(root: Path) -> None:
    write(root, "params.toml", "[a.b]\nc = 1\nd = 'x'\n")
    params = Params(root, "")
    assert params.lookup("a.b").value == {"c": 1, "d": "x"}
    assert params.lookup("a.b.d").value == "x"


def test_lookup_missing_key_suggests(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\n")
    with pytest.raises(ParamError) as info:
        Params(root, "").lookup("train.epoch")
    assert str(info.value).startswith("param 'train.epoch' not found in params.toml; did you mean 'train.epochs'")


def test_lookup_missing_key_names_every_file_looked_in(root: Path) -> None:
    write(root, "params.toml", "a = 1\n")
    write(root, "params.json", '{"b": 2}')
    with pytest.raises(ParamError, match=r"param 'c' not found in params\.toml or params\.json"):
        Params(root, "").lookup("c")


def test_lookup_shows_the_pipeline_directory(root: Path) -> None:
    write(root, "sub/params.toml", "a = 1\n")
    with pytest.raises(ParamError, match=r"not found in sub/params\.toml"):
        Params(root / "sub", "sub").lookup("b")
    with pytest.raises(ParamError, match=r"params file 'sub/x\.json' does not exist"):
        Params(root / "sub", "sub").lookup("x.json:b")


def test_lookup_without_any_params_file(root: Path) -> None:
    with pytest.raises(ParamError, match=r"no params file: create params\.toml with the key 'a\.b'"):
        Params(root, "").lookup("a.b")


@pytest.mark.parametrize("ref", ["a..b", ".a", "a.", "a b", "x.toml:"])
def test_lookup_rejects_malformed_keys(root: Path, ref: str) -> None:
    with pytest.raises(ParamError, match="is not a param key"):
        Params(root, "").lookup(ref)


def test_lookup_invalid_file_is_located_in_it(root: Path) -> None:
    write(root, "params.toml", "a = 1\nb = = 2\n")
    with pytest.raises(ParamsFileError) as info:
        Params(root, "").lookup("a")
    diag = info.value.diagnostic
    assert_at(diag, 2, 5, "invalid TOML", "Invalid value", path="params.toml")
    assert diag.source_line == "b = = 2"


# -- params: fields ----------------------------------------------------------------


def test_params_field_tracks_keys(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\nlr = 0.1\nname = 'big'\n[other]\nx = 1\n")
    p = compile_text(
        """
        stage s:
            params: train.lr train.epochs train.name
            run: echo
        """,
        root,
    )
    assert the_stage(p).params == (
        Param("params.toml", "train.epochs", "10"),
        Param("params.toml", "train.lr", "0.1"),
        Param("params.toml", "train.name", '"big"'),
    )
    assert p.params_files == ("params.toml",)


def test_params_field_accepts_a_whole_table_as_canonical_json(root: Path) -> None:
    write(root, "params.toml", "[train]\nz = 1\na = [1, 'x']\n[train.sub]\nk = true\n")
    p = compile_text("stage s:\n    params: train\n    run: echo\n", root)
    [param] = the_stage(p).params
    assert param == Param("params.toml", "train", '{"a":[1,"x"],"sub":{"k":true},"z":1}')
    assert json.loads(param.value_json) == {"z": 1, "a": [1, "x"], "sub": {"k": True}}


def test_value_json_is_canonical(root: Path) -> None:
    write(root, "params.json", '{"t": {"b": 2, "a": {"y": null, "x": 1.5}}, "s": "caf\\u00e9"}')
    p = compile_text("stage s:\n    params: t s\n    run: echo\n", root)
    assert the_stage(p).params == (
        Param("params.json", "s", json.dumps("café")),
        Param("params.json", "t", '{"a":{"x":1.5,"y":null},"b":2}'),
    )


def test_json_is_read_when_toml_lacks_the_key(root: Path) -> None:
    write(root, "params.toml", "a = 1\n")
    write(root, "params.json", '{"b": {"c": "json"}}')
    p = compile_text("stage s:\n    params: a b.c\n    run: echo ${params.b.c}\n", root)
    s = the_stage(p)
    assert s.params == (Param("params.json", "b.c", '"json"'), Param("params.toml", "a", "1"))
    assert s.render_command() == "echo json"
    assert p.params_files == ("params.json", "params.toml")


def test_toml_wins_over_json(root: Path) -> None:
    write(root, "params.toml", "a = 'toml'\n")
    write(root, "params.json", '{"a": "json"}')
    p = compile_text("stage s:\n    run: echo ${params.a}\n", root)
    assert the_stage(p).render_command() == "echo toml"
    assert the_stage(p).params == (Param("params.toml", "a", '"toml"'),)
    assert p.params_files == ("params.toml",)


def test_params_files_lists_files_looked_for(root: Path) -> None:
    write(root, "params.json", '{"a": 1}')
    p = compile_text("stage s:\n    params: a\n    run: echo\n", root)
    # params.toml was looked for (and is absent): creating it could change the value.
    assert p.params_files == ("params.json", "params.toml")


def test_params_files_empty_without_params(root: Path) -> None:
    write(root, "params.toml", "a = 1\n")
    p = compile_text("stage s:\n    run: echo\n", root)
    assert p.params_files == ()
    assert the_stage(p).params == ()


def test_named_params_file(root: Path) -> None:
    write(root, "conf/model.json", '{"layers": 3, "act": "relu"}')
    p = compile_text(
        """
        stage s:
            params: conf/model.json:layers
            run: echo ${params.conf/model.json:act}
        """,
        root,
    )
    s = the_stage(p)
    assert s.render_command() == "echo relu"
    assert s.params == (
        Param("conf/model.json", "act", '"relu"'),
        Param("conf/model.json", "layers", "3"),
    )
    assert p.params_files == ("conf/model.json",)


def test_params_in_a_subdirectory_pipeline(root: Path) -> None:
    write(root, "sub/params.toml", "[train]\nepochs = 5\n")
    write(root, "params.toml", "[train]\nepochs = 1\n")  # the root's own params: not this pipeline's
    p = compile_text(
        """
        stage s:
            params: train.epochs
            outs: out-${params.train.epochs}.txt
            run: echo ${params.train.epochs}
        """,
        root,
        subdir="sub",
    )
    s = the_stage(p)
    assert s.params == (Param("sub/params.toml", "train.epochs", "5"),)
    assert [o.path for o in s.outs] == ["sub/out-5.txt"]
    assert s.render_command() == "echo 5"
    assert p.params_files == ("sub/params.toml",)


def test_params_field_list_from_variable(root: Path) -> None:
    write(root, "params.toml", "a = 1\nb = 2\n")
    p = compile_text("KEYS = a b\nstage s:\n    params: ${KEYS}\n    run: echo\n", root)
    assert [prm.key for prm in the_stage(p).params] == ["a", "b"]


def test_param_used_in_matrix_variants_is_tracked_per_variant(root: Path) -> None:
    write(root, "params.toml", "n = 2\n")
    p = compile_text("stage s:\n    matrix: m=x y\n    run: echo ${m} ${params.n}\n", root)
    assert [s.name for s in p.stages] == ["s@x", "s@y"]
    for stage in p.stages:
        assert stage.params == (Param("params.toml", "n", "2"),)
    assert [s.render_command() for s in p.stages] == ["echo x 2", "echo y 2"]


# -- ${params.KEY} -----------------------------------------------------------------------


def test_param_reference_renders_and_tracks(root: Path) -> None:
    write(
        root,
        "params.toml",
        "n = 3\nf = 0.1\nb = false\ns = 'x y'\nl = ['a', 2, true]\n[t]\nk = 'v'\n",
    )
    p = compile_text(
        """
        stage s:
            desc: ${params.t.k}
            deps: ${params.l}
            env: N=${params.n}
            run: echo ${params.n} ${params.f} ${params.b} ${params.s} ${params.l}
        """,
        root,
    )
    s = the_stage(p)
    assert s.render_command() == "echo 3 0.1 false x y a 2 true"
    assert s.desc == "v"
    # A list param that is a whole word gives one dep per item.
    assert [d.path for d in s.deps] == ["a", "2", "true"]
    assert s.env == (("N", "3"),)
    assert s.params == (
        Param("params.toml", "b", "false"),
        Param("params.toml", "f", "0.1"),
        Param("params.toml", "l", '["a",2,true]'),
        Param("params.toml", "n", "3"),
        Param("params.toml", "s", '"x y"'),
        Param("params.toml", "t.k", '"v"'),
    )


def test_param_reference_through_a_variable_is_tracked(root: Path) -> None:
    write(root, "params.toml", "epochs = 7\n")
    p = compile_text("ARGS = --epochs ${params.epochs}\nstage s:\n    run: train ${ARGS}\n", root)
    s = the_stage(p)
    assert s.render_command() == "train --epochs 7"
    assert s.params == (Param("params.toml", "epochs", "7"),)


def test_param_in_matrix_values_decides_the_variants_and_is_not_tracked(root: Path) -> None:
    write(root, "params.toml", "lrs = [0.1, 0.01]\n")
    p = compile_text("stage s:\n    matrix: lr=${params.lrs}\n    run: echo ${lr}\n", root)
    assert [s.name for s in p.stages] == ["s@0.1", "s@0.01"]
    assert [s.params for s in p.stages] == [(), ()]
    assert [s.render_command() for s in p.stages] == ["echo 0.1", "echo 0.01"]


def test_param_reference_and_field_are_one_entry(root: Path) -> None:
    write(root, "params.toml", "a = 1\n")
    p = compile_text("stage s:\n    params: a\n    run: echo ${params.a}\n", root)
    assert the_stage(p).params == (Param("params.toml", "a", "1"),)


def test_param_not_used_by_a_stage_is_not_tracked(root: Path) -> None:
    write(root, "params.toml", "a = 1\nb = 2\n")
    p = compile_text("stage s:\n    run: echo ${params.a}\nstage t:\n    run: echo ${params.b}\n", root)
    assert the_stage(p, "s").params == (Param("params.toml", "a", "1"),)
    assert the_stage(p, "t").params == (Param("params.toml", "b", "2"),)


def test_a_variable_cannot_be_named_like_a_param(root: Path) -> None:
    write(root, "params.toml", "x = 'param'\n")
    diag = only_error("params.x = variable\nstage s:\n    run: echo ${params.x}\n", root)
    assert_at(diag, 1, 1, "'params.x' is reserved")


def test_param_date_renders_as_written(root: Path) -> None:
    # BUG: TOML dates are rendered through json.dumps(default=str), so the command
    # gets the JSON string with its quotes: echo "1979-05-27".
    write(root, "params.toml", "when = 1979-05-27\n")
    p = compile_text("stage s:\n    run: echo ${params.when}\n", root)
    assert the_stage(p).render_command() == "echo 1979-05-27"


# -- errors ---------------------------------------------------------------------------------


def test_missing_key_in_params_field_suggests(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\n")
    diag = only_error("stage s:\n    params: train.epoch\n    run: echo\n", root)
    assert_at(diag, 2, 13, "param 'train.epoch' not found in params.toml", "did you mean 'train.epochs'")


def test_missing_key_in_reference_suggests(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\n")
    diag = only_error("stage s:\n    run: train --epochs ${params.train.epoch}\n", root)
    assert_at(diag, 2, 25, "param 'train.epoch' not found", "did you mean 'train.epochs'")


def test_missing_key_inside_a_word_is_located_at_the_reference(root: Path) -> None:
    write(root, "params.toml", "a = 1\n")
    diag = only_error("stage s:\n    outs: out/${params.b}.txt\n    run: echo\n", root)
    assert_at(diag, 2, 15, "param 'b' not found in params.toml")


def test_missing_named_file(root: Path) -> None:
    diag = only_error("stage s:\n    params: other.toml:a\n    run: echo\n", root)
    assert_at(diag, 2, 13, "params file 'other.toml' does not exist")


def test_missing_named_file_in_reference(root: Path) -> None:
    diag = only_error("stage s:\n    run: echo ${params.other.json:a}\n", root)
    assert_at(diag, 2, 15, "params file 'other.json' does not exist")


def test_no_params_file_at_all(root: Path) -> None:
    diag = only_error("stage s:\n    params: a.b\n    run: echo\n", root)
    assert_at(diag, 2, 13, "no params file", "params.toml", "'a.b'")


def test_table_valued_reference_is_an_error(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\n")
    diag = only_error("stage s:\n    run: echo ${params.train}\n", root)
    assert_at(diag, 2, 15, "param 'train'", "is a table; name a key inside it")


def test_table_valued_reference_in_outs_is_an_error(root: Path) -> None:
    write(root, "params.toml", "dirs = {a = 1}\n")
    diag = only_error("stage s:\n    outs: ${params.dirs}\n    run: echo\n", root)
    assert_at(diag, 2, 11, "is a table")


def test_malformed_param_keys(root: Path) -> None:
    write(root, "params.toml", "a = 1\n")
    diags = diagnostics("stage s:\n    params: a..b\n    run: echo ${params.}\n", root)
    assert len(diags) == 2
    assert_at(diags[0], 2, 13, "'a..b' is not a param key")
    assert_at(diags[1], 3, 15, "is not a param key")


def test_several_param_errors_are_reported_together(root: Path) -> None:
    write(root, "params.toml", "[train]\nepochs = 10\n")
    diags = diagnostics(
        """
        stage s:
            params: tran.epochs missing.toml:x nokey
            run: echo ${params.nope}
        """,
        root,
    )
    assert [(d.loc.line, d.loc.col) for d in diags] == [(2, 13), (2, 25), (2, 40), (3, 15)]
    assert "did you mean 'train.epochs'" in diags[0].message
    assert "'missing.toml' does not exist" in diags[1].message
    assert "param 'nokey' not found" in diags[2].message
    assert "param 'nope' not found" in diags[3].message


def test_invalid_toml_is_located_in_the_params_file(root: Path) -> None:
    write(root, "params.toml", "a = 1\nb = = 2\n")
    diag = only_error("stage s:\n    params: a\n    run: echo\n", root)
    assert_at(diag, 2, 5, "invalid TOML", "Invalid value", path="params.toml")
    assert "(at line" not in diag.message  # the location is in the diagnostic, not repeated
    assert diag.source_line == "b = = 2"
    assert diag.render().startswith("params.toml:2:5: error: invalid TOML")


def test_invalid_toml_found_through_a_reference(root: Path) -> None:
    write(root, "params.toml", "[a]\nx = 1\n[a]\n")
    diag = only_error("stage s:\n    run: echo ${params.a.x}\n", root)
    assert_at(diag, 3, 3, "invalid TOML", "twice", path="params.toml")


def test_invalid_json_is_located_in_the_params_file(root: Path) -> None:
    write(root, "params.json", '{"a": 1,\n "b": }')
    diag = only_error("stage s:\n    params: a\n    run: echo\n", root)
    assert_at(diag, 2, 7, "invalid JSON", "Expecting value", path="params.json")
    assert diag.source_line == ' "b": }'


def test_params_file_must_hold_a_table(root: Path) -> None:
    write(root, "params.json", "[1, 2]")
    diag = only_error("stage s:\n    params: a\n    run: echo\n", root)
    assert_at(diag, 1, 1, "must hold a table", path="params.json")


def test_params_file_that_is_a_directory(root: Path) -> None:
    (root / "x.toml").mkdir()
    diag = only_error("stage s:\n    params: x.toml:a\n    run: echo\n", root)
    assert_at(diag, 1, 1, "cannot read", path="x.toml")


def test_params_file_in_a_subdirectory_is_shown_with_its_directory(root: Path) -> None:
    write(root, "sub/params.toml", "a = = 1\n")
    diag = only_error("stage s:\n    params: a\n    run: echo\n", root, subdir="sub")
    # compile_text names the Pivotfile "Pivotfile", so params files are shown beside it.
    assert_at(diag, 1, 5, "invalid TOML", path="params.toml")


def test_broken_params_file_is_reported_once(root: Path) -> None:
    # Every reference meets the same broken file; the diagnostic is given once.
    write(root, "params.toml", "a = 1\nb = = 2\n")
    diags = diagnostics(
        """
        stage s:
            params: a
            run: echo ${params.a}
        stage t:
            params: b
            run: echo
        """,
        root,
    )
    assert len(diags) == 1, "\n".join(d.render() for d in diags)
    assert_at(diags[0], 2, 5, "invalid TOML", path="params.toml")


def test_deeply_nested_json_is_a_located_error(root: Path) -> None:
    # BUG: json.loads raises RecursionError, which escapes the compiler.
    write(root, "params.json", "[" * 100_000 + "]" * 100_000)
    diag = only_error("stage s:\n    params: a\n    run: echo\n", root)
    assert diag.loc.path == "params.json"


def test_yaml_params(root: Path) -> None:
    write(root, "p.yaml", "a:\n  b: 3\n")
    text = "stage s:\n    params: p.yaml:a.b\n    run: echo\n"
    if HAVE_YAML:
        p = compile_text(text, root)
        assert the_stage(p).params == (Param("p.yaml", "a.b", "3"),)
    else:
        diag = only_error(text, root)
        assert_at(diag, 1, 1, "needs PyYAML", "pip install pyyaml", path="p.yaml")


def test_yaml_is_not_a_default_params_file(root: Path) -> None:
    write(root, "params.yaml", "a: 1\n")
    diag = only_error("stage s:\n    params: a\n    run: echo\n", root)
    assert_at(diag, 2, 13, "no params file")
