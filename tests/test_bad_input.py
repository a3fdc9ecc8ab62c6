"""Bad input: one-line error naming the file and field, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from smt_convert.main import cli
from smt_convert.testing.checkpoints import make_tiny_qwen3_asr


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    make_tiny_qwen3_asr(root / "single")
    make_tiny_qwen3_asr(root / "sharded", layout="original", shards=3)
    return root


@pytest.fixture
def ckpt(pristine, tmp_path):
    shutil.copytree(pristine / "single", tmp_path / "hf")
    return tmp_path / "hf"


@pytest.fixture
def sharded(pristine, tmp_path):
    shutil.copytree(pristine / "sharded", tmp_path / "hf")
    return tmp_path / "hf"


def fails(*args, code=2, mentions=()):
    """Run the CLI, expect a one-line error with the given exit code that mentions every string given."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    error = [ln for ln in lines if ln.startswith("error: ")]
    assert len(error) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in mentions:
        assert str(text) in error[0], (text, error[0])
    return error[0]


def no_partial_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def edit_config(path: Path, change) -> None:
    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_config(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=[ckpt / "config.json", "not found"])
    no_partial_output(tmp_path / "out")


def test_unreadable_config(ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"architectures": ["Qwen3ASRForConditionalGeneration"],')
    fails("inspect", ckpt, mentions=["config.json", "invalid JSON"])


def test_unknown_architecture(ckpt, tmp_path):
    edit_config(ckpt, lambda c: c.update(architectures=["FooForCausalLM"], model_type="foo"))
    fails("convert", ckpt, tmp_path / "out", mentions=["config.json", "architectures", "FooForCausalLM"])
    fails("inspect", ckpt, mentions=["FooForCausalLM", "Qwen3ASRForConditionalGeneration"])
    no_partial_output(tmp_path / "out")


def test_unknown_cli_architecture(ckpt, tmp_path):
    result = CliRunner().invoke(cli, ["qwen9", str(ckpt), str(tmp_path / "out")])
    assert result.exit_code == 2 and "No such command" in result.stderr


def test_missing_required_field(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].pop("num_hidden_layers"))
    fails("inspect", ckpt, mentions=["config.json", "text_config.num_hidden_layers", "missing"])


def test_projector_width_must_equal_text_width(ckpt):
    edit_config(ckpt, lambda c: c["audio_config"].update(output_dim=32))
    fails("inspect", ckpt, mentions=["audio_config.output_dim", "64"])


def test_vocab_size_against_embedding_rows(ckpt):
    edit_config(ckpt, lambda c: c["text_config"].update(vocab_size=600))
    fails("inspect", ckpt, mentions=["text_config.vocab_size", "600", "512 rows"])


def test_truncated_safetensors(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=["model.safetensors", "not a readable safetensors"])
    no_partial_output(tmp_path / "out")


def test_wrong_tensor_shape(ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    name = "model.language_model.layers.1.mlp.up_proj.weight"
    tensors[name] = torch.zeros(100, 64)
    save_file(tensors, str(f))
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=[name, "[100, 64]", "[128, 64]"])
    no_partial_output(tmp_path / "out")


