"""Issue 21: every JSON document of a checkpoint and of a bundle, mutated the way careless or hostile input is (a
value's type swapped, a field dropped, a list where an object goes, deep nesting, a huge integer), gives one line
and exit 2 (or, for a bundle whose numbers only changed, a failed verification: exit 1), within seconds, with no
traceback and nothing left behind. Deterministic: the mutations are enumerated, not drawn at random."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_qwen3_asr

REPLACEMENTS = [None, 7, -1, "x", 1.5, [1, 2], {"a": 1}, True, []]
SECONDS = 30   # the slowest legitimate case here (a conversion refused at plan time) takes ~3 s


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    make_tiny_qwen3_asr(root / "hf")
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(root / "hf"), str(root / "bundle"), "--no-verify"])
    assert ok.exit_code == 0, ok.stderr
    return root


def paths_of(data, prefix=()):
    """Every (path to a value) in a JSON document, objects and lists alike, breadth-limited for big vocabularies."""
    if isinstance(data, dict):
        for key in list(data)[:40]:
            yield prefix + (key,)
            yield from paths_of(data[key], prefix + (key,))
    elif isinstance(data, list):
        for i in range(min(len(data), 3)):
            yield prefix + (i,)
            yield from paths_of(data[i], prefix + (i,))


def mutated(data, path, value):
    data = json.loads(json.dumps(data))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DROP = object()


def mutations(document: dict, limit: int):
    """Up to `limit` mutated copies: every path gets a dropped field and swapped types, cycled so that every path
    is hit before any gets a second mutation."""
    out = []
    paths = list(paths_of(document))
    for value in [DROP, *REPLACEMENTS]:
        for path in paths:
            if value is DROP and isinstance(path[-1], int):
                continue
            out.append((path, value))
    step = max(1, len(out) // limit)
    return out[::step][:limit]


def run(args) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        raise AssertionError("".join(traceback.format_exception(result.exception)))
    return result.exit_code, result.stderr, time.perf_counter() - t0


def assert_one_line(code, stderr, seconds, allowed=(0, 2)):
    assert code in allowed, (code, stderr)
    assert "Traceback" not in stderr
    if code == 2:
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, stderr
    assert seconds < SECONDS


@pytest.mark.slow
@pytest.mark.parametrize("name,limit", [("config.json", 120), ("tokenizer_config.json", 60),
                                        ("tokenizer.json", 80), ("generation_config.json", 30)])
def test_checkpoint_documents(pristine, tmp_path, name, limit):
    source = pristine / "hf"
    document = json.loads((source / name).read_text())
    for i, (path, value) in enumerate(mutations(document, limit)):
        ckpt = tmp_path / f"hf{i}"
        shutil.copytree(source, ckpt)
        (ckpt / name).write_text(json.dumps(mutated(document, path, value)))
        out = tmp_path / f"out{i}"
        # inspect reads and checks everything a conversion plans from; the conversion must refuse or finish
        assert_one_line(*run(["inspect", ckpt]))
        code, stderr, seconds = run(["-q", "qwen3-asr", ckpt, out, "--no-verify"])
        assert_one_line(code, stderr, seconds)
        if code != 0:
            assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or p.name.endswith(".lock")]
        shutil.rmtree(ckpt)
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("name,limit", [("manifest.json", 150), ("config.json", 40), ("golden/expected.json", 40)])
def test_bundle_documents(pristine, tmp_path, name, limit):
    source = pristine / "bundle"
    document = json.loads((source / name).read_text())
    for i, (path, value) in enumerate(mutations(document, limit)):
        bundle = tmp_path / f"b{i}"
        shutil.copytree(source, bundle)
        (bundle / name).write_text(json.dumps(mutated(document, path, value)))
        # verify: 0 (a change nothing reads), 1 (hashes or goldens differ: a failed verification), 2 (malformed)
        assert_one_line(*run(["verify", bundle]), allowed=(0, 1, 2))
        assert_one_line(*run(["inspect", bundle]))
        assert_one_line(*run(["-q", "run", bundle, "--audio", bundle / "golden" / "input.wav",
                              "--max-new-tokens", "2"]), allowed=(0, 2))
        shutil.rmtree(bundle)


@pytest.mark.parametrize("blow_up", ["deep", "digits", "huge_string_list"])
def test_blown_up_documents(pristine, tmp_path, blow_up):
    ckpt = tmp_path / "hf"
    shutil.copytree(pristine / "hf", ckpt)
    text = {"deep": "[" * 100_000 + "]" * 100_000, "digits": '{"a": ' + "9" * 5000 + "}",
            "huge_string_list": json.dumps({"architectures": ["x" * 100] * 200_000})}[blow_up]
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        (ckpt / name).write_text(text)
        assert_one_line(*run(["inspect", ckpt]))
        shutil.copy(pristine / "hf" / name, ckpt / name)
