"""The model card every bundle carries (README.md), the board command lines, `inspect BUNDLE` and the recipe
`--summary`: each checked against the files on disk (hashes recomputed here, GGUF tensor types read with gguf-py,
ONNX I/O read with onnxruntime), not only against the manifest the card was rendered from."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from collections import Counter

import pytest
import yaml
from click.testing import CliRunner

from smt_convert.converters.card import (CARD_FILE, card_facts, front_matter, render_card, shape,
                                         source_license)
from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_paddleocr_vl, make_tiny_qwen3_5, make_tiny_qwen3_asr
from tests.test_board_install import board

SOURCE_CARD = "---\nlicense: apache-2.0\npipeline_tag: automatic-speech-recognition\ntags:\n- audio\n---\n\n# tiny\n"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One bundle per family: Qwen3-ASR verified against transformers (its card has the full table; its
    checkpoint has a Hub-style card with a license), PaddleOCR-VL non-square and Qwen3.5 dense and text-only
    with --no-verify (their cards do not depend on the comparison)."""
    root = tmp_path_factory.mktemp("card")
    make_tiny_qwen3_asr(root / "asr-ckpt")
    (root / "asr-ckpt" / "README.md").write_text(SOURCE_CARD)
    make_tiny_paddleocr_vl(root / "ocr-ckpt")
    make_tiny_qwen3_5(root / "q35-ckpt")
    make_tiny_qwen3_5(root / "q35text-ckpt", text_only=True)
    runs = {"asr": ("qwen3-asr", "asr-ckpt", ["--outtype", "q8_0"]),
            "ocr": ("paddleocr-vl", "ocr-ckpt", ["--outtype", "q4_0", "--image-size", "84x56", "--no-verify"]),
            "q35": ("qwen3.5", "q35-ckpt", ["--outtype", "f16", "--onnx-dtype", "fp16", "--no-verify"]),
            "q35text": ("qwen3.5", "q35text-ckpt", ["--no-verify"])}
    out = {}
    for key, (arch, ckpt, options) in runs.items():
        result = invoke("-q", arch, root / ckpt, root / key, *options)
        assert result.exit_code == 0, result.output + result.stderr
        out[key] = (root / key, result.output)
    return out


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def card_of(bundle):
    text = (bundle / CARD_FILE).read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1)), text


def yaml_block(text):
    assert text.startswith("---\n") and text.endswith("\n---")
    return yaml.safe_load(text[4:-4])