def test_unexpected_tensor_is_not_silently_dropped(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    tensors["model.language_model.extra_adapter.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(f))
    fails("inspect", ckpt, mentions=["extra_adapter", "not used"])


def test_missing_tensor(ckpt):
    f = ckpt / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.audio_tower.ln_post.weight"]
    save_file(tensors, str(f))
    fails("inspect", ckpt, mentions=["model.audio_tower.ln_post.weight", "missing"])


def test_missing_shard(sharded, tmp_path):
    (sharded / "model-00002-of-00003.safetensors").unlink()
    fails("qwen3-asr", sharded, tmp_path / "out", mentions=["model.safetensors.index.json", "model-00002-of-00003"])
    no_partial_output(tmp_path / "out")


def test_missing_tokenizer_and_override(ckpt, pristine, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    error = fails("qwen3-asr", ckpt, tmp_path / "out", mentions=["tokenizer.json", "merges.txt", "--tokenizer"])
    assert str(ckpt) in error
    no_partial_output(tmp_path / "out")
    ok = CliRunner().invoke(cli, ["inspect", str(ckpt), "--tokenizer", str(pristine / "single")])
    assert ok.exit_code == 0, ok.stderr
    assert "tokenizer.json from " + str(pristine / "single") in ok.output


def test_output_holding_other_files_is_never_replaced(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for force in ([], ["--force"]):
        fails("qwen3-asr", ckpt, out, *force, mentions=[out, "not an smt-convert bundle", "keep.txt"])
        assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(ckpt), str(out), "--no-verify", "--outtype", "q8_0"])
    assert ok.exit_code == 0, ok.stderr
    fails("qwen3-asr", ckpt, out, "--no-verify", mentions=[out, "already holds a bundle", "--force"])
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(ckpt), str(out), "--force", "--no-verify"])
    assert ok.exit_code == 0, ok.stderr
    assert (out / "manifest.json").is_file() and "f16" in json.loads((out / "manifest.json").read_text())["text"]["file"]
    assert not list(tmp_path.glob(".out.*"))
    # bad audio for `run` on that (real) bundle
    fails("run", out, "--audio", tmp_path / "missing.wav", mentions=["missing.wav", "not found"])
    fails("run", out, "--audio", ckpt / "config.json", mentions=["config.json", "cannot decode"])
    fails("run", out, mentions=["--audio"])


