"""Recipes: strict TOML schema, tiny in-process sources, summary, JUnit, one failure not stopping the rest."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from smt_convert.converters.recipe import load_recipe, prepare_recipes
from smt_convert.main import OUTTYPE_CHOICES, ONNX_DTYPE_CHOICES, cli
from smt_convert.runtime.errors import SmtError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    from smt_convert.converters.plugin import all_plugins

    recipe = load_recipe(path)
    assert recipe.variants and recipe.architecture in {p.name for p in all_plugins()}


@pytest.mark.parametrize("text,mentions", [
    ('architecture = "qwen3-asr"\nsorce = {tiny = "qwen3-asr"}\n[[variants]]\n', ["sorce", "unknown key"]),
    ('architecture = "qwen3-asr"\n[[variants]]\noutype = "q8_0"\n[source]\ntiny = "qwen3-asr"\n',
     ["variants[0].outype", "unknown key"]),
    ('architecture = "qwen3-asr"\n[[variants]]\nouttype = 8\n[source]\ntiny = "qwen3-asr"\n',
     ["variants[0].outtype", "expected str"]),
    ('architecture = "qwen3-asr"\n[[variants]]\nouttype = "q3_k"\n[source]\ntiny = "qwen3-asr"\n',
     ["variants[0].outtype", "q4_0"]),
    ('architecture = "qwen3-asr"\n[[variants]]\n', ["source", "required"]),
    ('architecture = "qwen9"\n[source]\ntiny = "x"\n[[variants]]\n', ["architecture", "qwen3-asr"]),
    ('architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n[verify]\nmax_new_tokens = "8"\n',
     ["verify.max_new_tokens", "expected int"]),
    ('architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n[thresholds]\ntext_nmse = "low"\n',
     ["thresholds.text_nmse", "expected float"]),
    ('architecture = "qwen3-asr"\n[source]\npath = "x"\ntiny = "y"\n[[variants]]\n', ["source", "exactly one"]),
    ('architecture = "qwen3-asr"\n[source\n', ["invalid TOML"]),
    # issue 21: names are names, not paths; duplicates and out-of-range values found when the recipe loads
    ('name = "../../escape"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n',
     ["name", "plain name"]),
    ('name = "/tmp/abs"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n',
     ["name", "plain name"]),
    ('name = ".."\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n', ["name"]),
    ('stem = "../x"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n', ["stem"]),
    ('architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\nouttype = "q8_0"\n'
     '[[variants]]\nouttype = "q8_0"\n', ["variants[1]", "same variant as variants[0]"]),
    ('architecture = "qwen3.5"\n[source]\ntiny = "qwen3.5"\n[[variants]]\nimage_size = -64\n',
     ["variants[0].image_size", "expected 1..4096"]),
    ('architecture = "qwen3.5"\n[source]\ntiny = "qwen3.5"\n[[variants]]\nimage_size = 0\n',
     ["variants[0].image_size"]),
    ('architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n[verify]\nmax_new_tokens = 100000\n',
     ["verify.max_new_tokens", "1..4096"]),
    ('architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n[thresholds]\ntext_nmse = nan\n',
     ["thresholds.text_nmse", "finite"]),
    ('architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n[thresholds]\ntext_top1 = 2.0\n',
     ["thresholds.text_top1", "0..1"]),
])
def test_bad_recipes_name_file_and_key(tmp_path, text, mentions):
    path = write(tmp_path, text)
    with pytest.raises(SmtError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for m in mentions:
        assert m in message, (m, message)


def test_cli_choices_match_the_converters():
    from smt_convert.converters.onnx_write import ONNX_DTYPES
    from smt_convert.converters.text_gguf import ALL_OUTTYPES as OUTTYPES

    assert list(OUTTYPE_CHOICES) == list(OUTTYPES) and list(ONNX_DTYPE_CHOICES) == list(ONNX_DTYPES)


def test_recipe_run_summary_junit_and_failure_isolation(tmp_path, monkeypatch):
    """Three recipes: one passes, one cannot pass its (impossible) threshold, one has a missing source.
    All run, the table and JUnit report each, and the exit code is 1."""
    good = write(tmp_path, 'name = "good"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n'
                           '[[variants]]\nouttype = "q4_0"\nonnx_dtype = "int8"\n', "good.toml")
    strict = write(tmp_path, 'name = "strict"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n'
                             '[[variants]]\nouttype = "q8_0"\n[thresholds]\ntext_nmse = 1e-30\n', "strict.toml")
    monkeypatch.delenv("SMT_TEST_MISSING_CACHE", raising=False)
    missing = write(tmp_path, 'name = "missing"\narchitecture = "qwen3-asr"\n[source]\nenv = "SMT_TEST_MISSING_CACHE"\n'
                              '[[variants]]\nouttype = "f16"\n', "missing.toml")
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    result = CliRunner().invoke(cli, ["-q", "recipe", str(good), str(strict), str(missing), "--out", str(out),
                                      "--junit", str(junit)])
    assert result.exit_code == 1, result.output + result.stderr
    table = result.output
    assert "good" in table and "PASS" in table and "FAIL" in table and "ERROR" in table
    assert "SMT_TEST_MISSING_CACHE is not set" in result.stderr
    assert (out / "good" / "q4_0-int8" / "manifest.json").is_file()
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    failure = suite.find("testcase[@classname='strict']/failure")
    assert failure is not None and "nmse" in failure.get("message")


def test_two_recipes_with_one_name_are_refused_before_anything_converts(tmp_path):
    text = 'name = "same"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n'
    paths = [write(tmp_path, text, "a.toml"), write(tmp_path, text, "b.toml")]
    result = CliRunner().invoke(cli, ["recipe", *map(str, paths), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "b.toml: name: 'same' is also the name of" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,make,mentions", [
    ("--junit", lambda p: p.mkdir(), "is a directory"),
    ("--summary", lambda p: p.mkdir(), "is a directory"),
    ("--scratch", lambda p: p.write_text("x"), "is a file"),
])
def test_unusable_report_paths_are_one_line(tmp_path, flag, make, mentions):
    path = write(tmp_path, 'architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n')
    target = tmp_path / "target"
    make(target)
    result = CliRunner().invoke(cli, ["recipe", str(path), "--out", str(tmp_path / "out"), flag, str(target)])
    assert result.exit_code == 2 and flag in result.stderr and mentions in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_image_size_the_model_refuses_names_the_variant(tmp_path):
    path = write(tmp_path, 'architecture = "qwen3.5"\n[source]\ntiny = "qwen3.5"\n[[variants]]\nimage_size = 100\n')
    with pytest.raises(SmtError) as err:
        prepare_recipes([load_recipe(path)], tmp_path / "scratch")
    assert f"{path}: variants[0].image_size:" in str(err.value) and "32" in str(err.value)


@pytest.mark.parametrize("extra,mentions", [
    ('[[variants]]\nouttype = "f16"\nimage_size = 112\n', "variants[1].image_size"),
    ('[verify]\nprompt = "OCR:"\n', "verify.prompt"),
    ('[verify]\ninput = "missing.wav"\n', "verify.input"),
])
def test_options_the_architecture_cannot_use(tmp_path, extra, mentions):
    path = write(tmp_path, 'architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n' + extra)
    with pytest.raises(SmtError) as err:
        prepare_recipes([load_recipe(path)], tmp_path / "scratch")
    assert mentions in str(err.value) and str(path) in str(err.value)


def test_an_out_that_cannot_be_created_is_one_line(tmp_path):
    path = write(tmp_path, 'architecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n[[variants]]\n')
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, ["recipe", str(path), "--out", str(blocker / "out")])
    assert result.exit_code == 2 and result.stderr.startswith("error: --out:") and "Traceback" not in result.stderr


def _cases(junit: Path) -> set[tuple[str, str, str]]:
    suite = ET.parse(junit).getroot()
    return {(c.get("classname"), c.get("name"), "fail" if c.find("failure") is not None else
             "error" if c.find("error") is not None else "pass") for c in suite.iter("testcase")}


def _rows(summary: Path) -> set[tuple[str, ...]]:
    """Summary table rows without the columns that differ between runs (time, bundle directory)."""
    rows = set()
    for line in summary.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and cells[0] != "recipe":
            rows.add(tuple(c for i, c in enumerate(cells) if i not in (3, 7)))
    return rows


def test_shards_merged_give_the_report_of_one_run(tmp_path):
    """issue 20: `--list`, `--shard I/N` and `recipe-report` fan a recipe set out over a CI matrix and back."""
    recipes = [write(tmp_path, 'name = "asr"\narchitecture = "qwen3-asr"\n[source]\ntiny = "qwen3-asr"\n'
                               '[[variants]]\n[[variants]]\nouttype = "q8_0"\n[[variants]]\nouttype = "q4_0"\n'
                               'onnx_dtype = "int8"\n[verify]\nmax_new_tokens = 2\n', "asr.toml"),
               write(tmp_path, 'name = "broken"\narchitecture = "qwen3-asr"\n[source]\npath = "missing"\n'
                               '[[variants]]\n', "broken.toml")]
    listed = CliRunner().invoke(cli, ["recipe", *map(str, recipes), "--list", "--json"])
    keys = [e["key"] for e in json.loads(listed.stdout)]
    assert keys == ["asr/f16-fp32", "asr/q4_0-int8", "asr/q8_0-fp32", "broken/f16-fp32"]
    one = CliRunner().invoke(cli, ["-q", "recipe", *map(str, recipes), "--out", str(tmp_path / "one"),
                                   "--junit", str(tmp_path / "one.xml"), "--summary", str(tmp_path / "one.md")])
    assert one.exit_code == 1  # the broken recipe's source is missing: one error, the others pass
    for i in (1, 2):
        shard = CliRunner().invoke(cli, ["-q", "recipe", *map(str, recipes), "--out", str(tmp_path / f"s{i}"),
                                         "--shard", f"{i}/2", "--scratch", str(tmp_path / "scratch")])
        assert shard.exit_code in (0, 1), shard.stderr
    merged = CliRunner().invoke(cli, ["recipe-report", str(tmp_path / "s1"), str(tmp_path / "s2"),
                                      "--junit", str(tmp_path / "merged.xml"), "--summary", str(tmp_path / "m.md")])
    assert merged.exit_code == 1
    assert _cases(tmp_path / "merged.xml") == _cases(tmp_path / "one.xml") and len(_cases(tmp_path / "one.xml")) == 4
    assert _rows(tmp_path / "m.md") == _rows(tmp_path / "one.md") and len(_rows(tmp_path / "one.md")) == 4
    only = CliRunner().invoke(cli, ["-q", "recipe", *map(str, recipes), "--out", str(tmp_path / "o"),
                                    "--only", "asr/q8_0-fp32"])
    assert only.exit_code == 0 and [p.name for p in (tmp_path / "o" / "asr").iterdir()] == ["q8_0-fp32"]
    bad = CliRunner().invoke(cli, ["recipe", *map(str, recipes), "--only", "asr/q9"])
    assert bad.exit_code == 2 and "--only" in bad.stderr