def section(text, heading):
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def table(text):
    """The first Markdown table in `text`, as lists of cells (escaped pipes kept inside their cell)."""
    all_lines = text.splitlines()
    first = next(i for i, line in enumerate(all_lines) if line.startswith("|"))
    lines = all_lines[first:]
    lines = lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]
    split = lambda line: [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    return split(lines[0]), [split(line) for line in lines[2:]]


def bash_blocks(text):
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


ALL = ["asr", "ocr", "q35", "q35text"]


@pytest.mark.parametrize("key", ALL)
def test_front_matter_parses_as_yaml_and_states_the_source(bundles, key):
    bundle, _ = bundles[key]
    manifest = manifest_of(bundle)
    meta, _ = card_of(bundle)
    assert meta["base_model"] == f"{key}-ckpt"          # no Hub repo: the checkpoint directory's name
    assert meta["library_name"] == "llama.cpp"
    assert meta["pipeline_tag"] == {"asr": "automatic-speech-recognition", "ocr": "image-text-to-text",
                                    "q35": "image-text-to-text", "q35text": "text-generation"}[key]
    assert {"gguf", manifest["text"]["gguf_arch"], manifest["architecture"], "spacemit"} <= set(meta["tags"])
    assert ("onnx" in meta["tags"]) == (key != "q35text")
    if key == "asr":  # copied from the checkpoint's own card
        assert meta["license"] == "apache-2.0" and manifest["source"]["license"] == {"license": "apache-2.0"}
    else:
        assert "license" not in meta


@pytest.mark.parametrize("key", ALL)
def test_contents_table_matches_the_files_on_disk(bundles, key):
    bundle, _ = bundles[key]
    _, text = card_of(bundle)
    header, rows = table(section(text, "Contents"))
    assert header == ["file", "bytes", "sha256", "what"]
    shown = {r[0].strip("`"): r for r in rows}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(shown) == on_disk
    for name in on_disk - {CARD_FILE, "manifest.json"}:
        size, digest = shown[name][1], shown[name][2].strip("`")
        assert int(size.split()[0]) == (bundle / name).stat().st_size, name
        assert digest == sha256(bundle / name), name
    # the card cannot hold its own hash: the manifest does, like every other file's
    listed = {e["path"]: e for e in manifest_of(bundle)["files"]}
    assert listed[CARD_FILE]["sha256"] == sha256(bundle / CARD_FILE)
    assert set(listed) == on_disk - {"manifest.json"}


@pytest.mark.parametrize("key", ALL)
def test_gguf_tensor_types_are_the_files(bundles, key):
    import gguf

    bundle, _ = bundles[key]
    manifest = manifest_of(bundle)
    _, text = card_of(bundle)
    line = next(l for l in section(text, "Contents").splitlines() if l.startswith("Text GGUF"))
    match = re.search(r"`--outtype (\w+)`, (\d+) tensors: (.*?); vocabulary", line)
    reader = gguf.GGUFReader(bundle / manifest["text"]["file"])
    in_file = Counter(t.tensor_type.name for t in reader.tensors)
    stated = {t: int(n) for n, t in (part.split(" x ") for part in match.group(3).split(", "))}
    assert stated == dict(in_file) and int(match.group(2)) == len(reader.tensors)
    assert match.group(1) == manifest["options"]["outtype"]


@pytest.mark.parametrize("key", ["asr", "ocr", "q35"])
def test_encoder_io_is_what_onnxruntime_sees(bundles, key):
    import onnxruntime as ort

    bundle, _ = bundles[key]
    _, text = card_of(bundle)
    contents = section(text, "Contents")
    header, rows = table(contents[contents.index("Encoders (ONNX"):])
    assert header == ["file", "role", "dtype", "inputs", "outputs"]
    assert len(rows) == len(manifest_of(bundle)["encoders"])
    for file, _role, dtype, inputs, outputs in rows:
        session = ort.InferenceSession(str(bundle / file.strip("`")))
        assert dtype == manifest_of(bundle)["onnx_dtype"]
        for shown, actual in ((inputs, session.get_inputs()), (outputs, session.get_outputs())):
            assert actual[0].type == "tensor(float)"
            assert shown == ", ".join(f"`{a.name}` {shape(a.shape)} float32" for a in actual)


def test_verification_table_is_the_one_the_cli_printed(bundles):
    bundle, printed = bundles["asr"]
    _, text = card_of(bundle)
    header, rows = table(section(text, "Verification"))
    cli_lines = [line for line in printed.splitlines() if line.strip()]
    cli_rows = [re.split(r"\s{2,}", line.strip()) for line in cli_lines[2:]]
    assert header == re.split(r"\s{2,}", cli_lines[0].strip())
    assert rows == cli_rows and len(rows) >= 8
    assert {r[0] for r in rows} >= {"features", "encoder", "text logits", "end to end", "goldens"}
    assert all(r[4] in ("PASS", "info") for r in rows)


def test_cards_without_a_comparison_say_so(bundles):
    _, text = card_of(bundles["ocr"][0])
    limits = section(text, "Known limits")
    assert "`--no-verify`" in limits
    # 84x56 -> a 3x2 grid the board would guess as 2x3: the card says so
    assert "Non-square image grid 3x2" in limits and "(2x3)" in limits
    assert "q4_0: block quantisation is lossy" in limits
    _, q35 = card_of(bundles["q35"][0])
    assert "fp16" in section(q35, "Known limits") and "Non-square" not in q35


def _board_lines(bundle):
    _, text = card_of(bundle)
    lines = bash_blocks(section(text, "Run it"))[0]
    return {shlex.split(line)[0]: shlex.split(line) for line in lines}, lines


@pytest.mark.parametrize("key,media", [("asr", ("--audio", "golden/input.wav")),
                                       ("ocr", ("--image", "golden/input.png")),
                                       ("q35", ("--image", "golden/input.png"))])
def test_board_command_lines(bundles, key, media):
    bundle, _ = bundles[key]
    manifest = manifest_of(bundle)
    commands, lines = _board_lines(bundle)
    assert lines == list(manifest["board"]["commands"].values())
    cli_args, server = commands["llama-mtmd-cli"], commands["llama-server"]
    for argv in (cli_args, server):
        assert argv[argv.index("-m") + 1] == manifest["text"]["file"] and (bundle / manifest["text"]["file"]).is_file()
        assert argv[argv.index("--smt-config-dir") + 1] == "." and (bundle / "config.json").is_file()
        # --jinja exactly when llama.cpp would not recognise the GGUF's own chat template: its built-in
        # detection (llm_chat_detect_template) maps a template holding <|im_start|> to chatml, and the
        # PaddleOCR-VL ERNIE template matches none of its patterns
        assert ("--jinja" in argv) == (key == "ocr")
    flag = cli_args.index(media[0])
    assert cli_args[flag + 1] == media[1] and (bundle / media[1]).is_file()
    assert "-p" in cli_args  # one answer, not chat mode
    assert media[0] not in server


def test_jinja_flag_follows_the_gguf_chat_template(bundles):
    """An independent reading of the flag: llama.cpp's non-Jinja path knows ChatML (by its <|im_start|> marker);
    the flag is there exactly for the GGUF whose embedded template lacks it."""
    import gguf

    for key in ALL:
        bundle, _ = bundles[key]
        reader = gguf.GGUFReader(bundle / manifest_of(bundle)["text"]["file"])
        field = reader.fields["tokenizer.chat_template"]
        template = bytes(field.parts[field.data[0]]).decode()
        assert ("--jinja" in manifest_of(bundle)["board"]["flags"]) == ("<|im_start|>" not in template), key


def test_text_only_board_lines_have_no_smt_side(bundles):
    bundle, _ = bundles["q35text"]
    commands, _ = _board_lines(bundle)
    assert set(commands) == {"llama-cli", "llama-server"}
    assert all("--smt-config-dir" not in argv for argv in commands.values())
    assert "vision_model" not in json.loads((bundle / "config.json").read_text())


@pytest.mark.parametrize("key", ALL)
def test_smt_convert_lines_from_the_card_run(bundles, key, monkeypatch):
    """The card's `smt-convert run` and `verify` lines, run from inside the bundle as printed."""
    bundle, _ = bundles[key]
    _, text = card_of(bundle)
    run_line, verify_line = bash_blocks(section(text, "Run it"))[1]
    monkeypatch.chdir(bundle)
    for line in (run_line, verify_line):
        argv = shlex.split(line)
        assert argv[0] == "smt-convert"
        result = CliRunner().invoke(cli, ["-q", *argv[1:]])
        assert result.exit_code == 0, (line, result.output, result.stderr)
    expected = json.loads((bundle / "golden" / "expected.json").read_text())
    if key == "ocr":
        assert "--prompt OCR:" in run_line and expected["fields"] == {"prompt": "OCR:"}


@pytest.mark.parametrize("key", ALL)
def test_card_is_the_manifest_rendered(bundles, key):
    """The card was rendered from the manifest as saved (hashes, verification rows, timings included), not from
    an earlier state of it: rendering the saved manifest again gives it byte for byte. (This checks that the card
    and the manifest agree; what the card says is checked against the files in the tests above.)"""
    bundle, _ = bundles[key]
    assert render_card(manifest_of(bundle)) == (bundle / CARD_FILE).read_text(encoding="utf-8")


def test_verify_checks_the_card_like_every_other_file(bundles, tmp_path):
    source, _ = bundles["ocr"]
    edited = tmp_path / "edited"
    shutil.copytree(source, edited)
    with open(edited / CARD_FILE, "a", encoding="utf-8") as f:
        f.write("\nEdited by hand.\n")
    result = invoke("verify", edited)
    assert result.exit_code == 1 and "README.md: size" in result.output

    unlisted = tmp_path / "unlisted"
    shutil.copytree(source, unlisted)
    manifest = manifest_of(unlisted)
    manifest["files"] = [e for e in manifest["files"] if e["path"] != CARD_FILE]
    (unlisted / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", unlisted)
    assert result.exit_code == 1 and "README.md: needed by the bundle but not listed" in result.output

    same_size = tmp_path / "same-size"
    shutil.copytree(source, same_size)
    text = (same_size / CARD_FILE).read_text(encoding="utf-8")
    (same_size / CARD_FILE).write_text(text.replace("PASS", "FAIL").replace("passed", "FAILED"), encoding="utf-8")
    result = invoke("verify", same_size)
    assert result.exit_code == 1 and "README.md: sha256 differs" in result.output
    assert invoke("verify", source).exit_code == 0


def test_inspect_bundle_prints_the_cards_facts(bundles):
    bundle, _ = bundles["asr"]
    manifest = manifest_of(bundle)
    result = invoke("inspect", bundle, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    facts = json.loads(result.output)
    assert [(f["path"], f["size"], f["sha256"]) for f in facts["files"]] == \
           [(p.relative_to(bundle).as_posix(), p.stat().st_size, sha256(p)) for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.name not in (CARD_FILE, "manifest.json")]
    assert facts["card"]["sha256"] == sha256(bundle / CARD_FILE)
    assert facts["board"]["commands"] == manifest["board"]["commands"]
    assert facts["front_matter"] == card_of(bundle)[0]
    assert sum(facts["gguf"]["tensor_types"].values()) == len(manifest["text"]["tensors"])
    text = invoke("inspect", bundle)
    assert text.exit_code == 0
    for f in manifest["files"]:
        assert f["sha256"] in text.output
    for line in manifest["board"]["commands"].values():
        assert line in text.output


def test_inspect_bundle_with_a_damaged_manifest(bundles, tmp_path):
    bundle = tmp_path / "damaged"
    shutil.copytree(bundles["ocr"][0], bundle)
    manifest = manifest_of(bundle)
    del manifest["tool"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("inspect", bundle)
    assert result.exit_code == 2 and "Traceback" not in result.output + result.stderr
    assert result.stderr.strip() == f"error: {bundle / 'manifest.json'}: tool: required field is missing"


def test_inspect_bundle_on_a_board_install(bundles):
    """No torch, transformers or onnx: the facts come from the manifest only."""
    bundle, _ = bundles["ocr"]
    out = board("inspect", str(bundle))
    assert out.returncode == 0, out.stderr
    assert manifest_of(bundle)["board"]["commands"]["llama-server"] in out.stdout
    assert "Non-square image grid" in out.stdout


def test_hub_source_and_license_keys():
    """A Hub checkpoint: base_model is the repo id, the commit goes beside it and into the conversion command."""
    manifest = {"source": {"directory": "/cache/snap", "repo": "Org/Model-1B", "revision": "a" * 40,
                           "license": {"license": "other", "license_name": "x-license", "license_link": "LICENSE"}},
                "tool": {"name": "smt-convert", "version": "0"}, "architecture": "qwen3-asr", "modality": "audio",
                "text": {"file": "t.gguf", "gguf_arch": "qwen3vl", "outtype": "f16", "tensors": []},
                "encoders": [], "onnx_dtype": "fp32", "golden": {"directory": "golden", "input": "input.wav"},
                "prompt": {"template_fields": {"context": ""}},
                "options": {"outtype": "f16", "onnx_dtype": "fp32", "verify": True, "max_new_tokens": 16}}
    facts = card_facts(manifest)
    meta = yaml_block(front_matter(facts["front_matter"]))
    assert meta["base_model"] == "Org/Model-1B" and meta["base_model_revision"] == "a" * 40
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "x-license", "LICENSE")
    assert shlex.split(facts["convert_command"])[:6] == ["smt-convert", "qwen3-asr", "Org/Model-1B", "OUTPUT",
                                                         "--revision", "a" * 40]


@pytest.mark.parametrize("value", ['plain', 'a: "quoted" #not a comment', "multi\nline\ttab", "ünïcödé ✓",
                                   "- dash", "{brace}", "back\\slash", "line\u2028separator", "yes", "123"])
def test_front_matter_values_survive_yaml(value):
    assert yaml_block(front_matter({"k": value, "tags": [value]})) == {"k": value, "tags": [value]}


def test_source_license(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert source_license(tmp_path) == {}
    (tmp_path / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert source_license(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\nlanguage:\n- en\nlicense: 'apache-2.0'  # comment\n---\nlicense: x\n")
    assert source_license(tmp_path) == {"license": "apache-2.0"}
    (tmp_path / "README.md").write_text("---\nlicense:\n- mit\n- apache-2.0\n---\n")  # as general.license has it
    assert source_license(tmp_path) == {"license": "mit, apache-2.0"}
    (tmp_path / "config.json").write_text('{"license": "mit"}')
    assert source_license(tmp_path) == {"license": "mit"}


def test_recipe_summary(bundles, tmp_path):
    """Markdown summary beside the JUnit XML: counts, one row per variant with status, sizes, headline numbers
    and time, the bundle directory, and the whole message of each variant that did not pass."""
    ckpt = bundles["ocr"][0].parent / "ocr-ckpt"
    good = tmp_path / "good.toml"
    good.write_text(f'name = "good"\narchitecture = "paddleocr-vl"\n[source]\npath = "{ckpt}"\n'
                    '[[variants]]\nouttype = "q8_0"\nimage_size = 56\n[verify]\nenabled = false\n')
    strict = tmp_path / "strict.toml"
    strict.write_text(f'name = "strict"\narchitecture = "paddleocr-vl"\n[source]\npath = "{ckpt}"\n'
                      '[[variants]]\nouttype = "q4_0"\nimage_size = 56\n[verify]\nmax_new_tokens = 4\n'
                      '[thresholds]\ntext_nmse = 1e-30\n')
    missing = tmp_path / "missing.toml"
    missing.write_text(f'name = "missing"\narchitecture = "paddleocr-vl"\n[source]\npath = "{tmp_path / "nowhere"}"\n'
                       '[[variants]]\n')
    summary, junit = tmp_path / "ci" / "summary.md", tmp_path / "junit.xml"
    result = invoke("-q", "recipe", good, strict, missing, "--out", tmp_path / "out", "--summary", summary,
                    "--junit", junit)
    assert result.exit_code == 1 and junit.is_file()
    text = summary.read_text()
    assert "3 variants: 1 passed, 1 failed verification, 1 could not be converted" in text
    header, rows = table(text)
    assert header == ["recipe", "variant", "status", "time", "gguf", "encoders", "verification", "bundle"]
    by_name = {r[0]: r for r in rows}
    assert [by_name[n][2] for n in ("good", "strict", "missing")] == ["PASS", "FAIL", "ERROR"]
    gguf_file = next((tmp_path / "out" / "good" / "q8_0-fp32-56").glob("*.gguf"))
    assert by_name["good"][4] == f"{gguf_file.stat().st_size / 2**20:.1f}M"
    assert by_name["good"][7].strip("`") == str(tmp_path / "out" / "good" / "q8_0-fp32-56")
    assert by_name["strict"][6].startswith("nmse ") and re.fullmatch(r"\d+\.\ds", by_name["strict"][3])
    not_passed = text[text.index("### Not passed"):]
    assert "strict q4_0-fp32-56 (fail): text logits nmse" in not_passed
    assert "missing f16-fp32 (error):" in not_passed and "not found" in not_passed