def test_unwritable_output(ckpt, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fails("qwen3-asr", ckpt, blocker / "out", mentions=["cannot create the output"])


def test_failure_midway_leaves_nothing(ckpt, tmp_path, monkeypatch):
    """An error after the GGUF is written (here: writing an encoder) removes the temporary directory."""
    import smt_convert.converters.convert as convert
    from smt_convert.runtime.errors import SmtError

    def broken(graph, path, dtype, **kwargs):
        raise SmtError(f"{path}: simulated write failure")

    monkeypatch.setattr(convert, "write_encoder", broken)
    out = tmp_path / "out"
    fails("qwen3-asr", ckpt, out, mentions=["simulated write failure"])
    no_partial_output(out)


def test_bad_audio_for_run(tmp_path):
    bundle = tmp_path / "not-a-bundle"
    bundle.mkdir()
    fails("run", bundle, "--audio", tmp_path / "x.wav", mentions=["manifest.json"])
    fails("verify", tmp_path / "missing", mentions=["bundle directory not found"])


def test_no_traceback_from_the_real_entry_point(ckpt, tmp_path):
    (ckpt / "config.json").write_text("not json")
    proc = subprocess.run([sys.executable, "-m", "smt_convert", "inspect", str(ckpt)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_output_must_not_replace_the_checkpoint(ckpt):
    fails("qwen3-asr", ckpt, ckpt, "--force", mentions=["would replace the checkpoint"])
    fails("qwen3-asr", ckpt, ckpt.parent, "--force", mentions=["would replace the checkpoint"])
    assert (ckpt / "model.safetensors").is_file()


def test_tie_flag_must_be_a_boolean(ckpt):
    """(Levels that disagree are not an error: the weights settle them, see test_saved_checkpoints.py.)"""
    edit_config(ckpt, lambda c: c["text_config"].update(tie_word_embeddings="no"))
    fails("inspect", ckpt, mentions=["text_config.tie_word_embeddings", "true/false"])


@pytest.mark.parametrize("card", [b"---\nlicense: [unclosed\n---\n", b"---\nlicense: mit\n---\n\xff\xfe broken"])
def test_a_model_card_that_cannot_be_read(ckpt, tmp_path, card):
    """The checkpoint's README.md feeds general.* (as llama.cpp's converter reads it): bad YAML or bytes that
    are not UTF-8 are one line naming the file, and nothing is left behind."""
    (ckpt / "README.md").write_bytes(card)
    fails("qwen3-asr", ckpt, tmp_path / "out", "--no-verify", mentions=["README.md"])
    no_partial_output(tmp_path / "out")


def test_chunk_size_must_match_the_board(ckpt):
    edit_config(ckpt, lambda c: c["audio_config"].update(n_window=25, n_window_infer=400))
    fails("inspect", ckpt, mentions=["audio_config.n_window", "100-frame"])


def test_original_layout_field_paths(sharded):
    edit_config(sharded, lambda c: c["thinker_config"]["text_config"].update(rope_theta="abc"))
    fails("inspect", sharded, mentions=["thinker_config.text_config.rope_theta", "expected a number"])


def test_bad_stem(ckpt, tmp_path):
    fails("qwen3-asr", ckpt, tmp_path / "out", "--stem", "../escape", mentions=["--stem"])
    no_partial_output(tmp_path / "out")


# ---- issue 11: signals, damaged bundles, non-finite weights, missing special tokens ------------------------


@pytest.fixture(scope="module")
def bundle(pristine, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(pristine / "single"), str(out), "--no-verify"])
    assert ok.exit_code == 0, ok.stderr
    return out


@pytest.fixture
def damaged(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy, symlinks=True)
    return copy


def edit_manifest(root: Path, change) -> None:
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def conversion_under_way(pristine: Path, out: Path) -> subprocess.Popen:
    """A conversion in a subprocess, returned once it writes into its temporary directory."""
    proc = subprocess.Popen([sys.executable, "-m", "smt_convert", "qwen3-asr", str(pristine / "single"), str(out)],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "writing" in line:
            break
    return proc


def test_partial_output_of_a_killed_run_is_swept(pristine, tmp_path):
    out = tmp_path / "out"
    proc = conversion_under_way(pristine, out)
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob(".out.partial-*")), "SIGKILL cannot clean up: the next run must"
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(pristine / "single"), str(out), "--no-verify"])
    assert ok.exit_code == 0, ok.stderr
    assert not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize("change,field", [
    (lambda m: m["files"][0].pop("size"), "files[0].size: required field is missing"),
    (lambda m: m.update(files="x"), "files: expected a list"),
    (lambda m: m.update(files=[]), "files: empty"),
    (lambda m: m["files"][0].update(sha256="abc"), "files[0].sha256"),
    (lambda m: m["encoders"][0].pop("file"), "encoders[0].file: required field is missing"),
    (lambda m: m.pop("golden"), "golden: required field is missing"),
    (lambda m: m["prompt"].update(template="{x.__class__}"), "prompt.template"),
    (lambda m: m["preprocessing"].update(hop_length=0), "preprocessing.hop_length"),
])
def test_malformed_manifest_is_one_line_exit_2(damaged, change, field):
    edit_manifest(damaged, change)
    fails("verify", damaged, mentions=["manifest.json", field])
    fails("run", damaged, "--audio", damaged / "golden" / "input.wav", mentions=["manifest.json", field])


def test_verify_refuses_paths_leaving_the_bundle(damaged, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    edit_manifest(damaged, lambda m: m["files"].extend([
        {"path": "../secret.txt", "size": 9, "sha256": "0" * 64},
        {"path": str(outside), "size": 9, "sha256": "0" * 64}]))
    result = CliRunner().invoke(cli, ["verify", str(damaged)])
    assert result.exit_code == 1
    assert "../secret.txt: path leaves the bundle" in result.output
    assert f"{outside}: path leaves the bundle" in result.output


def test_verify_refuses_a_symlink_out_of_the_bundle(damaged, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text((damaged / "tokenizer_config.json").read_text())
    (damaged / "tokenizer_config.json").unlink()
    (damaged / "tokenizer_config.json").symlink_to(outside)
    result = CliRunner().invoke(cli, ["verify", str(damaged)])
    assert result.exit_code == 1
    assert "tokenizer_config.json: resolves outside the bundle" in result.output


def test_verify_requires_every_needed_file_listed(damaged):
    manifest = json.loads((damaged / "manifest.json").read_text())
    onnx = manifest["encoders"][1]["file"]
    edit_manifest(damaged, lambda m: m.update(files=[f for f in m["files"] if f["path"] != onnx]))
    result = CliRunner().invoke(cli, ["verify", str(damaged)])
    assert result.exit_code == 1
    assert f"{onnx}: needed by the bundle but not listed" in result.output


def test_verify_checks_config_paths_and_reports_extra_files(damaged):
    config = json.loads((damaged / "config.json").read_text())
    config["audio_model"]["backend_model_path"] = "renamed.onnx"
    (damaged / "config.json").write_text(json.dumps(config))
    (damaged / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["verify", str(damaged)])
    assert result.exit_code == 1
    assert "renamed.onnx: needed by the bundle but not listed" in result.output
    assert "config.json: size" in result.output or "config.json: sha256 differs" in result.output
    assert "notes.txt" in result.output


def test_run_refuses_an_incompletely_copied_bundle_before_loading(damaged):
    gguf = json.loads((damaged / "manifest.json").read_text())["text"]["file"]
    with open(damaged / gguf, "r+b") as f:
        f.truncate(1000)
    fails("run", damaged, "--audio", damaged / "golden" / "input.wav", mentions=[gguf, "size 1000"])


def test_run_checks_its_media_before_loading(bundle, tmp_path):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    fails("run", bundle, "--audio", tmp_path / "nan.wav", mentions=["nan.wav", "non-finite"])


@pytest.mark.parametrize("name", ["model.audio_tower.layers.0.fc1.weight", "model.language_model.layers.0.mlp.up_proj.weight"])
def test_non_finite_weights_are_refused_with_file_and_tensor(ckpt, tmp_path, name):
    tensors = load_file(ckpt / "model.safetensors")
    tensors[name][0, 0] = float("nan")
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=["model.safetensors", name, "non-finite"])
    no_partial_output(tmp_path / "out")


def test_tokenizer_lacking_the_audio_tokens_is_refused_before_writing(ckpt, tmp_path):
    data = json.loads((ckpt / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|audio_start|>"]
    (ckpt / "tokenizer.json").write_text(json.dumps(data))
    fails("qwen3-asr", ckpt, tmp_path / "out", mentions=["tokenizer.json", "<|audio_start|>"])
    no_partial_output(tmp_path / "out")


def test_index_shard_paths_stay_inside_the_checkpoint(sharded, tmp_path):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    for outside in ("../../etc/passwd", "/etc/passwd"):
        data["weight_map"][name] = outside
        index.write_text(json.dumps(data))
        fails("inspect", sharded, mentions=["model.safetensors.index.json", "weight_map", outside, "not a file inside"])


def test_image_bomb_is_refused_before_decoding(bundle, tmp_path):
    from PIL import Image

    Image.new("L", (12000, 12000)).save(tmp_path / "huge.png")
    fails("run", bundle, "--audio", tmp_path / "huge.png", mentions=["huge.png"])  # wrong kind: still one line
    from smt_convert.runtime.image import load_image

    with pytest.raises(Exception) as err:
        load_image(tmp_path / "huge.png")
    assert "12000x12000" in str(err.value) and "megapixels" in str(err.value)


# ---- issue 21: signals, streams, config values, output ownership through the CLI ---------------------------

@pytest.mark.parametrize("signum,code,word", [(1, 129, "hangup"), (15, 143, "terminated")])
def test_sighup_and_sigterm_clean_up_alike(pristine, tmp_path, signum, code, word):
    out = tmp_path / "out"
    proc = conversion_under_way(pristine, out)
    proc.send_signal(signum)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, rest
    assert word in rest and "Traceback" not in rest
    no_partial_output(out)
    assert not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("args", [["list"], ["verify", "{bundle}"], ["inspect", "{bundle}", "--json"]])
def test_a_full_stdout_is_one_line(bundle, args):
    argv = [a.format(bundle=bundle) for a in args]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "smt_convert", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "cannot write to standard output" in proc.stderr


@pytest.mark.parametrize("field,value,mentions", [
    ("rms_norm_eps", float("nan"), ["text_config.rms_norm_eps", "finite"]),
    ("num_hidden_layers", 100_000_000, ["text_config.num_hidden_layers", "more than this tool accepts"]),
    ("vocab_size", 10**12, ["text_config.vocab_size"]),
])
def test_config_values_out_of_range_are_refused_at_plan_time(ckpt, tmp_path, field, value, mentions):
    cfg = json.loads((ckpt / "config.json").read_text())
    text = cfg.get("thinker_config", cfg)["text_config"]
    text[field] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))
    fails("qwen3-asr", ckpt, tmp_path / "out", "--no-verify", mentions=mentions)
    no_partial_output(tmp_path / "out")


def test_deep_and_huge_json_are_one_line(ckpt, tmp_path):
    (ckpt / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    fails("inspect", ckpt, mentions=["config.json", "nested too deeply"])
    (ckpt / "config.json").write_text('{"vocab_size": ' + "9" * 5000 + "}")
    fails("inspect", ckpt, mentions=["config.json", "digits"])


def test_force_keeps_user_files_inside_a_bundle(bundle, ckpt, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    (out / "my_recording.wav").write_bytes(b"RIFF")
    fails("qwen3-asr", ckpt, out, "--force", "--no-verify", mentions=[out, "my_recording.wav", "does not list"])
    assert (out / "my_recording.wav").read_bytes() == b"RIFF"
    (out / "my_recording.wav").unlink()
    ok = CliRunner().invoke(cli, ["-q", "qwen3-asr", str(ckpt), str(out), "--force", "--no-verify"])
    assert ok.exit_code == 0, ok.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]


def test_yaml_alias_bomb_in_the_checkpoint_card_is_refused_quickly(ckpt, tmp_path):
    lines = ["---", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)] + ["---", "card"]
    (ckpt / "README.md").write_text("\n".join(lines) + "\n")
    fails("qwen3-asr", ckpt, tmp_path / "out", "--no-verify", mentions=["README.md", "aliases"])
    no_partial_output(tmp_path / "out")


def test_a_fifo_named_safetensors_is_not_opened(ckpt, tmp_path):
    import os

    (ckpt / "model.safetensors").rename(tmp_path / "moved.safetensors")
    os.mkfifo(ckpt / "model.safetensors")
    fails("inspect", ckpt, mentions=["no weights found"])


@pytest.mark.parametrize("value", [[1, 2], 7])
def test_weight_map_values_must_be_file_names(sharded, value):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = value
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    fails("inspect", sharded, mentions=["weight_map.", "expected a string"])


def test_audio_at_one_hertz_is_refused_before_resampling(bundle, tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "slow.wav", np.zeros(400_000, dtype=np.float32), 1, subtype="FLOAT")
    fails("run", bundle, "--audio", tmp_path / "slow.wav", mentions=["slow.wav", "sample rate 1 Hz"])


@pytest.mark.parametrize("args,mentions", [
    (["--threads", "100000"], "--threads"),
    (["--max-new-tokens", "100000"], "--max-new-tokens"),
    (["--context", "x" * 120_000], "--context"),
])
def test_run_bounds(bundle, args, mentions):
    result = CliRunner().invoke(cli, ["run", str(bundle), "--audio", str(bundle / "golden" / "input.wav"), *args])
    assert result.exit_code == 2 and mentions in result.stderr and "Traceback" not in result.stderr


def test_verify_checks_config_json_against_the_manifest(damaged):
    config = json.loads((damaged / "config.json").read_text())
    config["audio_model"]["hop_len"] = 0
    (damaged / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["verify", str(damaged)])
    assert result.exit_code == 1 and "audio_model.hop_len is 0" in result.output


def test_a_pickled_golden_array_is_refused(damaged):
    import numpy as np

    np.save(damaged / "golden" / "encoder.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    edit_manifest(damaged, lambda m: None)
    from smt_convert.runtime.bundle import sha256_file

    def fix(m):
        for e in m["files"]:
            if e["path"] == "golden/encoder.npy":
                e["size"] = (damaged / e["path"]).stat().st_size
                e["sha256"] = sha256_file(damaged / e["path"])
    edit_manifest(damaged, fix)
    fails("verify", damaged, mentions=["encoder.npy", "not a plain numpy array"])
